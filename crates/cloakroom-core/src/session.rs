//! One request's view of a session.

use std::sync::Arc;

use tracing::Instrument;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::SessionData;
use crate::engine::Hold;
use crate::error::{Error, Result};
use crate::id::{SessionId, SessionKey};
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

    /// When the session will expire if committed now.
    pub fn expires(&self) -> Timestamp {
        let now = Timestamp::now();
        let created = self.loaded.as_ref().map_or(now, |r| r.created);
        self.manager.expiry(created, now)
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
    /// Takes effect at [`commit`](Session::commit): the data is written under
    /// the new id first and the old record is deleted after, so there is no
    /// moment without a session; if the process dies in between, both exist
    /// until the old one expires.
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
            expires: self.manager.expiry(created, now),
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

    async fn commit_in_span(mut self) -> Result<Committed> {
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
        let expires = self.manager.expiry(loaded.created, now);
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
        store
            .create(&self.manager.key(&self.id), self.write(now)?)
            .await?;
        match guard {
            Some(hold) => {
                hold.finish(Finish::Delete).await?;
            }
            None => {
                store.delete(&self.manager.key(&old_id)).await?;
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
        let guard = self.lock.take();
        if self.loaded.is_none() {
            return Ok(false);
        }
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
            self.manager.notify_delete(&key).await;
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
