//! One request's session: opened on first use, finished once when the
//! response is ready.

use std::sync::Arc;
use std::time::Duration;

use cloakroom_core::{Error, Manager, ReadOnlySession, Session, SessionId, Timestamp};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{Mutex, OnceCell};

use crate::config::{CookieLifetime, HttpConfig, IdCarrier};
use crate::id::{clear_id, write_id, HeaderWrite, Offered, RequestHeaders};
use crate::reply::Reply;

/// One request's session, shared by the middleware and every extractor of
/// the request. Nothing here touches the store until a handler asks.
///
/// Its methods are what a handler's session handle does; an integration
/// wraps it in its own extractor types (see [`session_methods!`](crate::session_methods)).
#[derive(Debug)]
pub struct RequestSession {
    manager: Manager,
    offered: Offered,
    state: Mutex<State>,
    read_view: OnceCell<Option<ReadOnlySession>>,
}

#[derive(Debug, Default)]
struct State {
    /// The session, once opened (and, under `Serialized`, locked).
    open: Option<Session>,
    /// Deleted during this request (logout): the offered id is dead, and a
    /// later access in the same request starts a fresh session.
    deleted: bool,
}

impl RequestSession {
    /// What the client offered as its id.
    pub fn offered(&self) -> &Offered {
        &self.offered
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

    async fn with_open<R>(&self, f: impl FnOnce(&mut Session) -> Result<R, Error>) -> Result<R, Error> {
        // The state's mutex is held across the open, so two extractors of one
        // request (or a handler's spawned task) can never open twice.
        let mut state = self.state.lock().await;
        let State { open, deleted } = &mut *state;
        let session = match open {
            Some(session) => session,
            None => open.insert(self.open(*deleted).await?),
        };
        f(session)
    }

    /// The value under `key` as `T` (opens and locks the session).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.with_open(|s| s.get(key)).await
    }

    /// Store `value` under `key`.
    pub async fn insert<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        self.with_open(|s| s.insert(key, value)).await
    }

    /// Remove `key`; whether it was present.
    pub async fn remove(&self, key: &str) -> Result<bool, Error> {
        self.with_open(|s| Ok(s.remove(key))).await
    }

    /// Remove every key.
    pub async fn clear(&self) -> Result<(), Error> {
        self.with_open(|s| {
            s.clear();
            Ok(())
        })
        .await
    }

    /// The session's id.
    pub async fn id(&self) -> Result<SessionId, Error> {
        self.with_open(|s| Ok(s.id().clone())).await
    }

    /// Whether the session is not stored yet.
    pub async fn is_new(&self) -> Result<bool, Error> {
        self.with_open(|s| Ok(s.is_new())).await
    }

    /// Give the session a new id, keeping its data.
    pub async fn cycle_id(&self) -> Result<(), Error> {
        self.with_open(|s| {
            s.cycle_id();
            Ok(())
        })
        .await
    }

    /// Delete the session now; whether a stored session was deleted.
    pub async fn delete(&self) -> Result<bool, Error> {
        let mut state = self.state.lock().await;
        let session = match state.open.take() {
            Some(session) => session,
            None if state.deleted => return Ok(false),
            None => self.open(false).await?,
        };
        state.deleted = true;
        session.delete().await
    }

    async fn with_view<R>(
        &self,
        from_open: impl FnOnce(&Session) -> Result<R, Error>,
        from_view: impl FnOnce(Option<&ReadOnlySession>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        {
            let state = self.state.lock().await;
            if let Some(session) = &state.open {
                return from_open(session);
            }
            if state.deleted {
                return from_view(None);
            }
        }
        let view = self
            .read_view
            .get_or_try_init(|| async {
                match self.offered.id() {
                    // No id, or a malformed one: nothing to look up, no store call.
                    None => Ok(None),
                    Some(id) => match self.manager.open_read_only(id).await {
                        Err(Error::Corrupt { reason }) => {
                            tracing::warn!(%reason, "unreadable session record; reading as empty");
                            Ok(None)
                        }
                        other => other,
                    },
                }
            })
            .await?;
        from_view(view.as_ref())
    }

    /// Read-only: the value under `key`, `None` also when there is no
    /// session. Never locks.
    pub async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.with_view(|s| s.get(key), |v| v.map_or(Ok(None), |v| v.get(key)))
            .await
    }

    /// Read-only: the id of the live session, if there is one. Never locks.
    pub async fn read_id(&self) -> Result<Option<SessionId>, Error> {
        self.with_view(
            |s| Ok((!s.is_new()).then(|| s.id().clone())),
            |v| Ok(v.map(|v| v.id().clone())),
        )
        .await
    }
}

