//! One request's session: opened on first use, finished once when the
//! response is ready (or earlier, when the handler commits or rolls it back
//! itself).

use std::sync::Arc;
use std::time::Duration;

use cloakroom_core::{
    Committed, Error, Expiry, Manager, Principal, ReadOnlySession, Session, SessionData, SessionId, Timestamp,
};
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
    /// The open session's own expiry as it was opened, so the cookie is
    /// re-sent when this request changes it.
    opened_expiry: Option<Expiry>,
    /// Deleted during this request (logout): the offered id is dead, and a
    /// later access in the same request starts a fresh session.
    deleted: bool,
    /// Committed or rolled back by the handler before the end of the
    /// request: the lock is gone, reads see `Released::snapshot`, changes
    /// are refused.
    released: Option<Released>,
}

/// A session the handler finished early.
#[derive(Debug)]
struct Released {
    /// What the end of the request does about the id.
    ended: Ended,
    /// What reads see from now on; `None` until first needed, then loaded
    /// from the store without a lock.
    snapshot: Option<Snapshot>,
    /// The stored id to load the snapshot from (`None`: nothing stored).
    stored: Option<SessionId>,
    /// The id a snapshot of nothing reports.
    fresh: SessionId,
}

/// A session as it stands after it was released: read-only.
#[derive(Debug)]
struct Snapshot {
    id: SessionId,
    is_new: bool,
    data: SessionData,
    principal: Option<Principal>,
    created: Timestamp,
    accessed: Timestamp,
    expires: Timestamp,
}

/// How a session's part of the request ended, for the id headers.
#[derive(Debug)]
enum Ended {
    /// Committed (saved, touched, unchanged, or a new one not stored).
    Committed(Done),
    /// Deleted meanwhile by someone else: the save was dropped.
    Gone,
    /// Rolled back by the handler, or a commit that failed: the stored
    /// session is as it was.
    Untouched {
        /// The failure was an optimistic [`Error::Conflict`].
        conflict: bool,
    },
}

/// A commit that went through.
#[derive(Debug)]
struct Done {
    id: SessionId,
    /// The stored expiry minus the time of the commit.
    remaining: Duration,
    committed: Committed,
    /// The session's own expiry as committed.
    expiry: Option<Expiry>,
    /// This request changed the session's own expiry.
    expiry_changed: bool,
}

