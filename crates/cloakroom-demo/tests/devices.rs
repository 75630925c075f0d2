//! "Log out everywhere else" across two demo processes over one store, and
//! the remember-me cookie: what a user of the demo sees of principals and
//! per-session expiry.

use std::process::Stdio;
use std::time::Duration;

use cloakroom_demo::{DeviceSession, HitsReport, REMEMBER_FOR};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DEMO: &str = env!("CARGO_BIN_EXE_cloakroom-demo");

/// A demo process on an ephemeral port, killed on drop.
struct Demo {
    base: String,
    _child: Child,
}

async fn start(store: &str) -> Demo {
    let mut child = Command::new(DEMO)
        .args(["--listen", "127.0.0.1:0", "--store", store, "--insecure-cookie"])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let stdout = child.stdout.take().expect("demo stdout");
    let mut lines = BufReader::new(stdout).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("demo stdout") {
            if let Some(at) = line.find("http://") {
                let url = line[at..].split_whitespace().next().unwrap_or_default();
                return url.trim_end_matches('/').to_owned();
            }
        }
        panic!("the demo exited before saying where it listens");
    })
    .await
    .expect("the demo did not start within a minute");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Demo { base, _child: child }
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

/// Log `client` in on `demo` as `user`; returns the session cookie's
/// Set-Cookie line.
async fn login(demo: &Demo, client: &reqwest::Client, user: &str, remember: bool) -> String {
    let mut form = vec![("user", user)];
    if remember {
        form.push(("remember", "on"));
    }
    let r = client
        .post(format!("{}/login", demo.base))
        .form(&form)
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), 303, "login redirects");
    r.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("id="))
        .expect("login sets the session cookie")
        .to_owned()
}

async fn who(demo: &Demo, client: &reqwest::Client) -> Option<String> {
    let r = client
        .get(format!("{}/hits", demo.base))
        .send()
        .await
        .expect("hits");
    assert_eq!(r.status(), 200);
    r.json::<HitsReport>().await.expect("hits json").user
}

async fn devices(demo: &Demo, client: &reqwest::Client) -> Vec<DeviceSession> {
    let r = client
        .get(format!("{}/sessions.json", demo.base))
        .send()
        .await
        .expect("sessions");
    assert_eq!(r.status(), 200);
    r.json().await.expect("sessions json")
}

fn max_age(set_cookie: &str) -> Option<u64> {
    set_cookie
        .split(';')
        .map(str::trim)
        .find_map(|attr| attr.strip_prefix("Max-Age="))
        .map(|v| v.parse().expect("Max-Age is a number"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_out_everywhere_else_across_two_processes() {
    let dir = cloakroom_conformance::support::TempDir::new("demo-devices").expect("temp dir");
    let store = format!("sqlite://{}", dir.path().join("sessions.db").display());
    let (a, b) = (start(&store).await, start(&store).await);
    let (laptop, phone, tablet, other) = (browser(), browser(), browser(), browser());

    let remembered = login(&a, &laptop, "ann", true).await;
    let age = max_age(&remembered).expect("a remembered login's cookie has a Max-Age");
    assert!(
        age.abs_diff(REMEMBER_FOR.as_secs()) <= 5,
        "remember me: Max-Age {age}, expected about {}",
        REMEMBER_FOR.as_secs()
    );
    let forgotten = login(&b, &phone, "ann", false).await;
    assert_eq!(
        max_age(&forgotten),
        None,
        "without remember me the cookie ends with the browser: {forgotten}"
    );
    assert!(!forgotten.contains("Expires="), "{forgotten}");
    login(&a, &tablet, "ann", false).await;
    login(&b, &other, "bob", true).await;

    let listed = devices(&b, &phone).await;
    assert_eq!(
        listed.len(),
        3,
        "ann's three sessions, whichever process is asked: {listed:?}"
    );
    assert_eq!(listed.iter().filter(|d| d.current).count(), 1);
    assert!(
        listed.windows(2).all(|w| w[0].created <= w[1].created),
        "oldest first"
    );

    let r = laptop
        .post(format!("{}/sessions/revoke-others", a.base))
        .send()
        .await
        .expect("revoke others");
    assert_eq!(r.status(), 303);

    assert_eq!(
        who(&a, &laptop).await.as_deref(),
        Some("ann"),
        "the session that asked stays"
    );
    assert_eq!(
        who(&b, &phone).await,
        None,
        "ann's phone (other process) is logged out"
    );
    assert_eq!(who(&a, &tablet).await, None, "ann's tablet is logged out");
    assert_eq!(who(&b, &other).await.as_deref(), Some("bob"), "bob is untouched");
    let left = devices(&b, &laptop).await;
    assert_eq!(left.len(), 1);
    assert!(left[0].current);

    // The remembered session keeps its own expiry on a later request.
    let r = laptop.get(format!("{}/", a.base)).send().await.expect("page");
    assert_eq!(r.status(), 200);
    let page = r.text().await.expect("page text");
    assert!(
        page.contains("your sessions"),
        "a logged-in page links the sessions page"
    );
    let left = devices(&a, &laptop).await;
    let ms_left = left[0].expires - cloakroom::Timestamp::now().as_millis();
    assert!(
        ms_left > (REMEMBER_FOR.as_millis() as i64) - 60_000,
        "the remembered session expires in {ms_left} ms, not in 30 days"
    );
}
