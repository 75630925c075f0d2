//! The demo in a real browser: headless Chromium, driven over WebDriver
//! (`chromedriver`) with fantoccini, against the demo app served in-process.
//!
//! The test loads the page, runs the six-tabs experiment with a small N,
//! checks that the locked count is exact on the page and in the store, then
//! logs in through the form (the session cookie must change) and out (the
//! logged-in cookie must be gone, and the logout response clears it).
//!
//! Needs Debian's `chromium` and `chromium-driver` (or `CLOAKROOM_CHROMIUM`
//! and `CLOAKROOM_CHROMEDRIVER` naming the binaries). Without them it prints
//! `SKIPPED: …`, unless `CLOAKROOM_REQUIRE_BACKENDS=1`, where it fails.
//!
//! `CLOAKROOM_SCREENSHOT=/abs/path.png` saves a PNG of the page after the
//! experiment; the run then keeps the page's default N (6 tabs × 50), so the
//! picture shows what a visitor sees:
//!
//! ```sh
//! CLOAKROOM_SCREENSHOT=$PWD/crates/cloakroom-demo/docs/experiment.png \
//!   cargo test -p cloakroom-demo --test browser -- --nocapture
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom::{Manager, SessionId, SessionStore};
use cloakroom_conformance::support::{backends_required, TempDir};
use cloakroom_demo::{app, lossy_manager, manager, Sessions};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

/// The experiment's size in the test: small, to keep the run quick.
const TABS: u64 = 6;
const PER_TAB: u64 = 10;
/// How long the experiment may take in the browser before the test fails.
const EXPERIMENT_DEADLINE: Duration = Duration::from_secs(120);
/// How long a page load after a click may take.
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// The binary named by `var` if that file exists, else the first of
/// `names` on `PATH`.
fn binary(var: &str, names: &[&str]) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(path) if !path.is_empty() => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        _ => on_path(names),
    }
}

/// Chromium and chromedriver, or `None` after printing `SKIPPED: …` (a
/// panic instead under `CLOAKROOM_REQUIRE_BACKENDS=1`).
fn browser() -> Option<Browser> {
    let chromium = binary(
        "CLOAKROOM_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    );
    let chromedriver = binary("CLOAKROOM_CHROMEDRIVER", &["chromedriver"]);
    let missing: Vec<&str> = [
        ("chromium", chromium.is_none()),
        ("chromedriver", chromedriver.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    let verb = if missing.len() == 1 { "is" } else { "are" };
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Some(Browser {
            chromium,
            chromedriver,
        }),
        _ if backends_required() => panic!(
            "the browser test is required (CLOAKROOM_REQUIRE_BACKENDS is set) but {} {verb} not installed; \
             install with: apt-get install -y chromium chromium-driver",
            missing.join(" and ")
        ),
        _ => {
            eprintln!(
                "SKIPPED: browser test: {} {verb} not installed; install with: apt-get install -y chromium chromium-driver",
                missing.join(" and ")
            );
            None
        }
    }
}

/// A chromedriver process on a free local port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start(chromedriver: &Path) -> Driver {
        // A port the system just handed out; chromedriver binds it right after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free local port")
            .port();
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let driver = Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on port {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo app on `127.0.0.1:0` over `store`.
async fn serve(store: Arc<dyn SessionStore>) -> (SocketAddr, Manager) {
    let main = manager(Arc::clone(&store)).unwrap();
    let lossy = lossy_manager(store).unwrap();
    let routes = app(Sessions::new(main.clone(), lossy));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, routes).await });
    (addr, main)
}

/// The store the test runs on: SQLite in a temporary directory, the demo's
/// default store (memory where SQLite is not compiled in).
#[cfg(feature = "sqlite")]
async fn store() -> (Arc<dyn SessionStore>, Option<TempDir>) {
    let dir = TempDir::new("demo-browser").unwrap();
    let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
    (cloakroom::open(&url).await.unwrap(), Some(dir))
}

