//! The error a handler gets from a session access, and how it answers.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use cloakroom_core::Error;
use cloakroom_http::Reply;

/// A session access failed. Return it from a handler (it implements
/// [`IntoResponse`]) and the layer answers for you:
///
/// - [`Error::LockTimeout`]: the layer's lock-timeout response (default `503`
///   with `Retry-After: 1`, see
///   [`SessionLayer::on_lock_timeout`](crate::SessionLayer::on_lock_timeout));
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

/// Marks a response built from a lock timeout, so the layer can swap in the
/// configured one on the way out.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LockTimedOut(pub(crate) Duration);

impl IntoResponse for SessionError {
    fn into_response(self) -> Response {
        let mut response = Reply::for_error(&self.0).into_http::<Body>();
        if let Some(waited) = self.lock_timeout() {
            response.extensions_mut().insert(LockTimedOut(waited));
        }
        response
    }
}

/// The extractor was used on a route without the [`SessionLayer`](crate::SessionLayer).
#[derive(Debug, thiserror::Error)]
#[error("no SessionLayer on this route: add one with Router::layer")]
pub struct MissingSessionLayer;

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        Reply::misconfigured(&self.to_string()).into_http::<Body>()
    }
}
