//! What a web integration answers when a session access fails, as plain
//! data each framework turns into its own response type.

use std::time::Duration;

use cloakroom_core::Error;
use http::{header, HeaderName, HeaderValue, StatusCode};

/// A response the integration sends in place of the handler's: the status,
/// whether to add `Retry-After: 1`, and a short plain-text body.
///
/// | error | status | `Retry-After` |
/// |---|---|---|
/// | [`Error::LockTimeout`] | `503` (the integration's lock-timeout response, configurable) | `1` |
/// | [`Error::Unavailable`] | `503` | `1` |
/// | [`Error::Conflict`] | `409` | — |
/// | [`Error::Released`] | `500` (a bug in the handler, logged as one) | — |
/// | anything else | `500` | — |
///
/// `409 Conflict` is what an optimistic session answers when another
/// request saved the same session between this one's load and its commit
/// (under `Policy::Optimistic`): nothing of this request's session changes
/// was saved, and the client may simply send the request again. The web
/// layers can do that themselves for safe requests (`retry_conflicts`).
///
/// Details go to the log, never to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status.
    pub status: StatusCode,
    /// Whether to send `Retry-After: 1`: the condition is expected to pass
    /// within a second or so.
    pub retry: bool,
    /// The body, `text/plain`.
    pub body: &'static str,
}

impl Reply {
    /// The default answer to a lock timeout: `503 Service Unavailable` with
    /// `Retry-After: 1`, because the holder is most likely a slow request of
    /// the same visitor that will be done soon.
    pub fn lock_timeout(_waited: Duration) -> Reply {
        Reply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry: true,
            body: "session busy, retry shortly\n",
        }
    }

    /// The answer to `error`, logged (at `warn` for an unavailable store, at
    /// `error` for anything but a lock timeout).
    pub fn for_error(error: &Error) -> Reply {
        match error {
            Error::LockTimeout { waited } => Reply::lock_timeout(*waited),
            Error::Unavailable { .. } => {
                tracing::warn!(%error, "session store unavailable");
                Reply::status(StatusCode::SERVICE_UNAVAILABLE, true)
            }
            Error::Conflict { .. } => {
                tracing::warn!(%error, "another request saved this session first; answering 409");
                Reply::status(StatusCode::CONFLICT, false)
            }
            Error::Released => {
                tracing::error!(
                    %error,
                    "the handler changed its session after committing or rolling it back early \
                     (commit_now/rollback); the change was refused"
                );
                Reply::status(StatusCode::INTERNAL_SERVER_ERROR, false)
            }
            _ => {
                tracing::error!(%error, "session error");
                Reply::status(StatusCode::INTERNAL_SERVER_ERROR, false)
            }
        }
    }

    /// The status [`for_error`](Reply::for_error) answers `error` with, without
    /// logging (for frameworks that ask an error for its status apart from
    /// its response). A lock timeout is the default `503` here; the
    /// integration's configured lock-timeout response may differ.
    pub fn status_for(error: &Error) -> StatusCode {
        match error {
            Error::LockTimeout { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer when a handler asks for the session on a route that has no
    /// session middleware: a `500`, and `what` in the log.
    pub fn misconfigured(what: &str) -> Reply {
        tracing::error!("{what}");
        Reply::status(StatusCode::INTERNAL_SERVER_ERROR, false)
    }

    pub(crate) fn status(status: StatusCode, retry: bool) -> Reply {
        let body = match status {
            StatusCode::SERVICE_UNAVAILABLE => "Service Unavailable\n",
            StatusCode::CONFLICT => "Conflict: the session was changed by another request; try again\n",
            _ => "Internal Server Error\n",
        };
        Reply { status, retry, body }
    }

    /// The headers to send with the body.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let content_type = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let retry = self
            .retry
            .then(|| (header::RETRY_AFTER, HeaderValue::from_static("1")));
        std::iter::once(content_type).chain(retry)
    }

    /// The reply as an `http` response, for frameworks built on the `http`
    /// crate (axum, hyper, tower).
    pub fn into_http<B: From<&'static str>>(self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body));
        *response.status_mut() = self.status;
        response.headers_mut().extend(self.headers());
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses() {
        let busy = Reply::for_error(&Error::LockTimeout {
            waited: Duration::from_secs(1),
        });
        assert_eq!((busy.status, busy.retry), (StatusCode::SERVICE_UNAVAILABLE, true));
        let broken = Reply::for_error(&Error::Gone);
        assert_eq!(
            (broken.status, broken.retry),
            (StatusCode::INTERNAL_SERVER_ERROR, false)
        );
        let conflict = Reply::for_error(&Error::Conflict {
            expected: 1,
            found: 2,
        });
        assert_eq!((conflict.status, conflict.retry), (StatusCode::CONFLICT, false));
        let released = Reply::for_error(&Error::Released);
        assert_eq!(released.status, StatusCode::INTERNAL_SERVER_ERROR);
        for e in [
            Error::Conflict {
                expected: 1,
                found: 2,
            },
            Error::Released,
            Error::Gone,
            Error::LockTimeout {
                waited: Duration::from_secs(1),
            },
        ] {
            assert_eq!(Reply::status_for(&e), Reply::for_error(&e).status, "{e}");
        }
        let response: http::Response<String> = busy.into_http();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.body(), "session busy, retry shortly\n");
    }
}
