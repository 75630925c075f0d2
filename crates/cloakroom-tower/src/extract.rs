//! The two extractors over a request's session: [`Session`] (locks on
//! first use) and [`SessionReader`] (never locks).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use cloakroom_http::RequestSession;
use http::request::Parts;

use crate::error::{MissingSessionLayer, SessionError};

/// The request's session, opened on first use.
///
/// Extracting it costs nothing: no store call, no lock. The first method
/// call opens the session — under [`Policy::Serialized`](cloakroom_core::Policy)
/// it waits for and takes the session's lock — and the lock is held until
/// the layer commits after the handler returns. So a read-modify-write over
/// several calls (`get`, then `insert`) is safe against the same visitor's
/// other tabs.
///
/// Cheap to clone; clones share the one session of the request.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<RequestSession>,
}

/// The earlier name of [`Session`] (the same type), kept so that code
/// written against it still compiles.
#[deprecated(since = "0.1.0", note = "renamed to `Session`")]
pub type LazySession = Session;

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

fn request_session(parts: &Parts) -> Result<Arc<RequestSession>, MissingSessionLayer> {
    parts
        .extensions
        .get::<Arc<RequestSession>>()
        .cloned()
        .ok_or(MissingSessionLayer)
}

impl<S: Send + Sync> FromRequestParts<S> for Session {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        request_session(parts).map(|inner| Session { inner })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionReader {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        request_session(parts).map(|inner| SessionReader { inner })
    }
}
