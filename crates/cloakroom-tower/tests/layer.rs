//! The layer's promises over real HTTP (axum server on an ephemeral port,
//! reqwest client) with the in-process memory store. Backend-by-backend runs
//! of the same promises live in `cloakroom-demo`'s HTTP suite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use cloakroom_core::{Manager, ManagerBuilder, MemoryStore, Namespace, SessionId, SessionStore};
use cloakroom_tower::{CookieLifetime, LazySession, SameSite, SessionError, SessionLayer, SessionReader};

async fn inc(session: LazySession) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", &n).await?;
    Ok(n.to_string())
}

/// Takes the lock, then holds it for `?ms=` (default 500) before writing.
async fn hold(session: LazySession) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    session.insert("n", &n).await?;
    Ok(n.to_string())
}

async fn hang(session: LazySession) -> Result<String, SessionError> {
    session.insert("n", &1000u64).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok("never".into())
}

async fn read(reader: SessionReader) -> Result<String, SessionError> {
    Ok(reader.get::<u64>("n").await?.unwrap_or(0).to_string())
}

async fn fail(session: LazySession) -> Result<String, (StatusCode, &'static str)> {
    session
        .insert("n", &999u64)
        .await
        .map_err(|_| (StatusCode::BAD_GATEWAY, "x"))?;
    Err((StatusCode::INTERNAL_SERVER_ERROR, "handler failed"))
}

async fn whoami(session: LazySession) -> Result<String, SessionError> {
    Ok(session.id().await?.as_str().to_owned())
}

