//! One request's view of a session.

use std::sync::Arc;

use tracing::Instrument;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{Expiry, SessionData};
use crate::engine::Hold;
use crate::error::{Error, Result};
use crate::id::{Principal, SessionId, SessionKey};
use crate::manager::{Manager, Policy};
use crate::record::{Record, RecordWrite, Timestamp};
use crate::seal::Keyring;
use crate::store::{Finish, Finished};

/// What [`Session::commit`] did, so a web layer knows whether the stored
/// expiry moved (and a persistent cookie's Max-Age with it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Committed {
    /// A new record was written (a new session, or a new id after `cycle_id`).
    Created,
    /// Changed data was saved.
    Saved,
    /// Only access time and expiry were moved forward (the touch was due).
    Touched,
    /// The stored session was left as it was (unchanged, touch not due).
    Unchanged,
    /// A new session that held nothing was not stored at all.
    NotStored,
}

impl Committed {
    /// Whether a record for this session exists after the commit.
    pub fn is_stored(self) -> bool {
        !matches!(self, Committed::NotStored)
    }

    /// Whether the stored expiry was set anew by this commit.
    pub fn expiry_moved(self) -> bool {
        matches!(self, Committed::Created | Committed::Saved | Committed::Touched)
    }
}

/// A session opened by [`Manager::open`] for one request.
///
/// Finish it with [`commit`](Session::commit), [`rollback`](Session::rollback)
/// or [`delete`](Session::delete). Dropping it unfinished (an error path, a
/// panic, a cancelled request) writes nothing and releases its lock.
#[derive(Debug)]
pub struct Session {
    manager: Manager,
    id: SessionId,
    data: SessionData,
    /// The record as opened; `None` for a session not stored yet.
    loaded: Option<Record>,
    dirty: bool,
    /// This request's turn on the session's lock (Serialized only).
    lock: Option<Hold>,
    /// Set by `cycle_id`: the stored id to retire at commit.
    retired_id: Option<SessionId>,
    /// Who the session belongs to, as it will be stored.
    principal: Option<Principal>,
}

impl Session {
    pub(crate) async fn open(manager: Manager, id: Option<&SessionId>) -> Result<Session> {
        // One reference count, not a copy of every metric handle.
        let kept = manager.clone();
        let span = kept.labels().session_span("cloakroom.open", id);
        let result = Self::open_in_span(manager, id).instrument(span.clone()).await;
        kept.labels().outcome(&span, &result);
        result
    }

    async fn open_in_span(manager: Manager, id: Option<&SessionId>) -> Result<Session> {
        let Some(id) = id else {
            return Ok(Session::fresh(manager));
        };
        let key = manager.key(id);
        let config = manager.config().clone();
        match config.policy {
            Policy::Serialized => {
                let started = std::time::Instant::now();
                let hold = manager.engine().open(&key).await?;
                manager.labels().lock_waited(started.elapsed());
                let Some(record) = hold.record().cloned() else {
                    hold.abandon();
                    return Ok(Session::fresh(manager));
                };
                // On a corrupt record the hold is dropped here, which passes
                // the turn on without writing.
                let data = manager.decode_stored(&key, &record.data)?;
                Ok(Session::stored(manager, id.clone(), data, record, Some(hold)))
            }
            Policy::Optimistic | Policy::Lossy => match manager.store().load(&key).await? {
                Some(record) => {
                    let data = manager.decode_stored(&key, &record.data)?;
                    Ok(Session::stored(manager, id.clone(), data, record, None))
                }
                None => Ok(Session::fresh(manager)),
            },
        }
    }

    fn fresh(manager: Manager) -> Session {
        Session {
            manager,
            id: SessionId::generate(),
            data: SessionData::new(),
            loaded: None,
            dirty: false,
            lock: None,
            retired_id: None,
            principal: None,
        }
    }

    fn stored(
        manager: Manager,
        id: SessionId,
        data: SessionData,
        record: Record,
        lock: Option<Hold>,
    ) -> Session {
        Session {
            manager,
            id,
            data,
            principal: record.principal.clone(),
            loaded: Some(record),
            dirty: false,
            lock,
            retired_id: None,
        }
    }

