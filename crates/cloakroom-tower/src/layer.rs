//! The tower [`Layer`] and [`Service`]: put a lazy session into every
//! request, and finish it — commit, cookie, unlock — when the response is
//! ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use cloakroom_core::Manager;
use cloakroom_http::{HttpConfig, IdCarrier, Scope};
use http::{HeaderName, Request};
use tower_layer::Layer;
use tower_service::Service;

use crate::config::LayerConfig;
use crate::error::LockTimedOut;

/// Adds a lazily opened cloakroom session to every request.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use cloakroom_tower::{Session, SessionError, SessionLayer};
///
/// async fn hits(session: Session) -> Result<String, SessionError> {
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
///   [`CookieLifetime::Persistent`](crate::CookieLifetime) cookie, each time
///   the stored expiry moves, to slide Max-Age), or told to forget it after
///   a logout or when its id named no session;
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
/// longer than the manager's `lock_wait` — surfaces as a
/// [`SessionError`](crate::SessionError); a handler that returns it gets the
/// response set by [`on_lock_timeout`](SessionLayer::on_lock_timeout), by
/// default `503` with `Retry-After: 1`.
///
/// These rules are [`cloakroom_http::Scope::finish`]'s, shared with the
/// actix-web integration.
#[derive(Clone, Debug)]
pub struct SessionLayer {
    manager: Manager,
    config: Arc<LayerConfig>,
}

impl SessionLayer {
    /// A layer over `manager` with the secure cookie defaults of
    /// [`CookieConfig`](crate::CookieConfig).
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

    fn edit_http(self, f: impl FnOnce(&mut HttpConfig)) -> Self {
        self.edit(|c| f(&mut c.http))
    }

    cloakroom_http::cookie_setters!();

    /// Carry the id in this header instead of a cookie, for clients without
    /// cookies. The response sets the same header while the session lives.
    pub fn id_header(self, name: HeaderName) -> Self {
        self.edit_http(|c| c.carrier = IdCarrier::Header(name))
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
        let scope = Scope::new(self.manager.clone(), &self.config.http, request.headers());
        request.extensions_mut().insert(scope.session());
        let config = Arc::clone(&self.config);
        // The clone that was polled ready is the one to call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            // Dropped unfinished if this future is (panic, client gone):
            // the open session is released and nothing is written.
            let scope = scope;
            let mut response = inner.call(request).await?.map(Body::new);
            if let Some(LockTimedOut(waited)) = response.extensions().get::<LockTimedOut>().copied() {
                response = (config.on_lock_timeout)(waited);
            }
            let finish = scope.finish(response.status(), &config.http).await;
            if let Some(reply) = finish.replace {
                return Ok(reply.into_http::<Body>());
            }
            for header in finish.headers {
                header.apply(response.headers_mut());
            }
            Ok(response)
        })
    }
}
