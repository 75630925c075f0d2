//! The tower [`Layer`] and [`Service`]: put a lazy session into every
//! request, and finish it — commit, cookie, unlock — when the response is
//! ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cloakroom_core::{Error, Manager, Timestamp};
use cookie::SameSite;
use http::{HeaderName, Request, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::{CookieConfig, CookieLifetime, IdCarrier, LayerConfig};
use crate::error::{status_response, LockTimedOut, SessionError};
use crate::extract::{RequestSession, State};
use crate::id_carrier::{clear_id, offered_id, write_id};

/// Adds a lazily opened cloakroom session to every request.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use cloakroom_tower::{LazySession, SessionError, SessionLayer};
///
/// async fn hits(session: LazySession) -> Result<String, SessionError> {
///     // The first access takes this visitor's session lock...
///     let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
///     session.insert("hits", &hits).await?;
///     Ok(format!("{hits} hits"))
///     // ...and the layer saves and unlocks after the handler returns.
/// }
///
/// # async fn run(manager: cloakroom_core::Manager) {
/// let app: Router = Router::new()
///     .route("/", get(hits))
///     .layer(SessionLayer::new(manager));
/// # }
/// ```
///
/// At the end of a request whose handler used the session:
/// - a `5xx` response rolls the session back (the handler failed; its
///   half-made changes are not saved) and releases the lock;
/// - otherwise the session is committed: saved if changed, touched if only
///   its expiry is due to slide (at most once per the manager's
///   `touch_interval`), nothing else — and unlocked in every case;
/// - the client is sent its id when it is new or changed (and, for a
///   [`CookieLifetime::Persistent`] cookie, each time, to slide Max-Age), or
///   told to forget it after a logout or when its id named no session;
/// - if the session was deleted meanwhile (logged out from another tab or
///   by an administrator), the save is dropped, the cookie cleared, and the
///   response goes out unchanged; any other commit failure turns the
///   response into a `500` (`503` if the store is unavailable), since the
///   page may announce a change that was not saved.
///
/// The commit runs on its own task, so a client that disconnects after the
/// handler finished cannot cut it short. If the handler panics or the
/// request is dropped before that, the session is dropped unfinished: nothing
/// is written and the lock is released at once (or by its lease if even the
/// release fails, e.g. the store is unreachable).
///
/// A lock timeout — another request of the same visitor held the session
/// longer than the manager's `lock_wait` — surfaces as a [`SessionError`];
/// a handler that returns it gets the response set by
/// [`on_lock_timeout`](SessionLayer::on_lock_timeout), by default `503` with
/// `Retry-After: 1`.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: Manager,
    config: Arc<LayerConfig>,
}

impl SessionLayer {
    /// A layer over `manager` with the secure cookie defaults of [`CookieConfig`].
    pub fn new(manager: Manager) -> Self {
        SessionLayer {
            manager,
            config: Arc::new(LayerConfig::default()),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut LayerConfig)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Replace every cookie attribute at once.
    pub fn cookie(self, cookie: CookieConfig) -> Self {
        self.edit(|c| c.cookie = cookie)
    }

    /// The cookie's name (default `id`).
    pub fn cookie_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.edit(|c| c.cookie.name = name)
    }