    /// The session's id (after [`cycle_id`](Session::cycle_id), the new one).
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// Whether the session is not stored yet.
    pub fn is_new(&self) -> bool {
        self.loaded.is_none()
    }

    /// Whether the data changed since it was opened.
    pub fn is_modified(&self) -> bool {
        self.dirty
    }

    /// The stored version as opened (`None` for a new session).
    pub fn version(&self) -> Option<u64> {
        self.loaded.as_ref().map(|r| r.version)
    }

    /// When the session was created (now, for a new session).
    pub fn created(&self) -> Timestamp {
        self.loaded.as_ref().map_or_else(Timestamp::now, |r| r.created)
    }

    /// When the session was last used before this request (now, for a new
    /// session). Updated when a commit saves or touches it.
    pub fn accessed(&self) -> Timestamp {
        self.loaded.as_ref().map_or_else(Timestamp::now, |r| r.accessed)
    }

    /// When the session will expire if committed now: from its own
    /// [`Expiry`] if it has one, otherwise the manager's idle timeout, and
    /// never after the manager's absolute timeout.
    pub fn expires(&self) -> Timestamp {
        self.manager
            .expiry(self.data.expiry(), self.created(), Timestamp::now())
    }

    /// The session's own expiry; `None` means the manager's default.
    pub fn expiry(&self) -> Option<Expiry> {
        self.data.expiry()
    }

    /// Give this session an expiry of its own, kept with it on every later
    /// request: `Some(Expiry::OnInactivity(30 days))` for "remember me",
    /// `Some(Expiry::OnBrowserClose)` for a cookie the browser forgets,
    /// `None` for the manager's default. The web layers make the cookie's
    /// `Max-Age` follow it.
    pub fn set_expiry(&mut self, expiry: Option<Expiry>) {
        self.dirty |= self.data.set_expiry(expiry);
    }

    /// Who the session belongs to.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Tag the session with its user (on login; `None` on logout), so
    /// [`Manager::sessions_of`] lists it and [`Manager::revoke_all`] can end
    /// it. Stored at commit.
    pub fn set_principal(&mut self, principal: Option<Principal>) {
        if self.principal != principal {
            self.principal = principal;
            self.dirty = true;
        }
    }

