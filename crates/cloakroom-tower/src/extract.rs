//! The per-request session state and the two extractors over it:
//! [`LazySession`] (locks on first use) and [`SessionReader`] (never locks).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use cloakroom_core::{Error, Manager, ReadOnlySession, Session, SessionId};
use http::request::Parts;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{Mutex, OnceCell};

use crate::error::{MissingSessionLayer, SessionError};
use crate::id_carrier::Offered;

/// One request's session, shared by the layer and every extractor of the
/// request. Nothing here touches the store until a handler asks.
#[derive(Debug)]
pub(crate) struct RequestSession {
    manager: Manager,
    pub(crate) offered: Offered,
    state: Mutex<State>,
    read_view: OnceCell<Option<ReadOnlySession>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// The session, once opened (and, under `Serialized`, locked).
    pub(crate) open: Option<Session>,
    /// Deleted during this request (logout): the offered id is dead, and a
    /// later access in the same request starts a fresh session.
    pub(crate) deleted: bool,
}

impl RequestSession {
    pub(crate) fn new(manager: Manager, offered: Offered) -> Self {
        RequestSession {
            manager,
            offered,
            state: Mutex::new(State::default()),
            read_view: OnceCell::new(),
        }
    }

    /// Hand the state to the layer at the end of the request. Waits if a
    /// task spawned by the handler is still inside a session call.
    pub(crate) async fn finish(&self) -> State {
        std::mem::take(&mut *self.state.lock().await)
    }

    async fn open(&self, deleted: bool) -> Result<Session, Error> {
        let offered = if deleted { None } else { self.offered.id() };
        match self.manager.open(offered).await {
            // A record this version cannot read must not lock its owner out
            // for good: start over with a fresh session. The core has already
            // released the lock; the old record expires on its own.
            Err(Error::Corrupt { reason }) => {
                tracing::warn!(%reason, "unreadable session record; starting a fresh session");
                self.manager.open(None).await
            }
            other => other,
        }
    }

    async fn with_open<R>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<R, Error>,
    ) -> Result<R, SessionError> {
        // The state's mutex is held across the open, so two extractors of one
        // request (or a handler's spawned task) can never open twice.
        let mut state = self.state.lock().await;
        let State { open, deleted } = &mut *state;
        let session = match open {
            Some(session) => session,
            None => open.insert(self.open(*deleted).await?),
        };
        Ok(f(session)?)
    }
}

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
pub struct LazySession {
    inner: Arc<RequestSession>,
}

impl LazySession {
    pub(crate) fn new(inner: Arc<RequestSession>) -> Self {
        LazySession { inner }
    }

    /// The value under `key` as `T`.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.inner.with_open(|s| s.get(key)).await
    }

    /// Store `value` under `key`; saved when the response is ready.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), SessionError> {
        self.inner.with_open(|s| s.insert(key, value)).await
    }

    /// Remove `key`; returns whether it was present.
    pub async fn remove(&self, key: &str) -> Result<bool, SessionError> {
        self.inner.with_open(|s| Ok(s.remove(key))).await
    }

    /// Remove every key.
    pub async fn clear(&self) -> Result<(), SessionError> {
        self.inner
            .with_open(|s| {
                s.clear();
                Ok(())
            })
            .await
    }

    /// The session's id (a fresh one if the request had none or an invalid
    /// one). It is a bearer credential: show or log a prefix at most.
    pub async fn id(&self) -> Result<SessionId, SessionError> {
        self.inner.with_open(|s| Ok(s.id().clone())).await
    }

    /// Whether the session is not stored yet.
    pub async fn is_new(&self) -> Result<bool, SessionError> {
        self.inner.with_open(|s| Ok(s.is_new())).await
    }

    /// Give the session a new id, keeping its data. Call it on login so an
    /// id planted before login (session fixation) is worthless after; the
    /// response carries the new id and the old one stops working.
    pub async fn cycle_id(&self) -> Result<(), SessionError> {
        self.inner
            .with_open(|s| {
                s.cycle_id();
                Ok(())
            })
            .await
    }

    /// Delete the session now (logout) and tell the client to forget its id.
    /// Returns whether a stored session was deleted. Using the session again
    /// in the same request starts a fresh one (for a "logged out" flash).
    pub async fn delete(&self) -> Result<bool, SessionError> {
        let mut state = self.inner.state.lock().await;
        let session = match state.open.take() {
            Some(session) => session,
            None if state.deleted => return Ok(false),
            None => self.inner.open(false).await?,
        };
        state.deleted = true;
        Ok(session.delete().await?)
    }

    /// A reader over the same request's session that never locks.
    pub fn reader(&self) -> SessionReader {
        SessionReader {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Read-only access to the request's session: never takes the lock and
/// never writes, so read-only routes do not queue behind a slow request of
/// the same visitor. It sees the last committed state.
///
/// If the same request already opened the session through a
/// [`LazySession`], the reader sees that (locked, possibly changed) session.
#[derive(Clone, Debug)]
pub struct SessionReader {
    inner: Arc<RequestSession>,
}

impl SessionReader {
    async fn with_view<R>(
        &self,
        from_open: impl FnOnce(&Session) -> Result<R, Error>,
        from_view: impl FnOnce(Option<&ReadOnlySession>) -> Result<R, Error>,
    ) -> Result<R, SessionError> {
        {
            let state = self.inner.state.lock().await;
            if let Some(session) = &state.open {
                return Ok(from_open(session)?);
            }
            if state.deleted {
                return Ok(from_view(None)?);
            }
        }
        let view = self
            .inner
            .read_view
            .get_or_try_init(|| async {
                match self.inner.offered.id() {
                    // No id, or a malformed one: nothing to look up, no store call.
                    None => Ok(None),
                    Some(id) => match self.inner.manager.open_read_only(id).await {
                        Err(Error::Corrupt { reason }) => {
                            tracing::warn!(%reason, "unreadable session record; reading as empty");
                            Ok(None)
                        }
                        other => other,
                    },
                }
            })
            .await?;
        Ok(from_view(view.as_ref())?)
    }

    /// The value under `key` as `T`; `None` also when there is no session.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, SessionError> {
        self.with_view(|s| s.get(key), |v| v.map_or(Ok(None), |v| v.get(key)))
            .await
    }

    /// The id of the live session, if there is one.
    pub async fn id(&self) -> Result<Option<SessionId>, SessionError> {
        self.with_view(
            |s| Ok((!s.is_new()).then(|| s.id().clone())),
            |v| Ok(v.map(|v| v.id().clone())),
        )
        .await
    }

    /// Whether the request has a live session.
    pub async fn exists(&self) -> Result<bool, SessionError> {
        Ok(self.id().await?.is_some())
    }
}

fn request_session(parts: &Parts) -> Result<Arc<RequestSession>, MissingSessionLayer> {
    parts
        .extensions
        .get::<Arc<RequestSession>>()
        .cloned()
        .ok_or(MissingSessionLayer)
}

impl<S: Send + Sync> FromRequestParts<S> for LazySession {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        request_session(parts).map(LazySession::new)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SessionReader {
    type Rejection = MissingSessionLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        request_session(parts).map(|inner| SessionReader { inner })
    }
}
