//! The HTTP behaviour suite of cloakroom's web integrations: one function
//! per promise in [`cases`], each run by every integration (tower/axum in
//! `cloakroom-tower`, actix-web in `cloakroom-actix`) on every backend
//! (memory, file, SQLite, Postgres, MySQL, Redis, Redis Cluster), over real
//! HTTP with a real client.
//!
//! An integration implements [`Framework`]: start the test app — the
//! routes of [`routes`], behind its session middleware configured from a
//! [`Setup`] — on an ephemeral port, and calls [`http_suite!`] with the path
//! of that type. `crates/cloakroom-tower/tests/http.rs` (axum) and
//! `crates/cloakroom-actix/tests/http.rs` (actix-web) are the two such files:
//! a route table and one line each.
//!
//! Server backends come from `cloakroom_conformance::support`: one that does
//! not answer is skipped with the command that starts it, or fails under
//! `CLOAKROOM_REQUIRE_BACKENDS=1` (as in CI). The test crate needs `tokio`
//! (features `macros`, `rt-multi-thread`) among its dev-dependencies.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use cloakroom::{Manager, ManagerBuilder, Namespace, SessionId, SessionStore};
pub use cloakroom_conformance::support::Server;
use cloakroom_conformance::support::{skip_or_fail, TempDir};
pub use cloakroom_http::{CookieConfig, CookieLifetime, HttpConfig, IdCarrier, SameSite};

pub mod cases;

pub use cloakroom_conformance::support::CountingStore;

/// The routes every framework's test app serves; the suite's cases rely on
/// exactly this behaviour. `n` is a counter in the session.
pub mod routes {
    use std::time::Duration;

    /// `GET`: no session extractor at all; answers `ok`.
    pub const HEALTH: &str = "/health";
    /// `GET`: extracts the session handle and never uses it; answers `ok`.
    pub const NOOP: &str = "/noop";
    /// `GET`: `n += 1`; answers the new `n`.
    pub const INC: &str = "/inc";
    /// `GET`: reads `n`, waits [`SLOW`], writes `n + 1`; answers it.
    pub const SLOW: &str = "/slow";
    /// `GET`: reads `n`, waits [`HOLD`], writes `n + 1`; answers it.
    pub const HOLD: &str = "/hold";
    /// `GET`: writes `n = 1000`, then waits [`HANG`] before answering.
    pub const HANG: &str = "/hang";
    /// `GET`: `n` through the read-only handle (`0` without a session).
    pub const READ: &str = "/read";
    /// `GET`: `user` through the read-only handle (empty without one).
    pub const USER: &str = "/user";
    /// `GET`: writes `n = 999`, then answers `500`.
    pub const FAIL: &str = "/fail";
    /// `GET`: writes `n = 999`, then panics. The app answers a panic with
    /// `500` (a panic catcher outside the session middleware).
    pub const PANIC: &str = "/panic";
    /// `GET`: the session's id (a session only looked at).
    pub const WHOAMI: &str = "/whoami";
    /// `POST`: `cycle_id`, then `user = "ann"`; answers `ok`.
    pub const LOGIN: &str = "/login";
    /// `POST`: `delete`; answers whether a stored session was deleted
    /// (`true`/`false`).
    pub const LOGOUT: &str = "/logout";
    /// `POST`: `delete`, then `flash = "bye"` (a fresh session in the same
    /// request); answers `ok`.
    pub const LOGOUT_FLASH: &str = "/logout-flash";

