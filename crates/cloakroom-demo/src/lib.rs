//! The hit-counter demo of cloakroom, a news site's story: a visitor opens
//! five or six stories in tabs at once, some pages slow, and every hit must
//! count.
//!
//! The page (`GET /`) also runs the *six tabs* experiment in the visitor's
//! browser: many concurrent requests at a counter, once in a session under
//! the `Serialized` policy (cloakroom's lock) and once in a `Lossy` one (no
//! lock) on the same store, side by side — what a visitor would lose
//! without cloakroom.
//!
//! | route | session use |
//! |---|---|
//! | `GET /` | counts a hit (locks the visitor's session), shows count and id prefix, and the experiment |
//! | `GET /slow` | reads the count, sleeps 300 ms holding the lock, writes count + 1 |
//! | `GET /hits` | JSON `{hits, user, session}`, read-only: never locks, never writes |
//! | `POST /login` | cycles the session id (fixation defence), tags the session with the user (its principal); "remember me" keeps it 30 days, otherwise the cookie ends with the browser |
//! | `GET /sessions` | the user's sessions on every device (hash prefix, created, last used, expires), with "log out everywhere else"; `GET /sessions.json` the same as JSON |
//! | `POST /sessions/revoke-others` | ends every other session of the user, each under its lock |
//! | `POST /logout` | deletes the session and clears the cookie |
//! | `GET /panic` | changes the session, then panics: nothing saved, lock released |
//! | `GET /health` | never touches the session: no store call at all |
//! | `POST /count` | experiment counter, `Serialized`: reads, waits [`COUNT_GAP`], writes + 1; JSON `{hits}` |
//! | `GET /count` | the counter, read-only; JSON `{hits}` |
//! | `POST /count/reset` | sets the counter to 0 (creating the session if needed); JSON `{hits}` |
//! | `POST /lossy/count`, `GET /lossy/count`, `POST /lossy/count/reset` | the same in the `Lossy` namespace ([`LOSSY_PREFIX`], cookie [`LOSSY_COOKIE`]) |
//! | `GET /assets/…` | the page's stylesheet and script; no session |
//! | `GET /metrics` | cloakroom's metrics in Prometheus text (see [`with_metrics`]); no session |
#![warn(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Form;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloakroom::{Expiry, Manager, Namespace, Policy, Principal, SessionStore, SessionSummary, Timestamp};
use cloakroom_tower::{Session, SessionError, SessionLayer, SessionReader};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tower_http::catch_panic::CatchPanicLayer;

/// Where the demo keeps sessions when `--store` is not given: SQLite in the
/// working directory, created on first start.
#[cfg(feature = "sqlite")]
pub const DEFAULT_STORE: &str = "sqlite:cloakroom-demo.db";

/// Where the demo keeps sessions when `--store` is not given: in memory,
/// because this build has no SQLite (feature `sqlite`).
#[cfg(not(feature = "sqlite"))]
pub const DEFAULT_STORE: &str = "memory:";

/// How long `/slow` holds the session.
pub const SLOW_PAGE: Duration = Duration::from_millis(300);

/// How long the experiment's counter waits between reading the count and
/// writing it back, standing in for the work a real handler does there.
/// It is what makes the race visible: without a lock, every request that
/// reads during another's gap writes back a count that misses it.
pub const COUNT_GAP: Duration = Duration::from_millis(3);

/// How many characters of the id the pages show: enough to tell sessions
/// apart, too few to steal one (the id is a bearer credential).
pub const ID_PREFIX_LEN: usize = 8;

/// Where the unlocked (`Lossy`) experiment counter is served.
pub const LOSSY_PREFIX: &str = "/lossy";

/// The cookie of the `Lossy` sessions: a name of its own (and the path
/// [`LOSSY_PREFIX`]), so it never overwrites the visitor's session cookie.
pub const LOSSY_COOKIE: &str = "id-lossy";

/// How long "remember me" keeps a login without a visit.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 24 * 3600);

/// The session key of the experiment's counter.
const COUNT_KEY: &str = "count";

