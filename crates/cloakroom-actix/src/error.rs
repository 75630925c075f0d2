//! The error a handler gets from a session access, and how it answers.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use cloakroom_core::Error;
use cloakroom_http::Reply;

/// A session access failed. Return it from a handler (it implements
/// [`ResponseError`]) and the middleware answers for you:
///
/// - [`Error::LockTimeout`]: the middleware's lock-timeout response (default
///   `503` with `Retry-After: 1`, see
///   [`SessionMiddleware::on_lock_timeout`](crate::SessionMiddleware::on_lock_timeout));
/// - [`Error::Unavailable`]: `503` with `Retry-After: 1`;
/// - [`Error::Conflict`]: `409 Conflict` (an optimistic session that
///   another request saved first; the client may send the request again);
/// - [`Error::Released`]: `500`, logged as the bug it is (a change after
///   [`Session::commit_now`](crate::Session::commit_now) or
///   [`Session::rollback`](crate::Session::rollback));
/// - anything else: `500`. Details go to the log, never to the client.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct SessionError(#[from] Error);

impl SessionError {
    /// The underlying cloakroom error.
    pub fn inner(&self) -> &Error {
        &self.0
    }

    /// Take the underlying cloakroom error.
    pub fn into_inner(self) -> Error {
        self.0
    }

    /// If this is a lock timeout, how long the request waited.
    pub fn lock_timeout(&self) -> Option<Duration> {
        match self.0 {
            Error::LockTimeout { waited } => Some(waited),
            _ => None,
        }
    }
}

impl ResponseError for SessionError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(Reply::status_for(&self.0).as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        // The middleware swaps a lock timeout's response for the configured
        // one; it finds this error in the response to know.
        response(Reply::for_error(&self.0))
    }
}

/// The extractor was used on a route without the
/// [`SessionMiddleware`](crate::SessionMiddleware).
#[derive(Debug, thiserror::Error)]
#[error("no SessionMiddleware on this route: add one with App::wrap")]
pub struct MissingSessionMiddleware;

impl ResponseError for MissingSessionMiddleware {
    fn status_code(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    fn error_response(&self) -> HttpResponse {
        response(Reply::misconfigured(&self.to_string()))
    }
}

/// A [`Reply`] as an actix-web response.
pub(crate) fn response(reply: Reply) -> HttpResponse {
    let status = StatusCode::from_u16(reply.status.as_u16()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = HttpResponse::build(status);
    for (name, value) in reply.headers() {
        builder.insert_header((name.as_str(), value.as_bytes()));
    }
    builder.body(reply.body)
}