    /// `POST`: "remember me": `set_expiry(OnInactivity(`[`REMEMBER_FOR`]`))`,
    /// `set_principal("ann")`, `user = "ann"`; answers `ok`.
    pub const REMEMBER: &str = "/remember";
    /// `POST`: `set_expiry(OnBrowserClose)`, `user = "ann"`; answers `ok`.
    pub const BROWSER_CLOSE: &str = "/browser-close";
    /// `GET`: the session's principal, own expiry and time to expiry,
    /// through the locking handle, as [`about`] formats them.
    pub const ABOUT: &str = "/about";
    /// `GET`: `n += 1`, `commit_now`, open [`Probe::released`](crate::Probe),
    /// wait for [`Probe::proceed`](crate::Probe), read `n` again, try to
    /// insert `late`; answers `"{n read after the wait} {late_outcome}"`
    /// (see [`late_outcome`]).
    pub const RELEASE: &str = "/release";
    /// `GET`: `n = 999`, `rollback`, read `n` (the stored one), open
    /// [`Probe::released`](crate::Probe), wait for
    /// [`Probe::proceed`](crate::Probe), try to insert `late`; answers
    /// `"{n read after the rollback} {late_outcome}"`.
    pub const ROLLBACK: &str = "/rollback";
    /// `POST`: `flush`; answers whether a stored session was deleted.
    pub const FLUSH: &str = "/flush";
    /// `POST`: `flush`, then `user = "guest"` in the fresh session; answers
    /// `ok`.
    pub const FLUSH_KEEP: &str = "/flush-keep";
    /// `GET` and `POST`, for apps under `Policy::Optimistic` only: counts the
    /// run in [`Probe::race_runs`](crate::Probe), reads `n`; unless the
    /// session holds `raced`, another writer saves it meanwhile
    /// ([`save_meanwhile`]: `raced = true`); then `n += 1`; answers the new
    /// `n`. So the first run on a session conflicts at commit, and a second
    /// run does not.
    pub const RACE: &str = "/race";

    /// How long [`REMEMBER`] keeps an unused session: 30 days.
    pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 86_400);

    /// How long [`SLOW`] holds the session.
    pub const SLOW_FOR: Duration = Duration::from_millis(300);
    /// How long [`HOLD`] holds the session.
    pub const HOLD_FOR: Duration = Duration::from_millis(500);
    /// How long [`HANG`] waits.
    pub const HANG_FOR: Duration = Duration::from_secs(30);

    /// The answer of [`ABOUT`]: `principal|expiry|seconds to expiry`, with
    /// `-` for no principal and the expiry as `default`,
    /// `inactivity:{seconds}`, `instant` or `browser-close`.
    pub fn about(
        principal: Option<&cloakroom::Principal>,
        expiry: Option<cloakroom::Expiry>,
        expires: cloakroom::Timestamp,
    ) -> String {
        let expiry = match expiry {
            None => "default".to_owned(),
            Some(cloakroom::Expiry::OnInactivity(d)) => format!("inactivity:{}", d.as_secs()),
            Some(cloakroom::Expiry::AtInstant(_)) => "instant".to_owned(),
            Some(cloakroom::Expiry::OnBrowserClose) => "browser-close".to_owned(),
            Some(_) => "other".to_owned(),
        };
        let left = (expires.as_millis() - cloakroom::Timestamp::now().as_millis() + 500) / 1000;
        format!("{}|{expiry}|{left}", principal.map_or("-", |p| p.as_str()))
    }

    /// How a change after `commit_now` or `rollback` ended: `released`
    /// for [`Error::Released`](cloakroom::Error::Released), `accepted` if it
    /// was not refused, `error` for any other error.
    pub fn late_outcome(result: Result<(), &cloakroom::Error>) -> &'static str {
        match result {
            Ok(()) => "accepted",
            Err(cloakroom::Error::Released) => "released",
            Err(_) => "error",
        }
    }

    /// Another writer saves the session `id` while a request holds it:
    /// opened, `raced = true`, committed (optimistic policy: no lock).
    pub async fn save_meanwhile(
        manager: &super::Manager,
        id: &super::SessionId,
    ) -> Result<(), cloakroom::Error> {
        let mut other = manager.open(Some(id)).await?;
        other.insert("raced", &true)?;
        other.commit().await.map(drop)
    }
}

/// A one-way signal between a case and its app's handlers: closed until
/// [`open`](Gate::open)ed, then open for good.
#[derive(Clone, Debug)]
pub struct Gate(Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(tokio::sync::watch::channel(false).0))
    }
}

