//! The actix-web middleware: put a lazy session into every request, and
//! finish it — commit, cookie, unlock — when the response is ready.

use std::fmt;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::{HttpMessage, HttpResponse};
use cloakroom_core::Manager;
use cloakroom_http::{HeaderWrite, HttpConfig, IdCarrier, Reply, RequestHeaders, Scope};

use crate::error::{response, SessionError};

/// Builds the response for a request whose session lock was not acquired in
/// time; gets how long the request waited.
pub type LockTimeoutResponder = Arc<dyn Fn(Duration) -> HttpResponse + Send + Sync>;

/// The default answer to a lock timeout: `503 Service Unavailable` with
/// `Retry-After: 1`, because the holder is most likely a slow request of the
/// same visitor that will be done soon.
pub fn default_lock_timeout_response(waited: Duration) -> HttpResponse {
    response(Reply::lock_timeout(waited))
}

#[derive(Clone)]
struct Config {
    http: HttpConfig,
    on_lock_timeout: LockTimeoutResponder,
    retry_conflicts: u32,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("retry_conflicts", &self.retry_conflicts)
            .finish_non_exhaustive()
    }
}

/// Adds a lazily opened cloakroom session to every request.
///
/// ```no_run
/// use actix_web::{web, App, HttpServer};
/// use cloakroom_actix::{Session, SessionError, SessionMiddleware};
///
/// async fn hits(session: Session) -> Result<String, SessionError> {
///     // The first access takes this visitor's session lock...
///     let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
///     session.insert("hits", &hits).await?;
///     Ok(format!("{hits} hits"))
///     // ...and the middleware saves and unlocks after the handler returns.
/// }
///
/// # async fn run(manager: cloakroom_core::Manager) -> std::io::Result<()> {
/// HttpServer::new(move || {
///     App::new()
///         .wrap(SessionMiddleware::new(manager.clone()))
///         .route("/", web::get().to(hits))
/// })
/// .h1_allow_half_closed(false)
/// .bind("127.0.0.1:8080")?
/// .run()
/// .await
/// # }
/// ```
///
/// At the end of a request whose handler used the session:
/// - a `5xx` response rolls the session back (the handler failed; its
///   half-made changes are not saved) and releases the lock;
/// - otherwise the session is committed before the response is sent:
///   saved if changed, touched if only its expiry is due to slide (at most
///   once per the manager's `touch_interval`), nothing else — and unlocked
///   in every case;
/// - the client is sent its id when it is new or changed (and, for a
///   [`CookieLifetime::Persistent`](crate::CookieLifetime) cookie, each time
///   the stored expiry moves, to slide Max-Age), or told to forget it after
///   a logout or when its id named no session;
/// - if the session was deleted meanwhile (logged out from another tab or
///   by an administrator), the save is dropped, the cookie cleared, and the
///   response goes out unchanged; an optimistic conflict (another request
///   saved the session first, under `Policy::Optimistic`) turns the
///   response into a `409 Conflict`, or runs a safe request again with
///   [`retry_conflicts`](SessionMiddleware::retry_conflicts); any other
///   commit failure turns the response into a `500` (`503` if the store is
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
/// request is dropped before that, the session is dropped unfinished:
/// nothing is written and the lock is released at once (see the crate docs
/// on `h1_allow_half_closed` for clients that go away).
///
/// A lock timeout — another request of the same visitor held the session
/// longer than the manager's `lock_wait` — surfaces as a
/// [`SessionError`]; a handler that returns it gets the response set by
/// [`on_lock_timeout`](SessionMiddleware::on_lock_timeout), by default `503`
/// with `Retry-After: 1`.
///
/// These rules are [`cloakroom_http::Scope::finish`]'s, shared with the
/// tower integration.
#[derive(Clone, Debug)]
pub struct SessionMiddleware {
    manager: Manager,
    config: Arc<Config>,
}

impl SessionMiddleware {
    /// A middleware over `manager` with the secure cookie defaults of
    /// [`CookieConfig`](crate::CookieConfig).
    pub fn new(manager: Manager) -> Self {
        SessionMiddleware {
            manager,
            config: Arc::new(Config {
                http: HttpConfig::default(),
                on_lock_timeout: Arc::new(default_lock_timeout_response),
                retry_conflicts: 0,
            }),
        }
    }

    fn edit(mut self, f: impl FnOnce(&mut Config)) -> Self {
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
        // Both are valid header names; only the `http` crate versions differ.
        match cloakroom_http::http::HeaderName::from_bytes(name.as_str().as_bytes()) {
            Ok(name) => self.edit_http(|c| c.carrier = IdCarrier::Header(name)),
            Err(_) => unreachable!("a header name is a header name"),
        }
    }

