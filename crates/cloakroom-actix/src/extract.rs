//! The two extractors over a request's session: [`Session`] (locks on
//! first use) and [`SessionReader`] (never locks).

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use cloakroom_http::RequestSession;

use crate::error::{MissingSessionMiddleware, SessionError};

/// The request's session, opened on first use.
///
/// Extracting it costs nothing: no store call, no lock. The first method
/// call opens the session — under [`Policy::Serialized`](cloakroom_core::Policy)
/// it waits for and takes the session's lock — and the lock is held until
/// the middleware commits after the handler returns. So a read-modify-write
/// over several calls (`get`, then `insert`) is safe against the same
/// visitor's other tabs.
///
/// Cheap to clone; clones share the one session of the request.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<RequestSession>,
}

impl Session {
    cloakroom_http::session_methods!(error = SessionError, reader = SessionReader);
}

/// Read-only access to the request's session: never takes the lock and
/// never writes, so read-only routes do not queue behind a slow request of
/// the same visitor. It sees the last committed state.
///
/// If the same request already opened the session through a [`Session`],
/// the reader sees that (locked, possibly changed) session.
#[derive(Clone, Debug)]
pub struct SessionReader {
    inner: Arc<RequestSession>,
}

impl SessionReader {
    cloakroom_http::reader_methods!(error = SessionError);
}

fn request_session(req: &HttpRequest) -> Result<Arc<RequestSession>, MissingSessionMiddleware> {
    req.extensions()
        .get::<Arc<RequestSession>>()
        .cloned()
        .ok_or(MissingSessionMiddleware)
}

impl FromRequest for Session {
    type Error = MissingSessionMiddleware;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(request_session(req).map(|inner| Session { inner }))
    }
}

impl FromRequest for SessionReader {
    type Error = MissingSessionMiddleware;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _payload: &mut Payload) -> Self::Future {
        ready(request_session(req).map(|inner| SessionReader { inner }))
    }
}
