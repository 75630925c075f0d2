//! The hit-counter demo of cloakroom, a news site's story: a visitor opens
//! five or six stories in tabs at once, some pages slow, and every hit must
//! count.
//!
//! | route | session use |
//! |---|---|
//! | `GET /` | counts a hit (locks the visitor's session), shows count and id prefix |
//! | `GET /slow` | reads the count, sleeps 300 ms holding the lock, writes count + 1 |
//! | `GET /hits` | JSON `{hits, user, session}`, read-only: never locks, never writes |
//! | `POST /login` | cycles the session id (fixation defence), remembers a user name |
//! | `POST /logout` | deletes the session and clears the cookie |
//! | `GET /panic` | changes the session, then panics: nothing saved, lock released |
//! | `GET /health` | never touches the session: no store call at all |
//! | `GET /metrics` | cloakroom's metrics in Prometheus text (see [`with_metrics`]); no session |
#![warn(clippy::unwrap_used)]

use std::time::Duration;

use axum::extract::Form;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cloakroom::{Manager, Namespace, SessionStore};
use cloakroom_tower::{LazySession, SessionError, SessionLayer, SessionReader};
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

/// How many characters of the id the pages show: enough to tell sessions
/// apart, too few to steal one (the id is a bearer credential).
pub const ID_PREFIX_LEN: usize = 8;

/// The demo's namespace in the store.
pub fn namespace() -> Namespace {
    match Namespace::new("demo") {
        Ok(ns) => ns,
        // A literal that the strict parse accepts; checked by a test.
        Err(e) => panic!("the demo namespace is invalid: {e}"),
    }
}

/// The demo's manager over `store`, with the default `Serialized` policy.
pub fn manager(store: std::sync::Arc<dyn SessionStore>) -> cloakroom::Result<Manager> {
    Manager::new(store, namespace())
}

/// The demo's routes behind `layer`.
///
/// The panic catcher sits *outside* the session layer: a panic unwinds
/// through the session layer first (dropping the open session, which
/// releases its lock and writes nothing), and only then becomes a `500`.
pub fn app(layer: SessionLayer) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/slow", get(slow))
        .route("/hits", get(hits))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/panic", get(panic_holding_session))
        .route("/health", get(health))
        .layer(layer)
        .layer(CatchPanicLayer::new())
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

fn prefix(id: &cloakroom::SessionId) -> String {
    id.as_str().chars().take(ID_PREFIX_LEN).collect()
}

/// Read, bump and write the hit counter. The lock taken by the first `get`
/// is held until the layer commits, so the read and the write cannot
/// interleave with another tab's.
async fn count_hit(session: &LazySession, hold: Duration) -> Result<u64, SessionError> {
    let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    session.insert("hits", &hits).await?;
    Ok(hits)
}

async fn index(session: LazySession) -> Result<Html<String>, SessionError> {
    let hits = count_hit(&session, Duration::ZERO).await?;
    let user: Option<String> = session.get("user").await?;
    let id = prefix(&session.id().await?);
    let who = match &user {
        Some(u) => format!(
            "logged in as <b>{}</b> <form method=post action=/logout><button>log out</button></form>",
            html_escape(u)
        ),
        None => "<form method=post action=/login><input name=user placeholder=name> \
                 <button>log in</button></form>"
            .to_owned(),
    };
    Ok(Html(format!(
        "<!doctype html><title>cloakroom demo</title>\
         <h1>{hits} hits</h1><p>session <code>{id}…</code></p><p>{who}</p>\
         <p><a href=/>again</a> · <a href=/slow>slow page</a> · <a href=/hits>json</a></p>"
    )))
}

async fn slow(session: LazySession) -> Result<String, SessionError> {
    let hits = count_hit(&session, SLOW_PAGE).await?;
    Ok(format!("{hits} hits (slow page)\n"))
}

async fn hits(reader: SessionReader) -> Result<Json<HitsReport>, SessionError> {
    Ok(Json(HitsReport {
        hits: reader.get("hits").await?.unwrap_or(0),
        user: reader.get("user").await?,
        session: reader.id().await?.as_ref().map(prefix),
    }))
}

/// The login form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    /// Who logs in; any name will do in a demo.
    #[serde(default)]
    pub user: String,
}

async fn login(session: LazySession, Form(form): Form<LoginForm>) -> Result<Response, SessionError> {
    let user = form.user.trim();
    let user = if user.is_empty() { "visitor" } else { user };
    if user.len() > 64 {
        return Ok((StatusCode::BAD_REQUEST, "user name too long\n").into_response());
    }
    // New privileges, new id: whoever knew the id before login (a planted
    // cookie, a shared computer) learns nothing useful.
    session.cycle_id().await?;
    session.insert("user", user).await?;
    Ok(Redirect::to("/").into_response())
}

async fn logout(session: LazySession) -> Result<Redirect, SessionError> {
    session.delete().await?;
    Ok(Redirect::to("/"))
}

async fn panic_holding_session(session: LazySession) -> Result<String, SessionError> {
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
    fn namespace_literal_is_valid() {
        assert_eq!(namespace().as_str(), "demo");
    }

    #[test]
    fn user_names_are_escaped() {
        assert_eq!(html_escape("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }
}