impl Gate {
    /// Let every waiter through, now and later.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Wait until the gate is open (at once if it is).
    pub async fn wait(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as `self`, so this only returns open.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// What a case shares with its app's handlers.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    /// Opened by [`routes::RELEASE`] and [`routes::ROLLBACK`] once the
    /// session is released.
    pub released: Gate,
    /// Opened by the case to let [`routes::RELEASE`] and
    /// [`routes::ROLLBACK`] finish.
    pub proceed: Gate,
    /// Runs of [`routes::RACE`]'s handler.
    pub race_runs: Arc<std::sync::atomic::AtomicU64>,
}

impl Probe {
    /// Count one run of [`routes::RACE`].
    pub fn race_run(&self) {
        self.race_runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Runs of [`routes::RACE`] so far.
    pub fn race_runs(&self) -> u64 {
        self.race_runs.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How the session middleware of a test app is configured.
#[derive(Clone, Debug, Default)]
pub struct Setup {
    /// Id carrier and cookie attributes.
    pub http: HttpConfig,
    /// Answer a lock timeout with `429` and the body `busy after {ms}ms`
    /// instead of the default.
    pub lock_timeout_429: bool,
    /// Run replayable requests again up to this many times on a conflict
    /// at commit (the middleware's `retry_conflicts`; 0: off).
    pub retry_conflicts: u32,
    /// Shared with the handlers of [`routes::RELEASE`],
    /// [`routes::ROLLBACK`] and [`routes::RACE`].
    pub probe: Probe,
}

/// A web framework's test app, as the suite starts it.
pub trait Framework: 'static {
    /// Serve [`routes`] on `127.0.0.1:0` behind the session middleware over
    /// `manager`, configured as `setup` says.
    fn start(manager: Manager, setup: Setup) -> impl Future<Output = Running> + Send;

    /// Serve [`routes`] without the session middleware: every route that
    /// extracts a session must answer `500`, not panic.
    fn start_bare() -> impl Future<Output = Running> + Send;
}

/// A test app serving until dropped.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl Running {
    /// An app at `addr` that `stop` shuts down.
    pub fn new(addr: SocketAddr, stop: impl FnOnce() + Send + 'static) -> Running {
        Running {
            addr,
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// A store the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The in-process memory store.
    Memory,
    /// The file store in a fresh directory.
    File,
    /// SQLite in a fresh database file.
    Sqlite,
    /// A server of the test setup (skipped or failed when unreachable).
    Server(Server),
}

impl Backend {
    /// Open a fresh store; `None` for an unreachable server that may be
    /// skipped. The directory of a file or SQLite store comes along.
    pub async fn open(self) -> Option<(Arc<dyn SessionStore>, Option<TempDir>)> {
        let (url, dir) = match self {
            Backend::Memory => ("memory:".to_owned(), None),
            Backend::File => {
                let dir = TempDir::new("http-file").unwrap();
                (format!("file://{}", dir.path().display()), Some(dir))
            }
            Backend::Sqlite => {
                let dir = TempDir::new("http-sqlite").unwrap();
                (
                    format!("sqlite://{}", dir.path().join("sessions.db").display()),
                    Some(dir),
                )
            }
            Backend::Server(server) => {
                let opened = cloakroom::open(&server.url())
                    .await
                    .map_err(|e| server.unreachable(e));
                return skip_or_fail(opened).map(|store| (store, None));
            }
        };
        let store = cloakroom::open(&url)
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
        Some((store, dir))
    }
}

/// One case's app: the framework's test app over a counting store in a
/// namespace of its own.
pub struct App {
    running: Running,
    /// The store, counting every call.
    pub store: Arc<CountingStore>,
    /// The app's manager.
    pub manager: Manager,
    _dir: Option<TempDir>,
}

impl App {
    /// Start `F`'s app on `backend` with the manager changed by `tune` and
    /// the middleware configured by `setup`; `None` if the backend is
    /// skipped.
    pub async fn start<F: Framework>(
        backend: Backend,
        tune: impl FnOnce(ManagerBuilder) -> ManagerBuilder,
        setup: Setup,
    ) -> Option<App> {
        let (real, dir) = backend.open().await?;
        let store = Arc::new(CountingStore::new(real));
        let manager = tune(Manager::builder(store.clone(), fresh_namespace()))
            .build()
            .unwrap();
        let running = F::start(manager.clone(), setup).await;
        Some(App {
            running,
            store,
            manager,
            _dir: dir,
        })
    }

    /// The URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    /// Live sessions in this app's namespace (asked of the real store, so
    /// it does not count as a call).
    pub async fn rows(&self) -> u64 {
        self.store.inner.count(self.manager.namespace()).await.unwrap()
    }
}

/// A namespace no other test uses, so tests share a database or Redis
/// without cleanup.
pub fn fresh_namespace() -> Namespace {
    Namespace::new(&format!("http-{}", &SessionId::generate().as_str()[..16])).unwrap()
}

/// A browser: one cookie jar, redirects not followed.
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A client without a cookie jar, for hand-made `Cookie` headers.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Every `Set-Cookie` line of a response.
pub fn set_cookies(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The `Set-Cookie` line of the cookie `name`, if any.
pub fn set_cookie_named(response: &reqwest::Response, name: &str) -> Option<String> {
    set_cookies(response)
        .into_iter()
        .find(|line| line.starts_with(&format!("{name}=")))
}

/// The session cookie's (`id`) `Set-Cookie` line, if any.
pub fn set_cookie(response: &reqwest::Response) -> Option<String> {
    set_cookie_named(response, "id")
}

/// The value of a `Set-Cookie` line.
pub fn cookie_value(line: &str) -> String {
    let pair = line.split(';').next().unwrap();
    pair.split_once('=').unwrap().1.to_owned()
}

/// The attributes of a `Set-Cookie` line, trimmed and lowercased.
pub fn attrs(line: &str) -> Vec<String> {
    line.split(';').map(|a| a.trim().to_ascii_lowercase()).collect()
}

/// Every case on every backend, for the framework `$framework` (a path
/// from the crate root, such as `crate::harness::Axum`): one
/// `#[tokio::test]` per case and backend, named `backend::case`.
#[macro_export]
macro_rules! http_suite {
    ($framework:path) => {
        $crate::http_suite!(@backend $framework, memory, $crate::Backend::Memory);
        $crate::http_suite!(@backend $framework, file, $crate::Backend::File);
        $crate::http_suite!(@backend $framework, sqlite, $crate::Backend::Sqlite);
        $crate::http_suite!(@backend $framework, postgres, $crate::Backend::Server($crate::Server::Postgres));
        $crate::http_suite!(@backend $framework, mysql, $crate::Backend::Server($crate::Server::Mysql));
        $crate::http_suite!(@backend $framework, redis, $crate::Backend::Server($crate::Server::Redis));
        $crate::http_suite!(@backend $framework, redis_cluster, $crate::Backend::Server($crate::Server::RedisCluster));

        /// The control: the same tabs without a lock lose hits, so
        /// `six_tabs` passing means the lock works, not that it cannot fail.
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn without_the_lock_tabs_lose_hits() {
            $crate::cases::without_the_lock_tabs_lose_hits::<$framework>().await;
        }

        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn an_extractor_without_the_middleware_is_a_500_not_a_panic() {
            $crate::cases::an_extractor_without_the_middleware_is_a_500_not_a_panic::<$framework>().await;
        }
    };
    (@backend $framework:path, $name:ident, $backend:expr) => {
        mod $name {
            $crate::http_suite!(@cases $framework, $backend;
                six_tabs,
                committed_before_the_response,
                lookers_leave_no_rows,
                unused_session_costs_nothing,
                lock_timeout_answers_503_with_retry_after,
                lock_timeout_response_is_configurable,
                read_only_access_never_waits_for_the_lock,
                id_travels_in_a_header_for_clients_without_cookies,
                default_cookie_attributes,
                cookie_attributes_are_configurable,
                browser_session_cookie_has_no_max_age_and_is_sent_once,
                absolute_expiry_counts_the_cookie_down,
                persistent_cookie_is_resent_only_when_the_stored_expiry_moves,
                malformed_ids_get_a_fresh_session,
                login_cycles_the_id,
                logout_clears_the_cookie,
                a_session_used_after_logout_is_a_fresh_one,
                a_session_deleted_meanwhile_is_not_revived,
                a_failed_handler_saves_nothing_and_unlocks,
                a_panic_saves_nothing_and_unlocks,
                a_client_that_disconnects_does_not_leave_the_session_locked,
                remember_me_gets_a_lasting_cookie_that_stays,
                a_browser_close_session_gets_a_cookie_without_max_age,
                commit_now_lets_the_next_request_in_while_the_handler_runs,
                an_early_commit_of_a_new_session_still_sets_its_cookie,
                rollback_discards_and_releases_early,
                flush_deletes_and_goes_on_with_a_fresh_session,
                an_optimistic_conflict_at_commit_answers_409,
                retry_conflicts_runs_a_safe_request_again,
            );
        }
    };
    (@cases $framework:path, $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::cases::$case::<$framework>($backend).await;
            }
        )*
    };
}