    /// The response to a lock timeout, given how long the request waited.
    /// Default: [`default_lock_timeout_response`].
    pub fn on_lock_timeout(self, f: impl Fn(Duration) -> HttpResponse + Send + Sync + 'static) -> Self {
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
    /// `Transfer-Encoding`), see [`cloakroom_http::replayable`]. Payloads
    /// are streamed to the handler, not buffered, so one that was read
    /// cannot be read again; and unsafe methods may have done other things
    /// than change the session, which must not happen twice. Each run gets a
    /// fresh session (reloaded, with the other request's save); the
    /// responses of the runs that conflicted are dropped unsent. When the
    /// retries run out the answer is the `409`.
    ///
    /// actix-web has no way to build a request anew inside a middleware, so
    /// a run again goes through the app's routing with the same
    /// `HttpRequest` (its match information reset). What that implies:
    /// request extensions added on an earlier run, by the handler or by
    /// middleware inside this one, are still there on the next; and a
    /// handler must not keep a clone of its `HttpRequest` alive after it
    /// returned (in a task it spawned), since actix-web's routing panics on
    /// a shared request. Leave this off (the default) where either matters.
    pub fn retry_conflicts(self, retries: u32) -> Self {
        self.edit(|c| c.retry_conflicts = retries)
    }
}

impl<S, B> Transform<S, ServiceRequest> for SessionMiddleware
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = SessionService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(SessionService {
            inner: Rc::new(service),
            manager: self.manager.clone(),
            config: Arc::clone(&self.config),
        }))
    }
}

/// The service made by [`SessionMiddleware`].
pub struct SessionService<S> {
    inner: Rc<S>,
    manager: Manager,
    config: Arc<Config>,
}

impl<S> fmt::Debug for SessionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionService")
            .field("manager", &self.manager)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// actix-web's header map, read the way the shared code reads headers.
struct Headers<'a>(&'a HeaderMap);

impl RequestHeaders for Headers<'_> {
    fn values<'a>(&'a self, name: &cloakroom_http::http::HeaderName) -> impl Iterator<Item = &'a [u8]> {
        self.0.get_all(name.as_str()).map(HeaderValue::as_bytes)
    }
}

fn apply(header: HeaderWrite, headers: &mut HeaderMap) {
    // Both are valid already; only the `http` crate versions differ.
    let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(header.name.as_str().as_bytes()),
        HeaderValue::from_bytes(header.value.as_bytes()),
    ) else {
        return;
    };
    if header.append {
        headers.append(name, value);
    } else {
        headers.insert(name, value);
    }
}

type Output<B> = Result<ServiceResponse<EitherBody<B>>, actix_web::Error>;

impl<S, B> Service<ServiceRequest> for SessionService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Output<B>>>>;

    forward_ready!(inner);

    fn call(&self, request: ServiceRequest) -> Self::Future {
        let retries = match cloakroom_http::replayable(request.method().as_str(), &Headers(request.headers()))
        {
            true => self.config.retry_conflicts,
            false => 0,
        };
        let inner = Rc::clone(&self.inner);
        let manager = self.manager.clone();
        let config = Arc::clone(&self.config);
        Box::pin(async move {
            let mut request = request;
            let mut retries = retries;
            loop {
                let (response, conflict) = run_once(&inner, &manager, &config, request).await?;
                if !conflict || retries == 0 {
                    return Ok(response);
                }
                retries -= 1;
                // The same request goes through routing again: actix-web
                // offers no other way to rebuild one here (see
                // `SessionMiddleware::retry_conflicts`).
                let (http_request, dropped) = response.into_parts();
                drop(dropped);
                tracing::debug!(
                    method = %http_request.method(),
                    path = http_request.path(),
                    "session commit conflicted; running the request again"
                );
                request = ServiceRequest::from_request(http_request);
                request.match_info_mut().reset();
            }
        })
    }
}

/// One run of the inner service under a session scope of its own: the
/// response to send, and whether the session's commit conflicted.
async fn run_once<S, B>(
    inner: &S,
    manager: &Manager,
    config: &Config,
    request: ServiceRequest,
) -> Result<(ServiceResponse<EitherBody<B>>, bool), actix_web::Error>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody,
{
    // Parsing the offered id is all the work a request pays for up front:
    // no store call and no lock until a handler asks.
    let scope = Scope::new(manager.clone(), &config.http, &Headers(request.headers()));
    // Replaces the session of an earlier run, if any.
    request.extensions_mut().insert(scope.session());
    // Dropped unfinished if this future is (panic, client gone): the open
    // session is released and nothing is written.
    let mut response = match inner.call(request).await {
        Ok(response) => response.map_into_left_body(),
        // Handlers' and extractors' errors arrive as responses; an `Err`
        // comes from another middleware, and goes on as it is (the request
        // is gone with it, so no header can be added): the session is
        // finished by the status it will answer with.
        Err(e) => {
            let status = status(e.as_response_error().status_code());
            drop(scope.finish(status, &config.http).await);
            return Err(e);
        }
    };
    let timed_out = response
        .response()
        .error()
        .and_then(|e| e.as_error::<SessionError>())
        .and_then(SessionError::lock_timeout);
    if let Some(waited) = timed_out {
        response = replace(response, (config.on_lock_timeout)(waited));
    }
    let finish = scope.finish(status(response.status()), &config.http).await;
    if let Some(reply) = finish.replace {
        return Ok((replace(response, crate::error::response(reply)), finish.conflict));
    }
    for header in finish.headers {
        apply(header, response.headers_mut());
    }
    Ok((response, finish.conflict))
}

/// The same status as an `http` 1 status code.
fn status(status: actix_web::http::StatusCode) -> cloakroom_http::http::StatusCode {
    cloakroom_http::http::StatusCode::from_u16(status.as_u16())
        .unwrap_or(cloakroom_http::http::StatusCode::INTERNAL_SERVER_ERROR)
}

fn replace<B>(response: ServiceResponse<EitherBody<B>>, by: HttpResponse) -> ServiceResponse<EitherBody<B>> {
    let (request, _) = response.into_parts();
    ServiceResponse::new(request, by.map_into_boxed_body()).map_into_right_body::<B>()
}