fn static_namespace(name: &str) -> Namespace {
    match Namespace::new(name) {
        Ok(ns) => ns,
        // Literals that the strict parse accepts; checked by a test.
        Err(e) => panic!("the demo namespace {name:?} is invalid: {e}"),
    }
}

/// The demo's namespace in the store.
pub fn namespace() -> Namespace {
    static_namespace("demo")
}

/// The namespace of the experiment's unlocked sessions.
pub fn lossy_namespace() -> Namespace {
    static_namespace("demo-lossy")
}

/// The demo's manager over `store`, with the default `Serialized` policy.
pub fn manager(store: Arc<dyn SessionStore>) -> cloakroom::Result<Manager> {
    Ok(Manager::new(store, namespace()))
}

/// The experiment's other manager over the same `store`: `Policy::Lossy`,
/// no lock, the last save wins.
pub fn lossy_manager(store: Arc<dyn SessionStore>) -> cloakroom::Result<Manager> {
    Manager::builder(store, lossy_namespace())
        .policy(Policy::Lossy)
        .build()
}

/// The demo's two session layers: the visitor's session (every route but
/// the unlocked counter) and the experiment's unlocked one under
/// [`LOSSY_PREFIX`], with its own cookie ([`LOSSY_COOKIE`], path
/// [`LOSSY_PREFIX`]).
#[derive(Clone, Debug)]
pub struct Sessions {
    main: SessionLayer,
    lossy: SessionLayer,
    store: PageFacts,
    /// The visitor's manager, for the sessions page.
    manager: Manager,
}

/// What the page says about the managers.
#[derive(Clone, Debug)]
struct PageFacts {
    backend: &'static str,
    main_policy: String,
    main_namespace: String,
    lossy_policy: String,
    lossy_namespace: String,
}

impl Sessions {
    /// Layers over `main` (the visitor's sessions; the demo uses [`manager`])
    /// and `lossy` (the unlocked counter; the demo uses [`lossy_manager`]),
    /// with the secure cookie defaults. Both should share one store: the
    /// page names the backend of `main`'s.
    pub fn new(main: Manager, lossy: Manager) -> Sessions {
        let store = PageFacts {
            backend: main.store().capabilities().name,
            main_policy: format!("{:?}", main.config().policy),
            main_namespace: main.namespace().as_str().to_owned(),
            lossy_policy: format!("{:?}", lossy.config().policy),
            lossy_namespace: lossy.namespace().as_str().to_owned(),
        };
        Sessions {
            main: SessionLayer::new(main.clone()),
            lossy: SessionLayer::new(lossy)
                .cookie_name(LOSSY_COOKIE)
                .cookie_path(LOSSY_PREFIX),
            store,
            manager: main,
        }
    }

    /// Both cookies' `Secure` flag (default on).
    pub fn secure(self, on: bool) -> Sessions {
        Sessions {
            main: self.main.secure(on),
            lossy: self.lossy.secure(on),
            ..self
        }
    }

    /// Change the visitor's session layer (cookie settings, lock-timeout
    /// answer, …); the unlocked counter's stays as it is.
    pub fn map_main(self, f: impl FnOnce(SessionLayer) -> SessionLayer) -> Sessions {
        Sessions {
            main: f(self.main),
            ..self
        }
    }
}

/// The demo's routes, the visitor's behind the main session layer and the
/// unlocked counter behind the lossy one.
///
/// The panic catcher sits *outside* the session layers: a panic unwinds
/// through the session layer first (dropping the open session, which
/// releases its lock and writes nothing), and only then becomes a `500`.
pub fn app(sessions: Sessions) -> Router {
    let labels = Arc::new(sessions.store);
    let visitor = Router::new()
        .route("/", get(index))
        .route("/slow", get(slow))
        .route("/hits", get(hits))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/sessions", get(sessions_page))
        .route("/sessions.json", get(sessions_json))
        .route("/sessions/revoke-others", post(revoke_others))
        .route("/panic", get(panic_holding_session))
        .route("/health", get(health))
        .merge(counter())
        .layer(axum::Extension(labels))
        .layer(axum::Extension(sessions.manager))
        .layer(sessions.main);
    let lossy = counter().layer(sessions.lossy);
    Router::new()
        .merge(visitor)
        .nest(LOSSY_PREFIX, lossy)
        .route("/assets/demo.css", get(stylesheet))
        .route("/assets/experiment.js", get(script))
        .layer(CatchPanicLayer::new())
}