    /// The cookie's `Path` (default `/`).
    pub fn cookie_path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.edit(|c| c.cookie.path = path)
    }

    /// The cookie's `Domain` (default none: this host only).
    pub fn cookie_domain(self, domain: impl Into<String>) -> Self {
        let domain = domain.into();
        self.edit(|c| c.cookie.domain = Some(domain))
    }

    /// The cookie's `Secure` flag (default on). Turn it off only for plain
    /// HTTP on a host other than `localhost`.
    pub fn secure(self, on: bool) -> Self {
        self.edit(|c| c.cookie.secure = on)
    }

    /// The cookie's `HttpOnly` flag (default on).
    pub fn http_only(self, on: bool) -> Self {
        self.edit(|c| c.cookie.http_only = on)
    }

    /// The cookie's `SameSite` (default `Lax`).
    pub fn same_site(self, same_site: SameSite) -> Self {
        self.edit(|c| c.cookie.same_site = same_site)
    }

    /// Persistent (default) or browser-session cookie; see [`CookieLifetime`].
    pub fn cookie_lifetime(self, lifetime: CookieLifetime) -> Self {
        self.edit(|c| c.cookie.lifetime = lifetime)
    }

    /// Carry the id in this header instead of a cookie, for clients without
    /// cookies. The response sets the same header while the session lives.
    pub fn id_header(self, name: HeaderName) -> Self {
        self.edit(|c| c.carrier = IdCarrier::Header(name))
    }

    /// The response to a lock timeout, given how long the request waited.
    /// Default: [`default_lock_timeout_response`](crate::default_lock_timeout_response).
    pub fn on_lock_timeout(self, f: impl Fn(Duration) -> Response + Send + Sync + 'static) -> Self {
        let f = Arc::new(f);
        self.edit(|c| c.on_lock_timeout = f)
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService {
            inner,
            manager: self.manager.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`SessionLayer`].
#[derive(Clone, Debug)]
pub struct SessionService<S> {
    inner: S,
    manager: Manager,
    config: Arc<LayerConfig>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        // Parsing the offered id is all the work a request pays for up
        // front: no store call and no lock until a handler asks.
        let offered = offered_id(request.headers(), &self.config);
        let session = Arc::new(RequestSession::new(self.manager.clone(), offered));
        request.extensions_mut().insert(Arc::clone(&session));
        let config = Arc::clone(&self.config);
        // The clone that was polled ready is the one to call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?.map(Body::new);
            Ok(finish(&session, response, &config).await)
        })
    }
}

async fn finish(session: &RequestSession, mut response: Response, config: &LayerConfig) -> Response {
    if let Some(LockTimedOut(waited)) = response.extensions().get::<LockTimedOut>().copied() {
        response = (config.on_lock_timeout)(waited);
    }
    let State { open, deleted } = session.finish().await;
    let Some(open) = open else {
        if deleted {
            clear_id(response.headers_mut(), config);
        }
        return response;
    };
    if response.status().is_server_error() {
        if let Err(e) = open.rollback().await {
            tracing::warn!(error = %e, "session rollback after a failed handler");
        }
        return response;
    }

    let id = open.id().clone();
    let remaining = Duration::from_millis(
        u64::try_from(open.expires().as_millis() - Timestamp::now().as_millis()).unwrap_or(0),
    );
    let id_changed = session.offered.id() != Some(&id);

    // Its own task: once the handler is done, a disconnecting client must
    // not cut the save short between the write and the unlock.
    match tokio::spawn(open.commit()).await {
        // A fresh session that holds nothing is never stored (no row for
        // visitors who only look), so there is no id to hand out either.
        Ok(Ok(done)) if done.is_stored() => {
            // A persistent cookie's Max-Age follows the stored expiry, so it
            // is re-sent only when the commit moved that expiry.
            let refresh = config.carrier != IdCarrier::Cookie
                || (config.cookie.lifetime == CookieLifetime::Persistent && done.expiry_moved());
            if id_changed || refresh {
                write_id(response.headers_mut(), config, &id, remaining);
            }
        }
        Ok(Ok(_)) => {
            if deleted || session.offered.is_something() {
                // The offered id named no session (or was logged out): stop
                // sending it.
                clear_id(response.headers_mut(), config);
            }
        }
        Ok(Err(Error::Gone)) => {
            tracing::info!(session = ?id, "session was deleted meanwhile; its save was dropped");
            clear_id(response.headers_mut(), config);
        }
        Ok(Err(e)) => {
            tracing::error!(session = ?id, error = %e, "session commit failed");
            response = SessionError::from(e).into_response();
        }
        Err(e) => {
            tracing::error!(session = ?id, error = %e, "session commit task failed");
            response = status_response(StatusCode::INTERNAL_SERVER_ERROR, false);
        }
    }
    response
}
