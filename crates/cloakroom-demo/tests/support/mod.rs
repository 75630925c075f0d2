//! Test support: the demo app on an ephemeral port over a real store,
//! wrapped in a counting decorator so tests can see every store call.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloakroom::{Manager, ManagerBuilder, Namespace, SessionId};
use cloakroom_conformance::support::{skip_or_fail, CountingStore, Server};
use cloakroom_demo::Sessions;
use cloakroom_tower::SessionLayer;

/// The demo app serving on `127.0.0.1:0` in this test's own namespace.
pub struct TestApp {
    pub addr: SocketAddr,
    pub store: Arc<CountingStore>,
    pub manager: Manager,
    /// The experiment's unlocked counter (`/lossy/…`), same store.
    pub lossy: Manager,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A namespace no other test uses, so tests share a database or Redis
/// without cleanup.
pub fn fresh_namespace() -> Namespace {
    Namespace::new(&format!("demo-{}", &SessionId::generate().as_str()[..16])).unwrap()
}

impl TestApp {
    /// Start the demo over the store `url` names, with the default manager
    /// settings changed by `tune`, and the layer changed by `layer`.
    pub async fn start_with(
        url: &str,
        tune: impl FnOnce(ManagerBuilder) -> ManagerBuilder,
        layer: impl FnOnce(SessionLayer) -> SessionLayer,
    ) -> TestApp {
        let real = cloakroom::open(url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
        let store = Arc::new(CountingStore::new(real));
        let manager = tune(Manager::builder(store.clone(), fresh_namespace()))
            .build()
            .unwrap();
        let lossy = Manager::builder(store.clone(), fresh_namespace())
            .policy(cloakroom::Policy::Lossy)
            .build()
            .unwrap();
        let app = cloakroom_demo::app(Sessions::new(manager.clone(), lossy.clone()).map_main(layer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        TestApp {
            addr,
            store,
            manager,
            lossy,
            server,
        }
    }

    pub async fn start(url: &str) -> TestApp {
        Self::start_with(url, |b| b, |l| l).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A browser: one cookie jar, redirects not followed (so a test sees the
    /// login/logout responses themselves).
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// A client without a cookie jar, for hand-made Cookie headers.
    pub fn bare_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap()
    }

    /// Live sessions stored in this test's namespace (asked of the real
    /// store, so it does not count as a call).
    pub async fn rows(&self) -> u64 {
        self.store.inner.count(self.manager.namespace()).await.unwrap()
    }

    pub async fn hits(&self, client: &reqwest::Client) -> cloakroom_demo::HitsReport {
        let r = client.get(self.url("/hits")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// The `id` value of a response's session Set-Cookie, if any.
pub fn set_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("id="))
        .map(str::to_owned)
}

/// The cookie value from a Set-Cookie line.
pub fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("id="))
        .unwrap()
        .to_owned()
}

/// A fresh directory for a file store, as a `file:///` URL.
pub fn file_store_url() -> String {
    let dir = std::env::temp_dir().join(format!(
        "cloakroom-demo-test-{}",
        &SessionId::generate().as_str()[..12]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    format!("file://{}", dir.display())
}

/// A fresh SQLite database file, as a `sqlite:///` URL.
pub fn sqlite_store_url() -> String {
    let dir = std::env::temp_dir().join(format!(
        "cloakroom-demo-test-{}",
        &SessionId::generate().as_str()[..12]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    format!("sqlite://{}", dir.join("sessions.db").display())
}

/// The test URL of `server` if it answers, or `None` after a `SKIPPED`
/// line (a panic when backends are required).
pub async fn server_url(server: Server) -> Option<String> {
    let url = server.url();
    let opened = cloakroom::open(&url).await.map_err(|e| server.unreachable(e));
    skip_or_fail(opened).map(|_| url)
}