/// What the integration does to the response once the session is finished.
#[derive(Debug, Default)]
#[must_use]
pub struct Finish {
    /// Headers to add: the id, or its removal.
    pub headers: Vec<HeaderWrite>,
    /// Send this instead of the handler's response: the commit failed, and
    /// the page may announce a change that was not saved.
    pub replace: Option<Reply>,
}

/// One request's session from the middleware's side: made before the
/// handler runs, finished after it returned.
///
/// Dropping a scope unfinished (the handler panicked, the client went away,
/// the request was cancelled) drops the open session at once: nothing is
/// written and the lock is released, even if an extractor's clone of the
/// [`RequestSession`] lives on somewhere (a framework's request pool, a task
/// the handler spawned).
#[derive(Debug)]
pub struct Scope {
    session: Arc<RequestSession>,
}

impl Scope {
    /// A lazy session for a request with these headers: parses the offered
    /// id (the only work done up front: no store call, no lock).
    pub fn new(manager: Manager, config: &HttpConfig, headers: &impl RequestHeaders) -> Scope {
        Scope {
            session: Arc::new(RequestSession {
                manager,
                offered: Offered::from_request(headers, config),
                state: Mutex::new(State::default()),
                read_view: OnceCell::new(),
            }),
        }
    }

    /// The request's session, for the request's extensions.
    pub fn session(&self) -> Arc<RequestSession> {
        Arc::clone(&self.session)
    }

    /// Finish the session given the status of the response about to be
    /// sent, and say what to change in that response.
    ///
    /// - nothing opened: nothing to do (after a logout: clear the id);
    /// - a `5xx` response rolls the session back (the handler failed; its
    ///   half-made changes are not saved) and releases the lock;
    /// - otherwise the session is committed — saved if changed, touched if
    ///   its expiry is due to slide, unlocked in every case — on a task of
    ///   its own, so a client that disconnects now cannot cut it short;
    /// - the client is sent its id when it is new or changed (and, for a
    ///   [`CookieLifetime::Persistent`] cookie or a header, whenever the
    ///   stored expiry moved), or told to forget it after a logout or when
    ///   its id named no session;
    /// - a session deleted meanwhile ([`Error::Gone`]) drops the save,
    ///   clears the id and keeps the response; any other commit failure
    ///   replaces the response ([`Reply::for_error`]).
    pub async fn finish(self, status: StatusCode, config: &HttpConfig) -> Finish {
        // Waits if a task spawned by the handler is still inside a session call.
        let State { open, deleted } = std::mem::take(&mut *self.session.state.lock().await);
        let offered = &self.session.offered;
        let mut out = Finish::default();
        let Some(open) = open else {
            if deleted {
                out.headers.extend(clear_id(config));
            }
            return out;
        };
        if status.is_server_error() {
            if let Err(e) = open.rollback().await {
                tracing::warn!(error = %e, "session rollback after a failed handler");
            }
            return out;
        }

        let id = open.id().clone();
        let remaining = Duration::from_millis(
            u64::try_from(open.expires().as_millis() - Timestamp::now().as_millis()).unwrap_or(0),
        );
        let id_changed = offered.id() != Some(&id);

        // Its own task: once the handler is done, a disconnecting client must
        // not cut the save short between the write and the unlock.
        match tokio::spawn(open.commit()).await {
            // A fresh session that holds nothing is never stored (no row for
            // visitors who only look), so there is no id to hand out either.
            Ok(Ok(done)) if done.is_stored() => {
                // A persistent cookie's Max-Age follows the stored expiry, so
                // it is re-sent only when the commit moved that expiry.
                let refresh = config.carrier != IdCarrier::Cookie
                    || (config.cookie.lifetime == CookieLifetime::Persistent && done.expiry_moved());
                if id_changed || refresh {
                    out.headers.extend(write_id(config, &id, remaining));
                }
            }
            Ok(Ok(_)) => {
                if deleted || offered.is_something() {
                    // The offered id named no session (or was logged out):
                    // stop sending it.
                    out.headers.extend(clear_id(config));
                }
            }
            Ok(Err(Error::Gone)) => {
                tracing::info!(session = ?id, "session was deleted meanwhile; its save was dropped");
                out.headers.extend(clear_id(config));
            }
            Ok(Err(e)) => {
                tracing::error!(session = ?id, error = %e, "session commit failed");
                out.replace = Some(Reply::for_error(&e));
            }
            Err(e) => {
                tracing::error!(session = ?id, error = %e, "session commit task failed");
                out.replace = Some(Reply::status(StatusCode::INTERNAL_SERVER_ERROR, false));
            }
        }
        out
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        // After `finish` the state is empty and this does nothing. Before it,
        // the open session is dropped unfinished: released, nothing written.
        // A task of the handler still inside a session call holds the
        // mutex; its session is then dropped with the last clone.
        if let Ok(mut state) = self.session.state.try_lock() {
            drop(state.open.take());
        }
    }
}