#[cfg(not(feature = "sqlite"))]
async fn store() -> (Arc<dyn SessionStore>, Option<TempDir>) {
    (cloakroom::open("memory:").await.unwrap(), None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_login_and_logout_in_chromium() {
    let Some(browser) = browser() else { return };
    let (store, _dir) = store().await;
    let backend = store.capabilities().name;
    let (addr, main) = serve(store).await;
    let driver = Driver::start(&browser.chromedriver).await;

    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": browser.chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1100,1000"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .unwrap_or_else(|e| panic!("a Chromium session through chromedriver: {e}"));

    // The scenario runs on a task of its own so that, pass or fail, the
    // browser is closed before the driver is killed.
    let outcome = tokio::spawn(scenario(client.clone(), addr, main, backend)).await;
    let _ = client.close().await;
    drop(driver);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn scenario(client: Client, addr: SocketAddr, main: Manager, backend: &'static str) {
    let base = format!("http://{addr}");
    client.set_window_size(1100, 1000).await.unwrap();
    client.goto(&format!("{base}/")).await.unwrap();

    // The page says what it runs on and labels its form.
    assert_eq!(text(&client, "#backend").await, backend);
    assert_eq!(text(&client, "#hits").await, "1 hit");
    client
        .find(Locator::Css("a[href='/metrics']"))
        .await
        .expect("a link to /metrics");
    assert_eq!(text(&client, "label[for=user]").await, "Your name");
    let first = cookie(&client, "id")
        .await
        .expect("the first page sets the session cookie");

    // The experiment, small unless a screenshot of the default is wanted.
    let screenshot = std::env::var_os("CLOAKROOM_SCREENSHOT").filter(|p| !p.is_empty());
    if screenshot.is_none() {
        set_input(&client, "tabs", TABS).await;
        set_input(&client, "per-tab", PER_TAB).await;
    }
    let tabs = input_value(&client, "tabs").await;
    let per_tab = input_value(&client, "per-tab").await;
    let n = tabs * per_tab;
    let started = Instant::now();
    client
        .find(Locator::Id("run"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    loop {
        let state = client
            .find(Locator::Id("experiment"))
            .await
            .unwrap()
            .attr("data-state")
            .await
            .unwrap();
        match state.as_deref() {
            Some("done") => break,
            Some("error") => panic!("the experiment failed: {}", text(&client, "#status").await),
            _ => {}
        }
        assert!(
            started.elapsed() < EXPERIMENT_DEADLINE,
            "the experiment did not finish in {EXPERIMENT_DEADLINE:?}: {}",
            text(&client, "#status").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let locked_final = number(&client, "#serialized-final").await;
    let lossy_final = number(&client, "#lossy-final").await;
    println!(
        "in Chromium on {backend}: {tabs} tabs × {per_tab} in {:?}; locked count {locked_final}, \
         lossy count {lossy_final} (lost {}): {}",
        started.elapsed(),
        n - lossy_final,
        text(&client, "#status").await
    );
    assert_eq!(text(&client, "#serialized-sent").await, n.to_string());
    assert_eq!(locked_final, n, "the locked counter lost or doubled an update");
    assert_eq!(text(&client, "#serialized-lost").await, "0");
    assert_eq!(text(&client, "#lossy-sent").await, n.to_string());
    assert!(lossy_final <= n, "lossy count {lossy_final} above {n}");
    // The store agrees with the page.
    let stored = main
        .open_read_only(&SessionId::parse(&first).unwrap())
        .await
        .unwrap()
        .expect("the visitor's session is stored");
    assert_eq!(stored.get::<u64>("count").unwrap(), Some(n));

    if let Some(path) = screenshot {
        let png = client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("writing {}: {e}", Path::new(&path).display()));
        println!("screenshot saved to {}", Path::new(&path).display());
    }

    // Log in through the form: a new id (session-fixation defence), and the
    // page greets the user.
    client
        .find(Locator::Id("user"))
        .await
        .unwrap()
        .send_keys("ann")
        .await
        .unwrap();
    client
        .find(Locator::Id("login"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(PAGE_DEADLINE)
        .for_element(Locator::Id("logout"))
        .await
        .expect("the page after login has a log-out button");
    assert_eq!(text(&client, "#user-name").await, "ann");
    let logged_in = cookie(&client, "id").await.expect("a session cookie after login");
    assert_ne!(logged_in, first, "login must change the session id");
    assert!(
        main.open_read_only(&SessionId::parse(&first).unwrap())
            .await
            .unwrap()
            .is_none(),
        "the pre-login id must be dead"
    );

    // Log out through the form. The response clears the cookie; the page it
    // redirects to counts a hit again, in a fresh session.
    client
        .find(Locator::Id("logout"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .at_most(PAGE_DEADLINE)
        .for_element(Locator::Id("login"))
        .await
        .expect("the page after logout has the login form");
    assert_eq!(
        text(&client, "#hits").await,
        "1 hit",
        "a fresh session after logout"
    );
    let after = cookie(&client, "id").await;
    assert_ne!(
        after.as_deref(),
        Some(logged_in.as_str()),
        "the logged-in cookie must be gone"
    );
    assert!(
        main.open_read_only(&SessionId::parse(&logged_in).unwrap())
            .await
            .unwrap()
            .is_none(),
        "logout must delete the session"
    );

    // The logout response itself clears the cookie: seen without following
    // the redirect (which would start a new session).
    let status = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/logout', {method: 'POST', credentials: 'same-origin', redirect: 'manual'})
               .then(r => done(r.type), e => done(String(e)));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!("opaqueredirect"));
    assert_eq!(
        cookie(&client, "id").await,
        None,
        "the logout response must clear the session cookie"
    );
}

/// The text of the first element matching `css`.
async fn text(client: &Client, css: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap()
}

async fn number(client: &Client, css: &str) -> u64 {
    let shown = text(client, css).await;
    shown
        .parse()
        .unwrap_or_else(|e| panic!("{css} shows {shown:?}, not a number: {e}"))
}

async fn set_input(client: &Client, id: &str, value: u64) {
    let input = client.find(Locator::Id(id)).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(&value.to_string()).await.unwrap();
}

async fn input_value(client: &Client, id: &str) -> u64 {
    let value = client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|e| panic!("#{id} holds {value:?}: {e}"))
}

/// The value of the browser's cookie `name` for the current page.
async fn cookie(client: &Client, name: &str) -> Option<String> {
    client
        .get_all_cookies()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.name() == name)
        .map(|c| c.value().to_owned())
}
