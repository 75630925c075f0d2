//! How the session id travels between browser and server.

use cookie::SameSite;
use http::HeaderName;

/// Where the session id is read from and written to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdCarrier {
    /// A cookie (the default), see [`CookieConfig`].
    #[default]
    Cookie,
    /// A request header for clients without cookies (API clients, apps). The
    /// response carries the id in the same header whenever the session is
    /// live at the end of the request; a deleted session gets no header.
    Header(HeaderName),
}

/// How long the browser keeps the cookie, for sessions without an expiry of
/// their own.
///
/// The server-side lifetime always comes from the [`Manager`](cloakroom_core::Manager)'s
/// `idle_timeout` and `absolute_timeout`, or from the session's own
/// [`Expiry`](cloakroom_core::Expiry); this only decides what the cookie says.
///
/// | session's expiry | manager | cookie |
/// |---|---|---|
/// | none | `idle_timeout` | `Persistent`: Max-Age slides on every request that moves the stored expiry |
/// | none | `absolute_timeout` | `Persistent`: Max-Age counts down to the absolute deadline |
/// | none | either | `BrowserSession`: no Max-Age, gone when the browser closes |
/// | `OnInactivity(d)` ("remember me") or `AtInstant(t)` | capped by `absolute_timeout` | always persistent: Max-Age is the stored expiry minus now, whatever this setting |
/// | `OnBrowserClose` | `idle_timeout` | never persistent: no Max-Age or Expires, whatever this setting |
///
/// A session's own expiry wins because it is a decision about that one
/// session ("remember me" ticked, or not): an application whose cookies are
/// browser-session cookies by default still gets a lasting cookie for the
/// session it was asked to remember.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieLifetime {
    /// `Max-Age` set to the session's remaining life each time the stored
    /// expiry moves, so the cookie never outlives the server-side record by
    /// much.
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

/// Everything about the id's transport that an integration is configured
/// with: the carrier, and the cookie's attributes when it is a cookie.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    /// Cookie (default) or header.
    pub carrier: IdCarrier,
    /// The cookie's name and attributes (unused with a header carrier).
    pub cookie: CookieConfig,
}
