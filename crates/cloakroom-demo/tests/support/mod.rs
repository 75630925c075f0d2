//! Test support: the demo app on an ephemeral port over a real store,
//! wrapped in a counting decorator so tests can see every store call.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloakroom::{
    async_trait, Acquired, Capabilities, Cursor, Finish, Finished, HeldSession, IdPage, LockGuard,
    LockOptions, Manager, ManagerBuilder, Namespace, Record, RecordWrite, SessionId, SessionKey,
    SessionStore, SweepBatch, Then, Timestamp,
};
use cloakroom_conformance::support::{skip_or_fail, Server};
use cloakroom_demo::Sessions;
use cloakroom_tower::SessionLayer;

/// Delegates every call to the real store and counts it by method name.
/// Not a mock: the real backend does all the work.
#[derive(Debug)]
pub struct CountingStore {
    pub inner: Arc<dyn SessionStore>,
    calls: Calls,
}

type Calls = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn bump(calls: &Calls, method: &'static str) {
    *calls.lock().unwrap().entry(method).or_default() += 1;
}

/// Counts what is done through a lock guard too (`guard.finish`, …).
#[derive(Debug)]
struct CountingGuard {
    inner: Box<dyn LockGuard>,
    calls: Calls,
}

#[async_trait]
impl LockGuard for CountingGuard {
    fn held(&self) -> &HeldSession {
        self.inner.held()
    }
    async fn renew(&mut self, lease: Duration) -> cloakroom::Result<()> {
        bump(&self.calls, "guard.renew");
        self.inner.renew(lease).await
    }
    async fn finish(&mut self, op: Finish, then: Then) -> cloakroom::Result<Finished> {
        bump(&self.calls, "guard.finish");
        self.inner.finish(op, then).await
    }
}

impl CountingStore {
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        CountingStore {
            inner,
            calls: Calls::default(),
        }
    }

    fn count(&self, method: &'static str) {
        bump(&self.calls, method);
    }

    /// Calls so far, by method.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }

    pub fn total(&self) -> u64 {
        self.calls.lock().unwrap().values().sum()
    }

    pub fn reset(&self) {
        self.calls.lock().unwrap().clear();
    }
}

#[async_trait]
impl SessionStore for CountingStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn migrate(&self) -> cloakroom::Result<()> {
        self.count("migrate");
        self.inner.migrate().await
    }
    async fn load(&self, key: &SessionKey) -> cloakroom::Result<Option<Record>> {
        self.count("load");
        self.inner.load(key).await
    }
    async fn create(&self, key: &SessionKey, write: RecordWrite) -> cloakroom::Result<Record> {
        self.count("create");
        self.inner.create(key, write).await
    }
    async fn save(
        &self,
        key: &SessionKey,
        write: RecordWrite,
        expected: Option<u64>,
    ) -> cloakroom::Result<u64> {
        self.count("save");
        self.inner.save(key, write, expected).await
    }
    async fn delete(&self, key: &SessionKey) -> cloakroom::Result<bool> {
        self.count("delete");
        self.inner.delete(key).await
    }
    async fn touch(
        &self,
        key: &SessionKey,
        accessed: Timestamp,
        expires: Timestamp,
    ) -> cloakroom::Result<bool> {
        self.count("touch");
        self.inner.touch(key, accessed, expires).await
    }
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> cloakroom::Result<Acquired> {
        self.count("lock");
        Ok(match self.inner.try_lock(key, options).await? {
            Acquired::Locked(inner) => Acquired::Locked(Box::new(CountingGuard {
                inner,
                calls: Arc::clone(&self.calls),
            })),
            busy => busy,
        })
    }
    async fn list_ids(
        &self,
        ns: &Namespace,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom::Result<IdPage> {
        self.count("list_ids");
        self.inner.list_ids(ns, cursor, limit).await
    }
    async fn count(&self, ns: &Namespace) -> cloakroom::Result<u64> {
        self.count("count");
        self.inner.count(ns).await
    }
    async fn sweep_expired(
        &self,
        ns: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom::Result<SweepBatch> {
        self.count("sweep_expired");
        self.inner.sweep_expired(ns, now, cursor, limit).await
    }
}

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
