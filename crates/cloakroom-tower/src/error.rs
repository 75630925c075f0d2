//! The error a handler gets from a session access, and how it answers.

use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use cloakroom_core::Error;
use http::{header, HeaderValue, StatusCode};

/// A session access failed. Return it from a handler (it implements
/// [`IntoResponse`]) and the layer answers for you:
///
/// - [`Error::LockTimeout`]: the layer's lock-timeout response (default `503`
///   with `Retry-After: 1`, see
///   [`SessionLayer::on_lock_timeout`](crate::SessionLayer::on_lock_timeout));
/// - [`Error::Unavailable`]: `503` with `Retry-After: 1`;
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
        match self.0 {
            Error::LockTimeout { waited } => {
                let mut response = crate::config::default_lock_timeout_response(waited);
                response.extensions_mut().insert(LockTimedOut(waited));
                response
            }
            Error::Unavailable { .. } => {
                tracing::warn!(error = %self.0, "session store unavailable");
                status_response(StatusCode::SERVICE_UNAVAILABLE, true)
            }
            _ => {
                tracing::error!(error = %self.0, "session error");
                status_response(StatusCode::INTERNAL_SERVER_ERROR, false)
            }
        }
    }
}

pub(crate) fn status_response(status: StatusCode, retry: bool) -> Response {
    let mut response = Response::new(Body::from(format!(
        "{}\n",
        status.canonical_reason().unwrap_or("error")
    )));
    *response.status_mut() = status;
    if retry {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The extractor was used on a route without the [`SessionLayer`](crate::SessionLayer).
#[derive(Debug, thiserror::Error)]
#[error("no SessionLayer on this route: add one with Router::layer")]
pub struct MissingSessionLayer;

impl IntoResponse for MissingSessionLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        status_response(StatusCode::INTERNAL_SERVER_ERROR, false)
    }
}