/// The experiment's counter routes, for either session layer.
fn counter() -> Router {
    Router::new()
        .route("/count", get(read_count).post(bump_count))
        .route("/count/reset", post(reset_count))
}

/// `routes` plus `GET /metrics`: every metric recorded through `handle`
/// (cloakroom's lock waits, timeouts, store latencies… — see
/// `cloakroom::telemetry`) in Prometheus text format. The route is outside
/// the session layer: scraping never touches a session.
pub fn with_metrics(routes: Router, handle: PrometheusHandle) -> Router {
    routes.route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    )
}

/// What `/hits` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HitsReport {
    /// The visitor's hit count (0 without a session).
    pub hits: u64,
    /// The logged-in user, if any.
    pub user: Option<String>,
    /// The first characters of the session id, if there is a session.
    pub session: Option<String>,
}

/// What the experiment's counter answers (`/count`, `/lossy/count`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountReport {
    /// The counter's value after this request (0 without a session).
    pub hits: u64,
}

fn prefix(id: &cloakroom::SessionId) -> String {
    id.as_str().chars().take(ID_PREFIX_LEN).collect()
}

/// "1 hit", "5 hits".
pub fn hits_text(hits: u64) -> String {
    if hits == 1 {
        "1 hit".to_owned()
    } else {
        format!("{hits} hits")
    }
}

/// Read, bump and write the counter under `key`. Under `Serialized` the
/// lock taken by the first `get` is held until the layer commits, so the
/// read and the write cannot interleave with another tab's; under `Lossy`
/// they can, and a tab that read during another's `hold` overwrites its
/// update.
async fn bump(session: &Session, key: &str, hold: Duration) -> Result<u64, SessionError> {
    let hits: u64 = session.get(key).await?.unwrap_or(0) + 1;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    session.insert(key, &hits).await?;
    Ok(hits)
}

const PAGE: &str = include_str!("page/index.html");
const STYLESHEET: &str = include_str!("page/demo.css");
const SCRIPT: &str = include_str!("page/experiment.js");

async fn index(
    session: Session,
    axum::Extension(labels): axum::Extension<Arc<PageFacts>>,
) -> Result<Html<String>, SessionError> {
    let hits = bump(&session, "hits", Duration::ZERO).await?;
    let user: Option<String> = session.get("user").await?;
    let id = prefix(&session.id().await?);
    let who = match &user {
        Some(u) => format!(
            "<form method=post action=/logout class=who>logged in as <b id=user-name>{}</b> \
             <button id=logout>log out</button> · <a href=/sessions id=your-sessions>your sessions</a></form>",
            html_escape(u)
        ),
        None => "<form method=post action=/login class=who><label for=user>Your name</label> \
                 <input id=user name=user maxlength=64 autocomplete=username> \
                 <label><input type=checkbox name=remember id=remember> remember me for 30 days</label> \
                 <button id=login>log in</button></form>"
            .to_owned(),
    };
    let page = render(PAGE, |key| match key {
        "hits" => Some(hits_text(hits)),
        "session" => Some(html_escape(&id)),
        "who" => Some(who.clone()),
        "backend" => Some(html_escape(labels.backend)),
        "main_policy" => Some(html_escape(&labels.main_policy)),
        "main_namespace" => Some(html_escape(&labels.main_namespace)),
        "lossy_policy" => Some(html_escape(&labels.lossy_policy)),
        "lossy_namespace" => Some(html_escape(&labels.lossy_namespace)),
        "lossy_prefix" => Some(LOSSY_PREFIX.to_owned()),
        "gap_ms" => Some(COUNT_GAP.as_millis().to_string()),
        _ => None,
    });
    Ok(Html(page))
}

