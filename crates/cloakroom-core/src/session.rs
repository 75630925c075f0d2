//! One request's view of a session.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::codec::SessionData;
use crate::error::{Error, Result};
use crate::id::{SessionId, SessionKey};
use crate::manager::{Manager, Policy};
use crate::record::{Record, RecordWrite, Timestamp};
use crate::store::{LockGuard, LockOptions};

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
    lock: Option<HeldLock>,
    /// Set by `cycle_id`: the stored id to retire at commit.
    retired_id: Option<SessionId>,
}

/// A lock held for the life of a session, renewed in the background.
#[derive(Debug)]
struct HeldLock {
    guard: Arc<Mutex<Option<Box<dyn LockGuard>>>>,
    renewer: Option<JoinHandle<()>>,
}

impl HeldLock {
    fn new(guard: Box<dyn LockGuard>, lease: Duration, renew: bool) -> Self {
        let guard = Arc::new(Mutex::new(Some(guard)));
        let renewer = renew.then(|| tokio::spawn(renew_lease(Arc::clone(&guard), lease)));
        HeldLock { guard, renewer }
    }

    /// Stop renewing and hand over the guard.
    async fn take(mut self) -> Option<Box<dyn LockGuard>> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.guard.lock().await.take()
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        // Dropping the renewer's handle does not stop it; aborting does, and
        // with it goes its reference to the guard, whose own Drop releases.
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

/// Keep the lease alive while a long request holds the session. Renewing at a
/// third of the lease leaves two chances before it runs out.
async fn renew_lease(guard: Arc<Mutex<Option<Box<dyn LockGuard>>>>, lease: Duration) {
    let period = (lease / 3).max(Duration::from_millis(1));
    loop {
        tokio::time::sleep(period).await;
        let mut slot = guard.lock().await;
        let Some(g) = slot.as_mut() else { return };
        if let Err(e) = g.renew(lease).await {
            // The save will report LeaseLost; nothing more to do here.
            tracing::warn!(key = %g.key(), error = %e, "session lease renewal failed");
            return;
        }
    }
}

impl Session {
    pub(crate) async fn open(manager: Manager, id: Option<&SessionId>) -> Result<Session> {
        let Some(id) = id else {
            return Ok(Session::fresh(manager));
        };
        let key = manager.key(id);
        let config = manager.config().clone();
        match config.policy {
            Policy::Serialized => {
                let options = LockOptions::new(config.lease, config.lock_wait);
                let guard = manager.store().lock(&key, options).await?;
                let Some(record) = guard.record().cloned() else {
                    guard.unlock().await?;
                    return Ok(Session::fresh(manager));
                };
                // On a corrupt record the guard is dropped here, which unlocks.
                let data = SessionData::decode(&record.data)?;
                let lock = HeldLock::new(guard, config.lease, config.renew_lease);
                Ok(Session::stored(manager, id.clone(), data, record, Some(lock)))
            }
            Policy::Optimistic | Policy::Lossy => match manager.store().load(&key).await? {
                Some(record) => {
                    let data = SessionData::decode(&record.data)?;
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
        lock: Option<HeldLock>,
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

    fn write(&self, now: Timestamp) -> Result<RecordWrite> {
        let data = self.data.encode();
        let limit = self
            .manager
            .config()
            .max_record_bytes
            .min(self.manager.store().capabilities().max_record_bytes);
        if data.len() > limit {
            return Err(Error::TooLarge {
                size: data.len(),
                limit,
            });
        }
        let created = self.loaded.as_ref().map_or(now, |r| r.created);
        Ok(RecordWrite {
            data,
            created,
            accessed: now,
            expires: self.manager.expiry(created, now),
        })
    }

    async fn take_guard(&mut self) -> Option<Box<dyn LockGuard>> {
        match self.lock.take() {
            Some(lock) => lock.take().await,
            None => None,
        }
    }

    /// Save the session if it changed (touch it if only its expiry is due to
    /// slide) and release its lock.
    ///
    /// Errors: [`Error::Conflict`] (optimistic, someone saved first),
    /// [`Error::LeaseLost`] (the lock's lease ran out), [`Error::Gone`] (the
    /// session was deleted meanwhile; the save is dropped so a logout stays a
    /// logout), [`Error::TooLarge`]. The lock is released in every case.
    pub async fn commit(mut self) -> Result<Committed> {
        let now = Timestamp::now();
        let guard = self.take_guard().await;
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
            Some(guard) if self.dirty => {
                guard.save_and_unlock(self.write(now)?).await?;
                Ok(Committed::Saved)
            }
            Some(guard) if touch_due => {
                guard.touch_and_unlock(now, expires).await?;
                Ok(Committed::Touched)
            }
            Some(guard) => {
                guard.unlock().await?;
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
        guard: Option<Box<dyn LockGuard>>,
        now: Timestamp,
    ) -> Result<Committed> {
        let store = self.manager.store();
        // The new id is fresh from the CSPRNG and known to nobody yet, so it
        // needs no lock; the old one is still locked by `guard` if Serialized.
        store
            .create(&self.manager.key(&self.id), self.write(now)?)
            .await?;
        match guard {
            Some(guard) => guard.delete_and_unlock().await?,
            None => store.delete(&self.manager.key(&old_id)).await?,
        };
        Ok(Committed::Created)
    }

    /// Release the lock and write nothing: every change made since opening is
    /// discarded.
    pub async fn rollback(mut self) -> Result<()> {
        match self.take_guard().await {
            Some(guard) => guard.unlock().await,
            None => Ok(()),
        }
    }

    /// Delete the session (logout) and release its lock; delete listeners
    /// run if a live record was deleted. Returns whether one was.
    pub async fn delete(mut self) -> Result<bool> {
        let guard = self.take_guard().await;
        if self.loaded.is_none() {
            return Ok(false);
        }
        let stored_id = self.retired_id.take().unwrap_or_else(|| self.id.clone());
        let key = self.manager.key(&stored_id);
        let deleted = match guard {
            Some(guard) => guard.delete_and_unlock().await?,
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
    pub(crate) fn new(id: SessionId, record: &Record) -> Result<Self> {
        Ok(ReadOnlySession {
            id,
            data: SessionData::decode(&record.data)?,
            expires: record.expires,
            version: record.version,
        })
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
