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
///   response goes out unchanged; an optimistic conflict (another request
///   saved the session first, under `Policy::Optimistic`) turns the
///   response into a `409 Conflict`, or runs a safe request again with
///   [`retry_conflicts`](SessionLayer::retry_conflicts); any other commit
///   failure turns the response into a `500` (`503` if the store is
///   unavailable), since the page may announce a change that was not saved;
/// - a handler that finished the session itself
///   ([`Session::commit_now`](crate::Session::commit_now),
///   [`Session::rollback`](crate::Session::rollback)) gets no second
///   commit; the id is still sent for a session its early commit created.
///
/// The cookie's `Max-Age` is the session's stored expiry minus now: the
/// manager's timeouts, or the session's own
/// [`Expiry`](cloakroom_core::Expiry) ("remember me"); a session set to
/// `Expiry::OnBrowserClose` gets a cookie without `Max-Age`.
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

    /// Run the handler again, up to `retries` more times, when the session's
    /// commit fails with an optimistic [`Error::Conflict`](cloakroom_core::Error::Conflict)
    /// (another request saved the same session between this one's load and
    /// its commit, under `Policy::Optimistic`); without it such a request
    /// answers `409 Conflict`.
    ///
    /// Only requests that can be replayed are retried: `GET`, `HEAD` and
    /// `OPTIONS` with no body (no `Content-Length` above 0, no
    /// `Transfer-Encoding`), see [`cloakroom_http::replayable`]. Request
    /// bodies are streamed to the handler, not buffered, so one that was
    /// read cannot be read again; and unsafe methods may have done other
    /// things than change the session, which must not happen twice. Each run
    /// gets a fresh session (reloaded, with the other request's save) and
    /// the request's parts as they reached this layer, with an empty body;
    /// the responses of the runs that conflicted are dropped unsent. When
    /// the retries run out the answer is the `409`.
    ///
    /// This makes the layer a [`RetryingSessionLayer`]: call it last, after
    /// the other settings. Its service needs a request body type with a
    /// `Default` (an empty body), as axum's [`Body`] has.
    pub fn retry_conflicts(self, retries: u32) -> RetryingSessionLayer {
        RetryingSessionLayer { layer: self, retries }
    }
}

/// A [`SessionLayer`] that runs safe requests again on an optimistic
/// conflict at commit; made by [`SessionLayer::retry_conflicts`].
#[derive(Clone, Debug)]
pub struct RetryingSessionLayer {
    layer: SessionLayer,
    retries: u32,
}

impl<S> Layer<S> for RetryingSessionLayer {
    type Service = RetryingSessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RetryingSessionService {
            service: self.layer.layer(inner),
            retries: self.retries,
        }
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

impl<S> SessionService<S> {
    /// The inner service that was polled ready, for this call (tower's rule),
    /// leaving a clone in its place for the next.
    fn take_ready(&mut self) -> S
    where
        S: Clone,
    {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

/// One run of the inner service under a session scope of its own: the
/// response to send, and whether the session's commit conflicted.
async fn run_once<S, ReqBody, ResBody>(
    inner: &mut S,
    manager: Manager,
    config: &LayerConfig,
    mut request: Request<ReqBody>,
) -> Result<(Response, bool), S::Error>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    // Parsing the offered id is all the work a request pays for up front:
    // no store call and no lock until a handler asks.
    let scope = Scope::new(manager, &config.http, request.headers());
    request.extensions_mut().insert(scope.session());
    // Dropped unfinished if this future is (panic, client gone): the open
    // session is released and nothing is written.
    let mut response = inner.call(request).await?.map(Body::new);
    if let Some(LockTimedOut(waited)) = response.extensions().get::<LockTimedOut>().copied() {
        response = (config.on_lock_timeout)(waited);
    }
    let finish = scope.finish(response.status(), &config.http).await;
    if let Some(reply) = finish.replace {
        return Ok((reply.into_http::<Body>(), finish.conflict));
    }
    for header in finish.headers {
        header.apply(response.headers_mut());
    }
    Ok((response, finish.conflict))
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

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let mut inner = self.take_ready();
        let (manager, config) = (self.manager.clone(), Arc::clone(&self.config));
        Box::pin(async move {
            let (response, _) = run_once(&mut inner, manager, &config, request).await?;
            Ok(response)
        })
    }
}

/// The service made by [`RetryingSessionLayer`]: a [`SessionService`] that
/// runs replayable requests again on a conflict at commit.
#[derive(Clone, Debug)]
pub struct RetryingSessionService<S> {
    service: SessionService<S>,
    retries: u32,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RetryingSessionService<S>
where
    S: Service<Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Default + Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.service.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let replayable = cloakroom_http::replayable(request.method().as_str(), request.headers());
        if !replayable || self.retries == 0 {
            return self.service.call(request);
        }
        let mut retries = self.retries;
        let mut inner = self.service.take_ready();
        let (manager, config) = (self.service.manager.clone(), Arc::clone(&self.service.config));
        Box::pin(async move {
            // Kept before this layer adds its session, so each run starts
            // from the request as it arrived.
            let (parts, body) = request.into_parts();
            let mut request = Request::from_parts(parts.clone(), body);
            loop {
                let (response, conflict) = run_once(&mut inner, manager.clone(), &config, request).await?;
                if !conflict || retries == 0 {
                    return Ok(response);
                }
                retries -= 1;
                tracing::debug!(
                    method = %parts.method,
                    path = parts.uri.path(),
                    "session commit conflicted; running the request again"
                );
                drop(response);
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                request = Request::from_parts(parts.clone(), ReqBody::default());
            }
        })
    }
}