    /// The value under `key` as `T`. See [`SessionData::get`].
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.data.get(key)
    }

    /// Store `value` under `key`. See [`SessionData::insert`].
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<()> {
        if self.data.insert(key, value)? {
            self.dirty = true;
        }
        Ok(())
    }

    /// Remove `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let removed = self.data.remove(key);
        self.dirty |= removed;
        removed
    }

    /// Remove every key.
    pub fn clear(&mut self) {
        self.dirty |= self.data.clear();
    }

    /// The session's data.
    pub fn data(&self) -> &SessionData {
        &self.data
    }

    /// The session's data, for changes made through [`SessionData`] directly;
    /// the session counts as modified.
    pub fn data_mut(&mut self) -> &mut SessionData {
        self.dirty = true;
        &mut self.data
    }

    /// Give the session a new id, keeping its data: call on login, so an id
    /// planted before login (session fixation) is worth nothing after.
    ///
    /// Takes effect at [`commit`](Session::commit), as one step: the record
    /// moves to the new id and the old id stops existing together. If the
    /// session was deleted meanwhile (a logout elsewhere, a revocation), the
    /// commit fails with [`Error::Gone`] and nothing is created. On a store
    /// that cannot move a record atomically (files, Redis Cluster, whose two
    /// ids live on different nodes) the old record is deleted first and the
    /// new one created after: a crash in between leaves neither, never both.
    pub fn cycle_id(&mut self) {
        if self.loaded.is_some() && self.retired_id.is_none() {
            self.retired_id = Some(self.id.clone());
        }
        self.id = SessionId::generate();
        self.dirty = true;
    }

    /// The record to write under the session's current id (after
    /// `cycle_id`, the new one): encoded, sealed for that id if the manager
    /// has a keyring, and checked against the size limit as stored.
    fn write(&self, now: Timestamp) -> Result<RecordWrite> {
        let plain = self.data.encode();
        let limit = self
            .manager
            .config()
            .max_record_bytes
            .min(self.manager.store().capabilities().max_record_bytes);
        // Sealing adds a fixed overhead, so the stored size is known before
        // spending the cipher on a record that will be refused.
        let stored_len = match self.manager.keyring() {
            Some(_) => plain.len().saturating_add(Keyring::OVERHEAD),
            None => plain.len(),
        };
        if stored_len > limit {
            return Err(Error::TooLarge {
                size: stored_len,
                limit,
            });
        }
        let data = self.manager.seal_for(&self.manager.key(&self.id), &plain);
        debug_assert_eq!(data.len(), stored_len);
        let created = self.loaded.as_ref().map_or(now, |r| r.created);
        Ok(RecordWrite {
            data,
            created,
            accessed: now,
            expires: self.manager.expiry(self.data.expiry(), created, now),
            principal: self.principal.clone(),
        })
    }

    /// Save the session if it changed (touch it if only its expiry is due to
    /// slide) and release its lock.
    ///
    /// Errors: [`Error::Conflict`] (optimistic, someone saved first),
    /// [`Error::LeaseLost`] (the lock's lease ran out), [`Error::Gone`] (the
    /// session was deleted meanwhile; the save is dropped so a logout stays a
    /// logout), [`Error::TooLarge`]. The lock is released in every case.
    pub async fn commit(self) -> Result<Committed> {
        let kept = self.manager.clone();
        let span = kept.labels().session_span("cloakroom.commit", Some(&self.id));
        let result = self.commit_in_span().instrument(span.clone()).await;
        kept.labels().outcome(&span, &result);
        result
    }

    async fn commit_in_span(self) -> Result<Committed> {
        let manager = self.manager.clone();
        // The cap applies when a principal is newly set: that is a login.
        let newly_owned = match (&self.principal, &self.loaded) {
            (Some(p), Some(loaded)) if loaded.principal.as_ref() == Some(p) => None,
            (Some(p), _) => Some(p.clone()),
            (None, _) => None,
        };
        // Only a login needs the stored id afterwards; most commits skip it.
        let newly_owned = newly_owned.map(|p| (p, manager.key(&self.id).id));
        let committed = self.commit_record().await?;
        if let Some((principal, stored_id)) = newly_owned.filter(|_| committed.is_stored()) {
            // The commit stands whatever happens here: the session is saved,
            // and a failed revocation of older ones is not this request's
            // failure.
            if let Err(e) = manager.enforce_principal_cap(&principal, &stored_id).await {
                tracing::warn!(error = %e, "could not revoke sessions over the per-principal limit");
            }
        }
        Ok(committed)
    }

    async fn commit_record(mut self) -> Result<Committed> {
        let now = Timestamp::now();
        let guard = self.lock.take();
        let store = Arc::clone(self.manager.store());
        if let Some(old_id) = self.retired_id.take() {
            return self.commit_cycled(old_id, guard, now).await;
        }
        let key = self.manager.key(&self.id);
        let Some(loaded) = &self.loaded else {
            // A new session is stored only once it holds something: requests
            // that never write leave no rows behind.
            if self.data.is_empty() {
                return Ok(Committed::NotStored);
            }
            store.create(&key, self.write(now)?).await?;
            return Ok(Committed::Created);
        };
        let touch_due = self.manager.touch_due(loaded, now);
        let expires = self.manager.expiry(self.data.expiry(), loaded.created, now);
        match guard {
            Some(hold) if self.dirty => {
                // Encoded before the turn ends: a TooLarge session writes
                // nothing and the hold's drop passes the turn on.
                let write = self.write(now)?;
                hold.finish(Finish::Save(write)).await?;
                Ok(Committed::Saved)
            }
            Some(hold) if touch_due => {
                hold.finish(Finish::Touch {
                    accessed: now,
                    expires,
                })
                .await?;
                Ok(Committed::Touched)
            }
            Some(hold) => {
                // Waits for the write of any earlier holder whose state this
                // request saw: its response must not show data that may
                // still be lost.
                hold.finish(Finish::Nothing).await?;
                Ok(Committed::Unchanged)
            }
            None if self.dirty => {
                let expected = match self.manager.config().policy {
                    Policy::Optimistic | Policy::Serialized => Some(loaded.version),
                    Policy::Lossy => None,
                };
                store.save(&key, self.write(now)?, expected).await?;
                Ok(Committed::Saved)
            }
            None if touch_due => {
                store.touch(&key, now, expires).await?;
                Ok(Committed::Touched)
            }
            None => Ok(Committed::Unchanged),
        }
    }

    async fn commit_cycled(
        self,
        old_id: SessionId,
        guard: Option<Hold>,
        now: Timestamp,
    ) -> Result<Committed> {
        let store = self.manager.store();
        // The new id is fresh from the CSPRNG and known to nobody yet, so it
        // needs no lock; the old one is still locked by `guard` if Serialized.
        let write = self.write(now)?;
        match guard {
            Some(hold) => {
                let to = self.manager.key(&self.id).id;
                hold.finish(Finish::Rotate { to, write }).await?;
            }
            None => {
                // No lock to move under: the old id goes first, so a
                // logout that won the race is not undone under the new id.
                if !store.delete(&self.manager.key(&old_id)).await? {
                    return Err(Error::Gone);
                }
                store.create(&self.manager.key(&self.id), write).await?;
            }
        }
        Ok(Committed::Created)
    }

    /// Release the lock and write nothing: every change made since opening is
    /// discarded.
    pub async fn rollback(mut self) -> Result<()> {
        if let Some(hold) = self.lock.take() {
            hold.abandon();
        }
        Ok(())
    }

    /// Delete the session (logout) and release its lock; delete listeners
    /// run if a live record was deleted. Returns whether one was.
    pub async fn delete(mut self) -> Result<bool> {
        self.delete_stored().await
    }

    /// Delete the stored session, as [`delete`](Session::delete) does, and
    /// go on with a fresh, empty one under a new id (not stored unless
    /// something is written to it): "log out, then keep a cart" in one
    /// request. Returns whether a live record was deleted.
    pub async fn flush(&mut self) -> Result<bool> {
        let deleted = self.delete_stored().await?;
        self.id = SessionId::generate();
        self.data = SessionData::new();
        self.loaded = None;
        self.dirty = false;
        self.principal = None;
        Ok(deleted)
    }

    async fn delete_stored(&mut self) -> Result<bool> {
        let guard = self.lock.take();
        let Some(loaded) = self.loaded.clone() else {
            return Ok(false);
        };
        let stored_id = self.retired_id.take().unwrap_or_else(|| self.id.clone());
        let key = self.manager.key(&stored_id);
        let deleted = match guard {
            Some(hold) => matches!(
                hold.finish(Finish::Delete).await?,
                Finished::Deleted { was_live: true }
            ),
            None => self.manager.store().delete(&key).await?,
        };
        if deleted {
            self.manager.notify_delete(key, loaded).await;
        }
        Ok(deleted)
    }

    /// The key this session is stored under once committed.
    pub fn key(&self) -> SessionKey {
        self.manager.key(&self.id)
    }
}

/// A session opened with [`Manager::open_read_only`]: no lock, no writes.
#[derive(Debug, Clone)]
pub struct ReadOnlySession {
    id: SessionId,
    data: SessionData,
    expires: Timestamp,
    version: u64,
}

impl ReadOnlySession {
    pub(crate) fn new(id: SessionId, data: SessionData, record: &Record) -> Self {
        ReadOnlySession {
            id,
            data,
            expires: record.expires,
            version: record.version,
        }
    }

    /// The session's id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    /// The value under `key` as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.data.get(key)
    }

    /// The session's data.
    pub fn data(&self) -> &SessionData {
        &self.data
    }

    /// When the stored session expires.
    pub fn expires(&self) -> Timestamp {
        self.expires
    }

    /// The stored version read.
    pub fn version(&self) -> u64 {
        self.version
    }
}