/// Fill `{{name}}` placeholders in one pass: a value is never scanned for
/// further placeholders, so a user name cannot inject one. An unknown name
/// stays as written.
fn render(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        match after.find("}}") {
            Some(close) => {
                let key = &after[..close];
                match value(key) {
                    Some(v) => out.push_str(&v),
                    None => {
                        out.push_str("{{");
                        out.push_str(key);
                        out.push_str("}}");
                    }
                }
                rest = &after[close + 2..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLESHEET,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
}

async fn slow(session: Session) -> Result<String, SessionError> {
    let hits = bump(&session, "hits", SLOW_PAGE).await?;
    Ok(format!("{} (slow page)\n", hits_text(hits)))
}

async fn hits(reader: SessionReader) -> Result<Json<HitsReport>, SessionError> {
    Ok(Json(HitsReport {
        hits: reader.get("hits").await?.unwrap_or(0),
        user: reader.get("user").await?,
        session: reader.id().await?.as_ref().map(prefix),
    }))
}

async fn bump_count(session: Session) -> Result<Json<CountReport>, SessionError> {
    let hits = bump(&session, COUNT_KEY, COUNT_GAP).await?;
    Ok(Json(CountReport { hits }))
}

async fn read_count(reader: SessionReader) -> Result<Json<CountReport>, SessionError> {
    Ok(Json(CountReport {
        hits: reader.get(COUNT_KEY).await?.unwrap_or(0),
    }))
}

/// Start a run from zero. This also creates the session (and sends its
/// cookie) if there is none yet, so the run's concurrent requests all
/// carry one id instead of each making a session of its own.
async fn reset_count(session: Session) -> Result<Json<CountReport>, SessionError> {
    session.insert(COUNT_KEY, &0u64).await?;
    Ok(Json(CountReport { hits: 0 }))
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// Who logs in; any name will do in a demo.
    #[serde(default)]
    pub user: String,
    /// "Remember me": present (any value) when the box is ticked.
    #[serde(default)]
    pub remember: Option<String>,
}

async fn login(session: Session, Form(form): Form<LoginForm>) -> Result<Response, SessionError> {
    let user = form.user.trim();
    let user = if user.is_empty() { "visitor" } else { user };
    let principal = match (user.len() <= 64).then(|| Principal::new(user)) {
        Some(Ok(principal)) => principal,
        _ => {
            return Ok((
                StatusCode::BAD_REQUEST,
                "user names are 1 to 64 printable characters\n",
            )
                .into_response())
        }
    };
    // New privileges, new id: whoever knew the id before login (a planted
    // cookie, a shared computer) learns nothing useful.
    session.cycle_id().await?;
    session.insert("user", user).await?;
    session.set_principal(Some(principal)).await?;
    // Remembered: a 30-day sliding session and a cookie that lasts as
    // long. Otherwise the cookie goes when the browser closes.
    let expiry = match form.remember {
        Some(_) => Expiry::OnInactivity(REMEMBER_FOR),
        None => Expiry::OnBrowserClose,
    };
    session.set_expiry(Some(expiry)).await?;
    Ok(Redirect::to("/").into_response())
}

/// One of the user's sessions, as the sessions page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSession {
    /// The first characters of the SHA-256 of the session's id: enough to
    /// tell sessions apart, useless as a cookie (another device's id is a
    /// credential and is never shown).
    pub label: String,
    /// Whether this is the session making the request.
    pub current: bool,
    /// Creation, last use and expiry, in milliseconds since the epoch.
    pub created: i64,
    /// Last use.
    pub accessed: i64,
    /// Expiry.
    pub expires: i64,
}

/// The logged-in user's sessions on every device, oldest first; `None`
/// when nobody is logged in.
async fn devices(session: &Session, manager: &Manager) -> Result<Option<Vec<DeviceSession>>, SessionError> {
    let Some(principal) = session.principal().await? else {
        return Ok(None);
    };
    let current = manager.key(&session.id().await?).id;
    let listed = manager.sessions_of(&principal).await?;
    Ok(Some(
        listed
            .into_iter()
            .map(|s: SessionSummary| DeviceSession {
                label: s.label(),
                current: s.id == current,
                created: s.created.as_millis(),
                accessed: s.accessed.as_millis(),
                expires: s.expires.as_millis(),
            })
            .collect(),
    ))
}

async fn sessions_json(
    session: Session,
    axum::Extension(manager): axum::Extension<Manager>,
) -> Result<Response, SessionError> {
    Ok(match devices(&session, &manager).await? {
        Some(list) => Json(list).into_response(),
        None => (StatusCode::UNAUTHORIZED, "not logged in\n").into_response(),
    })
}

async fn sessions_page(
    session: Session,
    axum::Extension(manager): axum::Extension<Manager>,
) -> Result<Response, SessionError> {
    let Some(list) = devices(&session, &manager).await? else {
        return Ok(Redirect::to("/").into_response());
    };
    let now = Timestamp::now().as_millis();
    let rows: String = list
        .iter()
        .map(|d| {
            format!(
                "<tr{}><td><code>{}…</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                if d.current { " class=current" } else { "" },
                html_escape(&d.label),
                if d.current { " (this browser)" } else { "" },
                ago(now - d.created),
                ago(now - d.accessed),
                ahead(d.expires - now),
            )
        })
        .collect();
    let others = list.iter().filter(|d| !d.current).count();
    let page = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><title>your sessions</title>\
         <link rel=stylesheet href=/assets/demo.css><h1>Your sessions</h1>\
         <table id=sessions><tr><th>session</th><th>created</th><th>last used</th><th>expires</th></tr>{rows}</table>\
         <form method=post action=/sessions/revoke-others><button id=revoke-others{}>log out everywhere else ({others})</button></form>\
         <p><a href=/>back</a></p>",
        if others == 0 { " disabled" } else { "" },
    );
    Ok(Html(page).into_response())
}

async fn revoke_others(
    session: Session,
    axum::Extension(manager): axum::Extension<Manager>,
) -> Result<Response, SessionError> {
    let Some(principal) = session.principal().await? else {
        return Ok((StatusCode::UNAUTHORIZED, "not logged in\n").into_response());
    };
    let here = session.id().await?;
    // This request holds its own session's lock; `except` spares it, and
    // every other session is deleted under its own lock.
    manager.revoke_all(&principal, Some(&here)).await?;
    Ok(Redirect::to("/sessions").into_response())
}

/// "3 min ago".
fn ago(ms: i64) -> String {
    format!("{} ago", span(ms))
}

/// "in 29 days".
fn ahead(ms: i64) -> String {
    format!("in {}", span(ms))
}

fn span(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

async fn logout(session: Session) -> Result<Redirect, SessionError> {
    session.delete().await?;
    Ok(Redirect::to("/"))
}

async fn panic_holding_session(session: Session) -> Result<String, SessionError> {
    session.insert("half-done", &true).await?;
    panic!("the /panic route panics on purpose, holding the session lock");
}

async fn health() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n")
}

fn html_escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_literals_are_valid() {
        assert_eq!(namespace().as_str(), "demo");
        assert_eq!(lossy_namespace().as_str(), "demo-lossy");
    }

    #[test]
    fn hits_are_pluralised() {
        assert_eq!(hits_text(0), "0 hits");
        assert_eq!(hits_text(1), "1 hit");
        assert_eq!(hits_text(5), "5 hits");
    }

    #[test]
    fn placeholders_are_filled_once() {
        let value = |key: &str| match key {
            "user" => Some("{{secret}}".to_owned()),
            "secret" => Some("leaked".to_owned()),
            _ => None,
        };
        assert_eq!(render("hi {{user}}!", value), "hi {{secret}}!");
        assert_eq!(render("{{unknown}} {{", value), "{{unknown}} {{");
        assert_eq!(render("no placeholders", value), "no placeholders");
    }

    #[test]
    fn the_page_has_no_unfilled_placeholder() {
        let keys = [
            "hits",
            "session",
            "who",
            "backend",
            "main_policy",
            "main_namespace",
            "lossy_policy",
            "lossy_namespace",
            "lossy_prefix",
            "gap_ms",
        ];
        let page = render(PAGE, |key| keys.contains(&key).then(|| "x".to_owned()));
        assert!(!page.contains("{{"), "{page}");
    }

    #[test]
    fn user_names_are_escaped() {
        assert_eq!(html_escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