/// The open session or, after an early release, its snapshot: what the
/// read methods read.
enum Current<'a> {
    Open(&'a Session),
    Released(&'a Snapshot),
}

impl Current<'_> {
    fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        match self {
            Current::Open(s) => s.get(key),
            Current::Released(s) => s.data.get(key),
        }
    }

    fn id(&self) -> &SessionId {
        match self {
            Current::Open(s) => s.id(),
            Current::Released(s) => &s.id,
        }
    }

    fn is_new(&self) -> bool {
        match self {
            Current::Open(s) => s.is_new(),
            Current::Released(s) => s.is_new,
        }
    }

    fn expiry(&self) -> Option<Expiry> {
        match self {
            Current::Open(s) => s.expiry(),
            Current::Released(s) => s.data.expiry(),
        }
    }

    fn principal(&self) -> Option<&Principal> {
        match self {
            Current::Open(s) => s.principal(),
            Current::Released(s) => s.principal.as_ref(),
        }
    }

    fn created(&self) -> Timestamp {
        match self {
            Current::Open(s) => s.created(),
            Current::Released(s) => s.created,
        }
    }

    fn accessed(&self) -> Timestamp {
        match self {
            Current::Open(s) => s.accessed(),
            Current::Released(s) => s.accessed,
        }
    }

    fn expires(&self) -> Timestamp {
        match self {
            Current::Open(s) => s.expires(),
            Current::Released(s) => s.expires,
        }
    }
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

    /// The open session, opened (and locked) now if it is not yet.
    async fn opened<'s>(&self, state: &'s mut State) -> Result<&'s mut Session, Error> {
        let session = match state.open.take() {
            Some(session) => session,
            None => {
                let session = self.open(state.deleted).await?;
                state.opened_expiry = session.expiry();
                session
            }
        };
        Ok(state.open.insert(session))
    }

    /// Change the open session; refused once it was released.
    async fn with_open<R>(&self, f: impl FnOnce(&mut Session) -> Result<R, Error>) -> Result<R, Error> {
        // The state's mutex is held across the open, so two extractors of one
        // request (or a handler's spawned task) can never open twice.
        let mut state = self.state.lock().await;
        if state.released.is_some() {
            return Err(Error::Released);
        }
        f(self.opened(&mut state).await?)
    }

    /// Read the open session (opening it if needed) or, once released, what
    /// it was released as.
    async fn inspect<R>(&self, f: impl FnOnce(Current<'_>) -> Result<R, Error>) -> Result<R, Error> {
        let mut state = self.state.lock().await;
        if let Some(released) = &mut state.released {
            return f(Current::Released(released.snapshot(&self.manager).await?));
        }
        f(Current::Open(self.opened(&mut state).await?))
    }

    /// The value under `key` as `T` (opens and locks the session).
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.inspect(|s| s.get(key)).await
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
        self.inspect(|s| Ok(s.id().clone())).await
    }

    /// Whether the session is not stored yet.
    pub async fn is_new(&self) -> Result<bool, Error> {
        self.inspect(|s| Ok(s.is_new())).await
    }

    /// Give the session a new id, keeping its data.
    pub async fn cycle_id(&self) -> Result<(), Error> {
        self.with_open(|s| {
            s.cycle_id();
            Ok(())
        })
        .await
    }

    /// The session's own expiry (`None`: the manager's default).
    pub async fn expiry(&self) -> Result<Option<Expiry>, Error> {
        self.inspect(|s| Ok(s.expiry())).await
    }

    /// Give the session an expiry of its own, stored with it (see
    /// [`Session::set_expiry`]).
    pub async fn set_expiry(&self, expiry: Option<Expiry>) -> Result<(), Error> {
        self.with_open(|s| {
            s.set_expiry(expiry);
            Ok(())
        })
        .await
    }

    /// Who the session belongs to.
    pub async fn principal(&self) -> Result<Option<Principal>, Error> {
        self.inspect(|s| Ok(s.principal().cloned())).await
    }

    /// Tag the session with its user (see [`Session::set_principal`]).
    pub async fn set_principal(&self, principal: Option<Principal>) -> Result<(), Error> {
        self.with_open(|s| {
            s.set_principal(principal);
            Ok(())
        })
        .await
    }

    /// When the session was created (now, for a new one).
    pub async fn created(&self) -> Result<Timestamp, Error> {
        self.inspect(|s| Ok(s.created())).await
    }

    /// When the session was last used before this request (now, for a new
    /// one); after an early commit, when that commit used it.
    pub async fn accessed(&self) -> Result<Timestamp, Error> {
        self.inspect(|s| Ok(s.accessed())).await
    }

    /// When the session expires if committed now; after an early commit,
    /// the expiry that commit computed.
    pub async fn expires(&self) -> Result<Timestamp, Error> {
        self.inspect(|s| Ok(s.expires())).await
    }

    /// Delete the session now; whether a stored session was deleted.
    pub async fn delete(&self) -> Result<bool, Error> {
        let mut state = self.state.lock().await;
        if state.released.is_some() {
            return Err(Error::Released);
        }
        let session = match state.open.take() {
            Some(session) => session,
            None if state.deleted => return Ok(false),
            None => self.open(false).await?,
        };
        state.deleted = true;
        session.delete().await
    }

    /// Delete the stored session and go on with a fresh, empty one under a
    /// new id (see [`Session::flush`]); whether a stored session was deleted.
    pub async fn flush(&self) -> Result<bool, Error> {
        let mut state = self.state.lock().await;
        if state.released.is_some() {
            return Err(Error::Released);
        }
        let session = self.opened(&mut state).await?;
        let deleted = session.flush().await?;
        // The fresh session is new: its expiry is the default again, and its
        // id, if it is ever stored, is sent as a new one.
        state.opened_expiry = None;
        Ok(deleted)
    }

    /// Commit the session now and release its lock, before the response is
    /// ready (PHP's `session_write_close`): other requests on the session
    /// proceed while this one goes on. Reads still see the committed data;
    /// changes are refused with [`Error::Released`]. The end of the request
    /// then commits nothing, but still sends the id of a session this
    /// created. Calling it again, or after [`rollback`](Self::rollback),
    /// does nothing.
    ///
    /// A failed commit is returned (and the lock released all the same):
    /// [`Error::Gone`] (deleted meanwhile; the response will clear the id),
    /// [`Error::Conflict`] (optimistic; nothing was saved), and the other
    /// errors of [`Session::commit`].
    pub async fn commit_now(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.released.is_some() {
            return Ok(());
        }
        let Some(open) = state.open.take() else {
            // Never opened: nothing to write and no lock to release.
            state.released = Some(self.unopened(state.deleted));
            return Ok(());
        };
        let stored = self.stored_id(&open);
        let fresh = open.id().clone();
        // What reads see if the commit goes through, taken before it
        // consumes the session.
        let now = Timestamp::now();
        let snapshot = Snapshot {
            id: open.id().clone(),
            is_new: open.is_new(),
            data: open.data().clone(),
            principal: open.principal().cloned(),
            created: open.created(),
            accessed: open.accessed(),
            expires: open.expires(),
        };
        let result = commit(open, state.opened_expiry).await;
        let (ended, snapshot, result) = match result {
            Ok(done) => {
                let snapshot = Snapshot {
                    is_new: !done.committed.is_stored(),
                    accessed: if done.committed.expiry_moved() {
                        now
                    } else {
                        snapshot.accessed
                    },
                    ..snapshot
                };
                (Ended::Committed(done), Some(snapshot), Ok(()))
            }
            Err(e) => {
                tracing::debug!(error = %e, "early session commit failed");
                let ended = match e {
                    Error::Gone => Ended::Gone,
                    Error::Conflict { .. } => Ended::Untouched { conflict: true },
                    _ => Ended::Untouched { conflict: false },
                };
                // Reads then see whatever is stored now.
                (ended, None, Err(e))
            }
        };
        state.released = Some(Released {
            ended,
            snapshot,
            stored,
            fresh,
        });
        result
    }

    /// Discard every change made in this request and release the lock now,
    /// before the response is ready; later reads see the session as stored,
    /// later changes are refused with [`Error::Released`], and the end of
    /// the request writes nothing. Calling it again, or after
    /// [`commit_now`](Self::commit_now), does nothing. A
    /// [`delete`](Self::delete) or [`flush`](Self::flush) made before is
    /// not undone: it happened in the store at once.
    pub async fn rollback(&self) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        if state.released.is_some() {
            return Ok(());
        }
        let Some(open) = state.open.take() else {
            state.released = Some(self.unopened(state.deleted));
            return Ok(());
        };
        let stored = self.stored_id(&open);
        let fresh = open.id().clone();
        let result = open.rollback().await;
        state.released = Some(Released {
            ended: Ended::Untouched { conflict: false },
            snapshot: None,
            stored,
            fresh,
        });
        result
    }

    /// The stored id an open session was loaded from (`None` for a new one).
    fn stored_id(&self, open: &Session) -> Option<SessionId> {
        // A stored session was opened under the offered id; a `cycle_id`
        // not committed yet has not moved it.
        (!open.is_new()).then(|| self.offered.id().cloned()).flatten()
    }

    /// A session released before it was ever opened.
    fn unopened(&self, deleted: bool) -> Released {
        Released {
            ended: Ended::Untouched { conflict: false },
            snapshot: None,
            stored: if deleted { None } else { self.offered.id().cloned() },
            fresh: SessionId::generate(),
        }
    }

    async fn with_view<R>(
        &self,
        from_open: impl FnOnce(&Session) -> Result<R, Error>,
        from_released: impl FnOnce(&Snapshot) -> Result<R, Error>,
        from_view: impl FnOnce(Option<&ReadOnlySession>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        {
            let mut state = self.state.lock().await;
            if let Some(released) = &mut state.released {
                return from_released(released.snapshot(&self.manager).await?);
            }
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
        self.with_view(
            |s| s.get(key),
            |s| s.data.get(key),
            |v| v.map_or(Ok(None), |v| v.get(key)),
        )
        .await
    }

    /// Read-only: the id of the live session, if there is one. Never locks.
    pub async fn read_id(&self) -> Result<Option<SessionId>, Error> {
        self.with_view(
            |s| Ok((!s.is_new()).then(|| s.id().clone())),
            |s| Ok((!s.is_new).then(|| s.id.clone())),
            |v| Ok(v.map(|v| v.id().clone())),
        )
        .await
    }
}

impl Released {
    /// What reads see, loaded from the store (without a lock) the first
    /// time it is needed.
    async fn snapshot(&mut self, manager: &Manager) -> Result<&Snapshot, Error> {
        let snapshot = match self.snapshot.take() {
            Some(snapshot) => snapshot,
            None => load_snapshot(manager, self.stored.as_ref(), &self.fresh).await?,
        };
        Ok(self.snapshot.insert(snapshot))
    }
}

/// The session `stored` as the store has it now, or an empty new one
/// reporting the id `fresh` if there is none.
async fn load_snapshot(
    manager: &Manager,
    stored: Option<&SessionId>,
    fresh: &SessionId,
) -> Result<Snapshot, Error> {
    if let Some(id) = stored {
        let key = manager.key(id);
        if let Some(record) = manager.store().load(&key).await? {
            match manager
                .open_for(&key, &record.data)
                .and_then(|plain| SessionData::decode(&plain))
            {
                Ok(data) => {
                    return Ok(Snapshot {
                        id: id.clone(),
                        is_new: false,
                        data,
                        principal: record.principal,
                        created: record.created,
                        accessed: record.accessed,
                        expires: record.expires,
                    });
                }
                Err(Error::Corrupt { reason }) => {
                    tracing::warn!(%reason, "unreadable session record; reading as empty");
                }
                Err(e) => return Err(e),
            }
        }
    }
    let now = Timestamp::now();
    let config = manager.config();
    let idle = now.saturating_add(config.idle_timeout);
    Ok(Snapshot {
        id: fresh.clone(),
        is_new: true,
        data: SessionData::new(),
        principal: None,
        created: now,
        accessed: now,
        expires: config
            .absolute_timeout
            .map_or(idle, |abs| idle.min(now.saturating_add(abs))),
    })
}

/// Commit `open` on a task of its own: once started, neither a handler
/// that is dropped nor a client that disconnects can cut it short between
/// the write and the unlock.
async fn commit(open: Session, opened_expiry: Option<Expiry>) -> Result<Done, Error> {
    let id = open.id().clone();
    let expiry = open.expiry();
    let remaining = Duration::from_millis(
        u64::try_from(open.expires().as_millis() - Timestamp::now().as_millis()).unwrap_or(0),
    );
    match tokio::spawn(open.commit()).await {
        Ok(Ok(committed)) => Ok(Done {
            id,
            remaining,
            committed,
            expiry,
            expiry_changed: expiry != opened_expiry,
        }),
        Ok(Err(e)) => Err(e),
        // The commit panicked, or the runtime is shutting down.
        Err(e) => Err(Error::backend(e)),
    }
}

/// Whether the cookie of a session with this own `expiry` has a `Max-Age`.
fn persistent(config: &HttpConfig, expiry: Option<Expiry>) -> bool {
    match expiry {
        None => config.cookie.lifetime == CookieLifetime::Persistent,
        Some(Expiry::OnBrowserClose) => false,
        // "Remember me" (or a fixed end) is a lasting cookie even where the
        // layer's default is a browser-session one.
        Some(_) => true,
    }
}

/// The id headers for a session's end: send the id when it is new or
/// changed (and whenever the expiry a persistent cookie shows moved, and
/// whenever the session's own expiry changed), clear it after a logout or
/// when it named no session.
fn id_headers(ended: &Ended, offered: &Offered, deleted: bool, config: &HttpConfig) -> Option<HeaderWrite> {
    match ended {
        // A fresh session that holds nothing is never stored (no row for
        // visitors who only look), so there is no id to hand out either.
        Ended::Committed(done) if done.committed.is_stored() => {
            let persistent = persistent(config, done.expiry);
            // A persistent cookie's Max-Age follows the stored expiry, so it
            // is re-sent only when the commit moved that expiry; a change of
            // the session's own expiry may also turn it into a browser-session
            // cookie, which must be re-sent to lose its Max-Age.
            let refresh = config.carrier != IdCarrier::Cookie
                || (done.committed.expiry_moved() && (persistent || done.expiry_changed));
            let id_changed = offered.id() != Some(&done.id);
            if id_changed || refresh {
                write_id(config, &done.id, persistent.then_some(done.remaining))
            } else {
                None
            }
        }
        // The offered id named no session (or was logged out): stop
        // sending it.
        Ended::Committed(_) if deleted || offered.is_something() => clear_id(config),
        Ended::Committed(_) => None,
        Ended::Gone => clear_id(config),
        Ended::Untouched { .. } if deleted => clear_id(config),
        Ended::Untouched { .. } => None,
    }
}

/// Whether a request may be run again when its session's commit conflicts
/// ([`Finish::conflict`]): a safe method (`GET`, `HEAD`, `OPTIONS`, which
/// by HTTP's rules change nothing else on the server) with no body. Bodies
/// are streamed to the handler, not buffered, so a request with one (a
/// `Content-Length` above 0, or any `Transfer-Encoding`) cannot be replayed.
pub fn replayable(method: &str, headers: &impl RequestHeaders) -> bool {
    let safe = matches!(method, "GET" | "HEAD" | "OPTIONS");
    let chunked = headers.values(&http::header::TRANSFER_ENCODING).next().is_some();
    let sized = headers
        .values(&http::header::CONTENT_LENGTH)
        .any(|v| v.iter().any(|b| *b != b'0' && !b.is_ascii_whitespace()));
    safe && !chunked && !sized
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
    /// The session's commit (at the end of the request, or the handler's
    /// early [`commit_now`](RequestSession::commit_now)) failed with an
    /// optimistic [`Error::Conflict`]: nothing of the request's session
    /// changes was saved, and running the handler again on a fresh session
    /// may succeed. An integration that retries safe requests does that
    /// instead of sending the response.
    pub conflict: bool,
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
    /// - released early by the handler ([`RequestSession::commit_now`],
    ///   [`RequestSession::rollback`]): nothing more is written, whatever
    ///   the status; the id headers follow that early end (a session the
    ///   early commit created gets its id);
    /// - a `5xx` response rolls the session back (the handler failed; its
    ///   half-made changes are not saved) and releases the lock;
    /// - otherwise the session is committed — saved if changed, touched if
    ///   its expiry is due to slide, unlocked in every case — on a task of
    ///   its own, so a client that disconnects now cannot cut it short;
    /// - the client is sent its id when it is new or changed, for a
    ///   persistent cookie or a header whenever the stored expiry moved
    ///   (the cookie's `Max-Age` is that expiry minus now), and when the
    ///   session's own expiry changed; or told to forget it after a logout
    ///   or when its id named no session. Whether the cookie is persistent
    ///   follows the session's own [`Expiry`] first, then
    ///   [`CookieLifetime`];
    /// - a session deleted meanwhile ([`Error::Gone`]) drops the save,
    ///   clears the id and keeps the response; an optimistic
    ///   [`Error::Conflict`] replaces the response with a `409` and sets
    ///   [`Finish::conflict`]; any other commit failure replaces the
    ///   response ([`Reply::for_error`]).
    pub async fn finish(self, status: StatusCode, config: &HttpConfig) -> Finish {
        // Waits if a task spawned by the handler is still inside a session call.
        let State {
            open,
            opened_expiry,
            deleted,
            released,
        } = std::mem::take(&mut *self.session.state.lock().await);
        let offered = &self.session.offered;
        let mut out = Finish::default();
        if let Some(released) = released {
            // The handler's early commit or rollback was the session's end;
            // it already saw any error of it.
            out.conflict = matches!(released.ended, Ended::Untouched { conflict: true });
            out.headers
                .extend(id_headers(&released.ended, offered, deleted, config));
            return out;
        }
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
        let ended = match commit(open, opened_expiry).await {
            Ok(done) => Ended::Committed(done),
            Err(Error::Gone) => {
                tracing::info!(session = ?id, "session was deleted meanwhile; its save was dropped");
                Ended::Gone
            }
            Err(e) => {
                let conflict = matches!(e, Error::Conflict { .. });
                if !conflict {
                    tracing::error!(session = ?id, error = %e, "session commit failed");
                }
                out.replace = Some(Reply::for_error(&e));
                out.conflict = conflict;
                Ended::Untouched { conflict }
            }
        };
        out.headers.extend(id_headers(&ended, offered, deleted, config));
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

#[cfg(test)]
mod tests {
    use super::*;
    use cloakroom_core::{MemoryStore, Namespace};
    use http::{HeaderMap, HeaderValue};

    fn manager() -> Manager {
        Manager::builder(Arc::new(MemoryStore::new()), Namespace::new("http-unit").unwrap())
            .lock_wait(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn cookie(id: &SessionId) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            HeaderValue::from_str(&format!("id={id}")).unwrap(),
        );
        h
    }

    fn lines(finish: &Finish) -> Vec<String> {
        finish
            .headers
            .iter()
            .map(|h| h.value.to_str().unwrap().to_owned())
            .collect()
    }

    /// A stored session holding `n = 1`.
    async fn stored(manager: &Manager, config: &HttpConfig) -> SessionId {
        let scope = Scope::new(manager.clone(), config, &HeaderMap::new());
        scope.session().insert("n", &1u64).await.unwrap();
        let id = scope.session().id().await.unwrap();
        assert!(scope.finish(StatusCode::OK, config).await.replace.is_none());
        id
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commit_now_releases_the_lock_and_refuses_later_changes() {
        let (manager, config) = (manager(), HttpConfig::default());
        let id = stored(&manager, &config).await;
        let a = Scope::new(manager.clone(), &config, &cookie(&id));
        a.session().insert("n", &2u64).await.unwrap();
        a.session().commit_now().await.unwrap();
        // Another request of the visitor gets the lock while `a` lives on.
        let b = Scope::new(manager.clone(), &config, &cookie(&id));
        let seen: Option<u64> = tokio::time::timeout(Duration::from_secs(2), b.session().get("n"))
            .await
            .expect("the early commit released the lock")
            .unwrap();
        assert_eq!(seen, Some(2));
        b.session().insert("n", &3u64).await.unwrap();
        assert!(b.finish(StatusCode::OK, &config).await.replace.is_none());

        let session = a.session();
        assert_eq!(
            session.get::<u64>("n").await.unwrap(),
            Some(2),
            "the committed data"
        );
        assert!(!session.is_new().await.unwrap());
        assert_eq!(session.id().await.unwrap(), id);
        assert!(matches!(session.insert("x", &1).await, Err(Error::Released)));
        assert!(matches!(session.cycle_id().await, Err(Error::Released)));
        assert!(matches!(session.delete().await, Err(Error::Released)));
        assert!(matches!(session.flush().await, Err(Error::Released)));
        assert!(matches!(session.set_expiry(None).await, Err(Error::Released)));
        session.commit_now().await.unwrap();
        let finish = a.finish(StatusCode::OK, &config).await;
        assert!(finish.replace.is_none() && !finish.conflict);
        // The end of `a` wrote nothing over `b`'s save.
        let now = manager.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(now.get::<u64>("n").unwrap(), Some(3));
    }

    #[tokio::test]
    async fn an_early_commit_of_a_new_session_still_sends_its_id() {
        let (manager, config) = (manager(), HttpConfig::default());
        let scope = Scope::new(manager.clone(), &config, &HeaderMap::new());
        scope.session().insert("n", &1u64).await.unwrap();
        scope.session().commit_now().await.unwrap();
        let id = scope.session().id().await.unwrap();
        // Even a failed page: the session was stored, so it gets its id.
        let finish = scope.finish(StatusCode::INTERNAL_SERVER_ERROR, &config).await;
        let lines = lines(&finish);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(&format!("id={id}")), "{lines:?}");
        assert!(manager.open_read_only(&id).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn rollback_discards_and_reads_the_stored_session() {
        let (manager, config) = (manager(), HttpConfig::default());
        let id = stored(&manager, &config).await;
        let scope = Scope::new(manager.clone(), &config, &cookie(&id));
        let session = scope.session();
        session.insert("n", &999u64).await.unwrap();
        session.cycle_id().await.unwrap();
        session.rollback().await.unwrap();
        assert_eq!(session.get::<u64>("n").await.unwrap(), Some(1));
        assert_eq!(session.read::<u64>("n").await.unwrap(), Some(1));
        assert_eq!(session.id().await.unwrap(), id, "the cycle was rolled back too");
        assert!(matches!(session.remove("n").await, Err(Error::Released)));
        let finish = scope.finish(StatusCode::OK, &config).await;
        assert!(finish.headers.is_empty() && finish.replace.is_none());
        let now = manager.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(now.get::<u64>("n").unwrap(), Some(1));
    }

    #[tokio::test]
    async fn the_cookie_follows_the_sessions_own_expiry() {
        let manager = manager();
        let browser = HttpConfig {
            cookie: crate::CookieConfig {
                lifetime: CookieLifetime::BrowserSession,
                ..crate::CookieConfig::default()
            },
            ..HttpConfig::default()
        };
        for (config, expiry, max_age) in [
            (HttpConfig::default(), None, Some("Max-Age=86400")),
            (
                HttpConfig::default(),
                Some(Expiry::OnInactivity(Duration::from_secs(30 * 86_400))),
                Some("Max-Age=2592000"),
            ),
            (HttpConfig::default(), Some(Expiry::OnBrowserClose), None),
            (browser.clone(), None, None),
            (
                browser.clone(),
                Some(Expiry::OnInactivity(Duration::from_secs(600))),
                Some("Max-Age=600"),
            ),
        ] {
            let scope = Scope::new(manager.clone(), &config, &HeaderMap::new());
            scope.session().set_expiry(expiry).await.unwrap();
            scope.session().insert("n", &1u64).await.unwrap();
            let lines = lines(&scope.finish(StatusCode::OK, &config).await);
            assert_eq!(lines.len(), 1);
            let attrs: Vec<&str> = lines[0].split("; ").collect();
            let found = attrs.iter().find(|a| a.starts_with("Max-Age")).copied();
            assert_eq!(found, max_age, "{expiry:?}: {}", lines[0]);
            assert!(!lines[0].contains("Expires"), "{}", lines[0]);
        }
    }

    #[tokio::test]
    async fn turning_a_session_into_a_browser_close_one_resends_its_cookie() {
        let (manager, config) = (manager(), HttpConfig::default());
        let id = stored(&manager, &config).await;
        let scope = Scope::new(manager.clone(), &config, &cookie(&id));
        scope
            .session()
            .set_expiry(Some(Expiry::OnBrowserClose))
            .await
            .unwrap();
        let lines = lines(&scope.finish(StatusCode::OK, &config).await);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(&format!("id={id}")) && !lines[0].contains("Max-Age"));
        // Next time, an unchanged id of a browser-close session is not re-sent.
        let scope = Scope::new(manager.clone(), &config, &cookie(&id));
        scope.session().insert("n", &5u64).await.unwrap();
        assert!(scope.finish(StatusCode::OK, &config).await.headers.is_empty());
    }

    #[tokio::test]
    async fn flush_clears_the_old_id_or_sends_the_new_one() {
        let (manager, config) = (manager(), HttpConfig::default());
        for keep in [false, true] {
            let id = stored(&manager, &config).await;
            let scope = Scope::new(manager.clone(), &config, &cookie(&id));
            assert!(scope.session().flush().await.unwrap());
            assert_eq!(scope.session().get::<u64>("n").await.unwrap(), None);
            if keep {
                scope.session().insert("cart", "kept").await.unwrap();
            }
            let fresh = scope.session().id().await.unwrap();
            assert_ne!(fresh, id);
            let lines = lines(&scope.finish(StatusCode::OK, &config).await);
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(!lines[0].contains(id.as_str()), "{lines:?}");
            if keep {
                assert!(lines[0].starts_with(&format!("id={fresh}")), "{lines:?}");
            } else {
                assert!(
                    lines[0].starts_with("id=;") && lines[0].contains("Max-Age=0"),
                    "{lines:?}"
                );
            }
            assert!(manager.open_read_only(&id).await.unwrap().is_none());
        }
    }

    #[test]
    fn only_bodiless_safe_requests_are_replayable() {
        let mut h = HeaderMap::new();
        assert!(replayable("GET", &h) && replayable("HEAD", &h) && replayable("OPTIONS", &h));
        assert!(!replayable("POST", &h) && !replayable("DELETE", &h));
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert!(replayable("GET", &h));
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        assert!(!replayable("GET", &h));
        let mut h = HeaderMap::new();
        h.insert(
            http::header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        assert!(!replayable("GET", &h));
    }
}
