//! How the session id travels between browser and server, and what the layer
//! answers when a session stays locked too long.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use cookie::SameSite;
use http::{header, HeaderName, HeaderValue, StatusCode};

/// Where the session id is read from and written to.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdCarrier {
    /// A cookie (the default), see [`CookieConfig`].
    Cookie,
    /// A request header for clients without cookies (API clients, apps). The
    /// response carries the id in the same header whenever the session is
    /// live at the end of the request; a deleted session gets no header.
    Header(HeaderName),
}

/// How long the browser keeps the cookie.
///
/// The server-side lifetime always comes from the [`Manager`](cloakroom_core::Manager)'s
/// `idle_timeout` and `absolute_timeout`; this only decides what the cookie says.
///
/// | expiry mode | manager | cookie |
/// |---|---|---|
/// | idle | `idle_timeout` | `Persistent`: Max-Age slides on every request that uses the session |
/// | absolute | `absolute_timeout` | `Persistent`: Max-Age counts down to the absolute deadline |
/// | browser session | either | `BrowserSession`: no Max-Age, gone when the browser closes |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieLifetime {
    /// `Max-Age` set to the session's remaining life each time the session is
    /// used, so the cookie never outlives the server-side record by much.
    #[default]
    Persistent,
    /// No `Max-Age` or `Expires`: the browser drops the cookie when it closes.
    /// The server-side timeouts still apply.
    BrowserSession,
}

/// Attributes of the session cookie. Defaults are the secure ones:
/// `HttpOnly`, `Secure`, `SameSite=Lax`, `Path=/`, no `Domain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CookieConfig {
    /// Cookie name (default `id`: a name that says nothing about the stack).
    pub name: String,
    /// `Path` attribute.
    pub path: String,
    /// `Domain` attribute; `None` keeps the cookie to the exact host.
    pub domain: Option<String>,
    /// `Secure`: sent over HTTPS only (browsers also accept it on `localhost`).
    pub secure: bool,
    /// `HttpOnly`: hidden from JavaScript.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Max-Age` behaviour.
    pub lifetime: CookieLifetime,
}

impl Default for CookieConfig {
    fn default() -> Self {
        CookieConfig {
            name: "id".into(),
            path: "/".into(),
            domain: None,
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            lifetime: CookieLifetime::Persistent,
        }
    }
}

/// Builds the response for a request whose session lock was not acquired in
/// time; gets how long the request waited.
pub type LockTimeoutResponder = Arc<dyn Fn(Duration) -> Response + Send + Sync>;

/// The default answer to a lock timeout: `503 Service Unavailable` with
/// `Retry-After: 1`, because the holder is most likely a slow request of the
/// same visitor that will be done soon.
pub fn default_lock_timeout_response(_waited: Duration) -> Response {
    let mut response = Response::new(Body::from("session busy, retry shortly\n"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Everything the layer needs besides the manager.
#[derive(Clone)]
pub(crate) struct LayerConfig {
    pub(crate) carrier: IdCarrier,
    pub(crate) cookie: CookieConfig,
    pub(crate) on_lock_timeout: LockTimeoutResponder,
}

impl Default for LayerConfig {
    fn default() -> Self {
        LayerConfig {
            carrier: IdCarrier::Cookie,
            cookie: CookieConfig::default(),
            on_lock_timeout: Arc::new(default_lock_timeout_response),
        }
    }
}

impl fmt::Debug for LayerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerConfig")
            .field("carrier", &self.carrier)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}