struct Server {
    base: String,
    manager: Manager,
    store: Arc<MemoryStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    async fn start(
        tune: impl FnOnce(ManagerBuilder) -> ManagerBuilder,
        layer: impl FnOnce(SessionLayer) -> SessionLayer,
    ) -> Server {
        let store = Arc::new(MemoryStore::new());
        let manager = tune(Manager::builder(
            store.clone() as Arc<dyn SessionStore>,
            Namespace::new("t").unwrap(),
        ))
        .build()
        .unwrap();
        let app = Router::new()
            .route("/inc", get(inc))
            .route("/hold", get(hold))
            .route("/hang", get(hang))
            .route("/read", get(read))
            .route("/fail", get(fail))
            .route("/whoami", get(whoami))
            .layer(layer(SessionLayer::new(manager.clone())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            base,
            manager,
            store,
            task,
        }
    }

    async fn rows(&self) -> u64 {
        self.store.count(self.manager.namespace()).await.unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn attrs(line: &str) -> Vec<String> {
    line.split(';').map(|a| a.trim().to_ascii_lowercase()).collect()
}

/// First request of a new visitor: returns the cookie header to send next.
async fn new_visitor(s: &Server, c: &reqwest::Client) -> String {
    let r = c.get(s.url("/inc")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let line = set_cookies(&r).pop().expect("a new session sets a cookie");
    line.split(';').next().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_answers_503_with_retry_after() {
    let s = Server::start(|b| b.lock_wait(Duration::from_millis(100)), |l| l).await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let holder = tokio::spawn(c.get(s.url("/hold")).header("cookie", cookie.clone()).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = c
        .get(s.url("/inc"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "waited {:?}",
        t.elapsed()
    );
    assert_eq!(holder.await.unwrap().unwrap().text().await.unwrap(), "2");
    // The timed-out request changed nothing.
    let r = c
        .get(s.url("/read"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_timeout_response_is_configurable() {
    let s = Server::start(
        |b| b.lock_wait(Duration::from_millis(100)),
        |l| {
            l.on_lock_timeout(|waited| {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("busy after {}ms", waited.as_millis()),
                )
                    .into_response()
            })
        },
    )
    .await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let holder = tokio::spawn(c.get(s.url("/hold")).header("cookie", cookie.clone()).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = c
        .get(s.url("/inc"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().starts_with("busy after"));
    holder.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_access_never_waits_for_the_lock() {
    let s = Server::start(|b| b, |l| l).await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let holder = tokio::spawn(c.get(s.url("/hold")).header("cookie", cookie.clone()).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let r = c
        .get(s.url("/read"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert!(set_cookies(&r).is_empty(), "a reader never sets cookies");
    // The committed value, while the holder still works on its change.
    assert_eq!(r.text().await.unwrap(), "1");
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "reader waited {:?}",
        t.elapsed()
    );
    holder.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_travels_in_a_header_for_clients_without_cookies() {
    let s = Server::start(|b| b, |l| l.id_header("x-session".parse().unwrap())).await;
    let c = client();
    let r = c.get(s.url("/inc")).send().await.unwrap();
    assert!(set_cookies(&r).is_empty(), "header mode sets no cookie");
    let id = r.headers()["x-session"].to_str().unwrap().to_owned();
    SessionId::parse(&id).unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
    let r = c
        .get(s.url("/inc"))
        .header("x-session", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-session"], id.as_str());
    assert_eq!(r.text().await.unwrap(), "2");
    // A cookie is ignored in header mode.
    let r = c
        .get(s.url("/inc"))
        .header("cookie", format!("id={id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "1");
    // A malformed header value gets a fresh session, not an error.
    let r = c
        .get(s.url("/inc"))
        .header("x-session", "../../etc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["x-session"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_attributes_are_configurable() {
    let s = Server::start(
        |b| b,
        |l| {
            l.cookie_name("sid")
                .cookie_path("/app")
                .cookie_domain("example.test")
                .secure(false)
                .http_only(false)
                .same_site(SameSite::Strict)
        },
    )
    .await;
    let r = client().get(s.url("/inc")).send().await.unwrap();
    let line = set_cookies(&r).pop().unwrap();
    let a = attrs(&line);
    assert!(line.starts_with("sid="), "{line}");
    for want in ["path=/app", "domain=example.test", "samesite=strict"] {
        assert!(a.iter().any(|x| x == want), "{want} missing: {line}");
    }
    assert!(!a.iter().any(|x| x == "secure" || x == "httponly"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_session_cookie_has_no_max_age_and_is_sent_once() {
    let s = Server::start(|b| b, |l| l.cookie_lifetime(CookieLifetime::BrowserSession)).await;
    let c = client();
    let r = c.get(s.url("/inc")).send().await.unwrap();
    let line = set_cookies(&r).pop().unwrap();
    assert!(
        !attrs(&line)
            .iter()
            .any(|a| a.starts_with("max-age") || a.starts_with("expires")),
        "{line}"
    );
    let cookie = line.split(';').next().unwrap().to_owned();
    let r = c
        .get(s.url("/inc"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert!(set_cookies(&r).is_empty(), "an unchanged id is not re-sent");
    assert_eq!(r.text().await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_expiry_counts_the_cookie_down() {
    let s = Server::start(|b| b.absolute_timeout(Some(Duration::from_secs(100))), |l| l).await;
    let r = client().get(s.url("/inc")).send().await.unwrap();
    let line = set_cookies(&r).pop().unwrap();
    let max_age: u64 = attrs(&line)
        .iter()
        .find_map(|a| a.strip_prefix("max-age=").map(|v| v.parse().unwrap()))
        .unwrap();
    assert!((98..=100).contains(&max_age), "Max-Age {max_age} in {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_meanwhile_is_not_revived_and_the_response_survives() {
    let s = Server::start(|b| b, |l| l).await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let id = SessionId::parse(cookie.strip_prefix("id=").unwrap()).unwrap();
    let holder = tokio::spawn(c.get(s.url("/hold")).header("cookie", cookie.clone()).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Logged out from another device while /hold works (no lock needed).
    assert!(s.manager.delete(&id).await.unwrap());
    let r = holder.await.unwrap().unwrap();
    assert_eq!(r.status(), 200, "Error::Gone at commit must not break the page");
    let line = set_cookies(&r).pop().expect("the dead id's cookie is cleared");
    assert!(attrs(&line).iter().any(|a| a == "max-age=0"), "{line}");
    assert_eq!(s.rows().await, 0, "the late save must not bring the session back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_handler_saves_nothing_and_unlocks() {
    let s = Server::start(|b| b.lease(Duration::from_secs(60)), |l| l).await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let r = c
        .get(s.url("/fail"))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);
    let t = Instant::now();
    let r = c
        .get(s.url("/inc"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(
        r.text().await.unwrap(),
        "2",
        "the failed handler's write must be rolled back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_leave_the_session_locked() {
    let s = Server::start(
        |b| {
            b.lease(Duration::from_secs(60))
                .lock_wait(Duration::from_secs(20))
        },
        |l| l,
    )
    .await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .get(s.url("/hang"))
        .header("cookie", cookie.clone())
        .send()
        .await;
    assert!(gone.is_err(), "the client gives up on /hang");
    let t = Instant::now();
    let r = c
        .get(s.url("/inc"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let waited = t.elapsed();
    assert_eq!(
        r.text().await.unwrap(),
        "2",
        "the abandoned request wrote nothing"
    );
    assert!(
        waited < Duration::from_secs(3),
        "waited {waited:?} for an abandoned lock"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extractor_without_the_layer_is_a_500_not_a_panic() {
    let app = Router::new().route("/inc", get(inc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inc", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    assert_eq!(client().get(url).send().await.unwrap().status(), 500);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_only_looked_at_is_not_stored() {
    let s = Server::start(|b| b, |l| l).await;
    let r = client().get(s.url("/whoami")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(set_cookies(&r).is_empty(), "an empty new session gets no cookie");
    SessionId::parse(&r.text().await.unwrap()).unwrap();
    assert_eq!(s.rows().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_cookie_is_resent_only_when_the_stored_expiry_moves() {
    // Default touch interval (60 s): a request that only looks at the session
    // leaves the stored expiry where it was, so its Max-Age must not move.
    let s = Server::start(|b| b, |l| l).await;
    let c = client();
    let cookie = new_visitor(&s, &c).await;
    let r = c
        .get(s.url("/whoami"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        set_cookies(&r).is_empty(),
        "an untouched session re-sent its cookie"
    );
    let r = c
        .get(s.url("/inc"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let line = set_cookies(&r)
        .pop()
        .expect("a save slides the expiry, so the cookie is refreshed");
    assert!(attrs(&line).iter().any(|a| a.starts_with("max-age=")), "{line}");
}
