//! The in-memory store: one process only, for tests, demos and single-process
//! deployments that accept losing sessions on restart.
//!
//! Locks are a per-key FIFO queue with direct hand-off: the releaser picks the
//! next waiter, makes it the holder and wakes it through a oneshot channel, so
//! a waiter starts the moment the lock is free and nobody polls.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::id::{Namespace, Principal, SessionId, SessionKey};
use crate::record::{check_loaded_is_live, Record, RecordWrite, Timestamp};
use crate::store::{
    Acquired, Capabilities, Cursor, Finish, Finished, HeldSession, IdPage, Lease, LockGuard, LockKind,
    LockOptions, SessionStore, SessionSummary, SweepBatch, SweptRecord, Then, DEFAULT_MAX_RECORD_BYTES,
};

/// Sessions in this process's memory. Cloning shares the same sessions.
///
/// Capabilities say `multi_process: false`: two processes would each have
/// their own sessions, so a [`Manager`](crate::Manager) that requires
/// multi-process safety refuses it.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    table: Mutex<BTreeMap<Namespace, BTreeMap<SessionId, Slot>>>,
    /// Stored ids by principal, updated under the table lock by every call
    /// that changes a record (see `with_slot`), so it never disagrees with
    /// the table.
    by_principal: Mutex<HashMap<(Namespace, Principal), BTreeSet<SessionId>>>,
    next_token: AtomicU64,
    max_record_bytes: Option<usize>,
}

/// Everything known about one key: its record and its lock queue.
#[derive(Debug, Default)]
struct Slot {
    record: Option<Record>,
    holder: Option<Holder>,
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Holder {
    token: u64,
    deadline: Instant,
}

#[derive(Debug)]
struct Waiter {
    token: u64,
    lease: Duration,
    wake: oneshot::Sender<()>,
}

impl Slot {
    fn live_record(&self, now: Timestamp) -> Option<&Record> {
        self.record.as_ref().filter(|r| r.is_live_at(now))
    }

    fn is_locked(&self, now: Instant) -> bool {
        self.holder.as_ref().is_some_and(|h| h.deadline > now)
    }

    /// Give the lock to the first waiter still waiting. Invariant afterwards:
    /// no holder implies no waiters.
    fn hand_off(&mut self, now: Instant) {
        while let Some(w) = self.waiters.pop_front() {
            self.holder = Some(Holder {
                token: w.token,
                deadline: now + w.lease,
            });
            if w.wake.send(()).is_ok() {
                return;
            }
        }
        self.holder = None;
    }

    /// Drop a holder whose lease ran out, passing the lock on.
    fn reap_lapsed_holder(&mut self, now: Instant) {
        if self.holder.as_ref().is_some_and(|h| h.deadline <= now) {
            self.hand_off(now);
        }
    }

    fn release(&mut self, token: u64) {
        if self.holder.as_ref().is_some_and(|h| h.token == token) {
            self.hand_off(Instant::now());
        }
    }

    fn is_unused(&self) -> bool {
        self.record.is_none() && self.holder.is_none() && self.waiters.is_empty()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that rejects records larger than `limit` bytes.
    pub fn with_max_record_bytes(limit: usize) -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                max_record_bytes: Some(limit),
                ..Shared::default()
            }),
        }
    }

    fn max_record_bytes(&self) -> usize {
        self.shared.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES)
    }

    fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.max_record_bytes())
    }
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, BTreeMap<Namespace, BTreeMap<SessionId, Slot>>> {
        // A panic while holding this lock cannot leave a slot half-updated in
        // a way later calls misread (every update is a few plain assignments),
        // so a poisoned lock is taken over rather than poisoning the store.
        self.table.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn by_principal(&self) -> MutexGuard<'_, HashMap<(Namespace, Principal), BTreeSet<SessionId>>> {
        self.by_principal
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move `id` in the principal index from `before` to `after`. Called
    /// with the table lock held.
    fn reindex(
        &self,
        namespace: &Namespace,
        id: &SessionId,
        before: Option<&Principal>,
        after: Option<&Principal>,
    ) {
        if before == after {
            return;
        }
        let mut index = self.by_principal();
        if let Some(old) = before {
            let entry = (namespace.clone(), old.clone());
            if let Some(ids) = index.get_mut(&entry) {
                ids.remove(id);
                if ids.is_empty() {
                    index.remove(&entry);
                }
            }
        }
        if let Some(new) = after {
            index
                .entry((namespace.clone(), new.clone()))
                .or_default()
                .insert(id.clone());
        }
    }

    /// Run `f` on the slot of `key`, creating it if needed, keep the
    /// principal index in step, and drop the slot afterwards if it no longer
    /// holds anything.
    fn with_slot<T>(&self, key: &SessionKey, f: impl FnOnce(&mut Slot) -> T) -> T {
        let mut table = self.table();
        let ns = table.entry(key.namespace.clone()).or_default();
        let slot = ns.entry(key.id.clone()).or_default();
        let before = slot.record.as_ref().and_then(|r| r.principal.clone());
        let out = f(slot);
        let after = slot.record.as_ref().and_then(|r| r.principal.as_ref());
        self.reindex(&key.namespace, &key.id, before.as_ref(), after);
        if slot.is_unused() {
            ns.remove(&key.id);
            if ns.is_empty() {
                table.remove(&key.namespace);
            }
        }
        out
    }

    fn new_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed) + 1
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(LockKind::InProcess)
            .named("memory")
            .atomic_rotation()
            .max_record_bytes(self.max_record_bytes())
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let now = Timestamp::now();
        Ok(self.shared.with_slot(key, |slot| slot.live_record(now).cloned()))
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let now = Timestamp::now();
        self.shared.with_slot(key, |slot| {
            if let Some(live) = slot.live_record(now) {
                return Err(Error::Conflict {
                    expected: 0,
                    found: live.version,
                });
            }
            let record = write.into_record(1);
            slot.record = Some(record.clone());
            Ok(record)
        })
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let now = Timestamp::now();
        self.shared.with_slot(key, |slot| {
            let Some(live) = slot.live_record(now) else {
                return Err(Error::Gone);
            };
            if let Some(expected) = expected {
                if live.version != expected {
                    return Err(Error::Conflict {
                        expected,
                        found: live.version,
                    });
                }
            }
            let version = live.version + 1;
            let created = live.created;
            slot.record = Some(Record {
                created,
                ..write.into_record(version)
            });
            Ok(version)
        })
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = Timestamp::now();
        Ok(self.shared.with_slot(key, |slot| {
            let was_live = slot.live_record(now).is_some();
            slot.record = None;
            was_live
        }))
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let now = Timestamp::now();
        Ok(self.shared.with_slot(key, |slot| match slot.record.as_mut() {
            Some(r) if r.is_live_at(now) => {
                r.accessed = accessed;
                r.expires = expires;
                true
            }
            _ => false,
        }))
    }

    /// The in-process FIFO queue is this store's signal: a waiter waits in
    /// it for up to `options.wait` and is handed the lock directly.
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        let give_up_at = Instant::now() + options.wait;
        let token = self.shared.new_token();

        let mut woken = {
            let queued = self.shared.with_slot(key, |slot| {
                let now = Instant::now();
                slot.reap_lapsed_holder(now);
                if slot.holder.is_none() {
                    slot.holder = Some(Holder {
                        token,
                        deadline: now + options.lease,
                    });
                    return None;
                }
                let (wake, woken) = oneshot::channel();
                slot.waiters.push_back(Waiter {
                    token,
                    lease: options.lease,
                    wake,
                });
                Some(woken)
            });
            match queued {
                None => return Ok(Acquired::Locked(self.guard(key, token, options.lease))),
                Some(woken) => woken,
            }
        };

        // If this future is dropped while queued (the request was cancelled),
        // the registration takes us out of the queue, or releases the lock if
        // it was handed to us in the meantime.
        let mut registration = Registration {
            shared: &self.shared,
            key,
            token,
            armed: true,
        };
        loop {
            // Wake when handed the lock, when the holder's lease lapses, or at
            // our own deadline, whichever comes first.
            let holder_lapses = self
                .shared
                .with_slot(key, |slot| slot.holder.as_ref().map(|h| h.deadline));
            let wake_at = holder_lapses.map_or(give_up_at, |d| d.min(give_up_at));
            let handed = match tokio::time::timeout_at(wake_at.into(), &mut woken).await {
                Ok(Ok(())) => true,
                Err(_elapsed) => false,
                // The sender is only dropped unsent once our receiver is gone,
                // which cannot happen while we wait on it; polling a finished
                // receiver again would panic, so stop here (the registration
                // cleans up the queue).
                Ok(Err(_)) => return Err(Error::backend("memory lock queue lost a waiter")),
            };
            let outcome = self.shared.with_slot(key, |slot| {
                let now = Instant::now();
                if handed || slot.holder.as_ref().is_some_and(|h| h.token == token) {
                    return Some(true);
                }
                slot.reap_lapsed_holder(now);
                if slot.holder.as_ref().is_some_and(|h| h.token == token) {
                    return Some(true);
                }
                if now >= give_up_at {
                    slot.waiters.retain(|w| w.token != token);
                    return Some(false);
                }
                None
            });
            match outcome {
                Some(true) => {
                    registration.armed = false;
                    return Ok(Acquired::Locked(self.guard(key, token, options.lease)));
                }
                Some(false) => {
                    registration.armed = false;
                    return Ok(Acquired::BUSY);
                }
                None => continue,
            }
        }
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = Cursor::resume_after(cursor)?;
        let now = Timestamp::now();
        let table = self.shared.table();
        let Some(ns) = table.get(namespace) else {
            return Ok(IdPage::default());
        };
        let mut live = ns
            .range((after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded))
            .filter(|(_, slot)| slot.live_record(now).is_some())
            .map(|(id, _)| id);
        let ids: Vec<SessionId> = live.by_ref().take(limit.max(1)).cloned().collect();
        let next = match (live.next(), ids.last()) {
            (Some(_), Some(last)) => Some(Cursor::after(last)),
            _ => None,
        };
        Ok(IdPage { ids, next })
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let now = Timestamp::now();
        let table = self.shared.table();
        Ok(table.get(namespace).map_or(0, |ns| {
            ns.values().filter(|s| s.live_record(now).is_some()).count() as u64
        }))
    }

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let now = Timestamp::now();
        let table = self.shared.table();
        let ids = self
            .shared
            .by_principal()
            .get(&(namespace.clone(), principal.clone()))
            .cloned()
            .unwrap_or_default();
        let mut sessions: Vec<SessionSummary> = ids
            .into_iter()
            .filter_map(|id| {
                let record = table.get(namespace)?.get(&id)?.live_record(now)?;
                Some(SessionSummary {
                    created: record.created,
                    accessed: record.accessed,
                    expires: record.expires,
                    id,
                })
            })
            .collect();
        sessions.sort_by_key(|s| s.created);
        Ok(sessions)
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let after = Cursor::resume_after(cursor)?;
        let lock_now = Instant::now();
        let mut table = self.shared.table();
        let Some(ns) = table.get_mut(namespace) else {
            return Ok(SweepBatch::default());
        };
        let mut deleted = Vec::new();
        let mut last = None;
        let range = (after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded);
        for (id, slot) in ns.range_mut(range).take(limit.max(1)) {
            last = Some(id.clone());
            // Check and delete under one table lock: a touch cannot slip in
            // between, and a held lock means a request is using the session.
            let expired = slot.record.as_ref().is_some_and(|r| !r.is_live_at(now));
            if expired && !slot.is_locked(lock_now) {
                if let Some(record) = slot.record.take() {
                    self.shared
                        .reindex(namespace, id, record.principal.as_ref(), None);
                    deleted.push(SweptRecord {
                        id: id.clone(),
                        record,
                    });
                }
            }
        }
        let more = match &last {
            Some(last) => ns
                .range((Bound::Excluded(last), Bound::Unbounded))
                .next()
                .is_some(),
            None => false,
        };
        // Only the slots this batch emptied can have become unused (every
        // other call drops its own, see `with_slot`); a `retain` over the
        // whole namespace here made a full sweep quadratic.
        for swept in &deleted {
            if ns.get(&swept.id).is_some_and(Slot::is_unused) {
                ns.remove(&swept.id);
            }
        }
        if ns.is_empty() {
            table.remove(namespace);
        }
        Ok(SweepBatch {
            deleted,
            next: if more {
                last.as_ref().map(Cursor::after)
            } else {
                None
            },
        })
    }
}

impl MemoryStore {
    fn guard(&self, key: &SessionKey, token: u64, lease: Duration) -> Box<dyn LockGuard> {
        let now = Timestamp::now();
        let (record, deadline) = self.shared.with_slot(key, |slot| {
            let deadline = slot
                .holder
                .as_ref()
                .map_or_else(|| Instant::now() + lease, |h| h.deadline);
            (slot.live_record(now).cloned(), deadline)
        });
        Box::new(MemoryLockGuard {
            store: self.clone(),
            held: HeldSession {
                key: key.clone(),
                record,
                lease: Lease {
                    token: token.to_string(),
                    deadline,
                },
            },
            token,
            released: false,
        })
    }
}

/// Cleans up after a `lock` future dropped while it was queued.
struct Registration<'a> {
    shared: &'a Shared,
    key: &'a SessionKey,
    token: u64,
    armed: bool,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.armed {
            let token = self.token;
            self.shared.with_slot(self.key, |slot| {
                slot.waiters.retain(|w| w.token != token);
                slot.release(token);
            });
        }
    }
}

/// A held lock of the [`MemoryStore`].
#[derive(Debug)]
pub struct MemoryLockGuard {
    store: MemoryStore,
    held: HeldSession,
    token: u64,
    released: bool,
}

fn check_unchanged(slot: &Slot, loaded: Option<&Record>, now: Timestamp) -> Result<()> {
    check_loaded_is_live(
        loaded.map(|r| r.version),
        slot.live_record(now).map(|r| r.version),
    )
}

/// The write of one `finish`, applied to the slot once the fence held.
fn apply(slot: &mut Slot, loaded: Option<&Record>, op: Finish) -> Result<(Finished, Option<Record>)> {
    let now = Timestamp::now();
    match op {
        Finish::Save(write) => {
            check_unchanged(slot, loaded, now)?;
            let (version, created) = match loaded {
                Some(r) => (r.version + 1, r.created),
                None => (1, write.created),
            };
            let record = Record {
                created,
                ..write.into_record(version)
            };
            slot.record = Some(record.clone());
            Ok((Finished::Saved { version }, Some(record)))
        }
        Finish::Touch { accessed, expires } => {
            check_unchanged(slot, loaded, now)?;
            match slot.record.as_mut() {
                Some(r) if loaded.is_some() => {
                    r.accessed = accessed;
                    r.expires = expires;
                    Ok((Finished::Touched, Some(r.clone())))
                }
                _ => Err(Error::Gone),
            }
        }
        Finish::Delete => {
            let was_live = slot.live_record(now).is_some();
            slot.record = None;
            Ok((Finished::Deleted { was_live }, None))
        }
        Finish::Nothing => Ok((Finished::Nothing, loaded.cloned())),
        // Needs two slots: `MemoryLockGuard::rotate` does it under the table lock.
        Finish::Rotate { .. } => Err(Error::backend("a rotation reached the one-slot path")),
    }
}

#[async_trait]
impl LockGuard for MemoryLockGuard {
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        let token = self.token;
        let deadline = self.store.shared.with_slot(&self.held.key, |slot| {
            let now = Instant::now();
            match slot.holder.as_mut() {
                Some(h) if h.token == token && h.deadline > now => {
                    h.deadline = now + lease;
                    Ok(h.deadline)
                }
                _ => Err(Error::LeaseLost),
            }
        })?;
        self.held.lease.deadline = deadline;
        Ok(())
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.released {
            return Err(Error::LeaseLost);
        }
        if let Finish::Save(write) | Finish::Rotate { write, .. } = &op {
            if let Err(e) = self.store.check_size(write) {
                self.release();
                return Err(e);
            }
        }
        if let Finish::Rotate { to, write } = op {
            return self.rotate(to, write, then);
        }
        let token = self.token;
        let loaded = self.held.record.take();
        let out = self.store.shared.with_slot(&self.held.key, |slot| {
            let held = slot
                .holder
                .as_ref()
                .is_some_and(|h| h.token == token && h.deadline > Instant::now());
            let out = if held {
                apply(slot, loaded.as_ref(), op)
            } else {
                Err(Error::LeaseLost)
            };
            if then == Then::Release || out.is_err() {
                slot.release(token);
            }
            out
        });
        match out {
            Ok((finished, record)) => {
                self.held.record = record;
                self.released = then == Then::Release;
                Ok(finished)
            }
            Err(e) => {
                self.released = true;
                Err(e)
            }
        }
    }
}

impl MemoryLockGuard {
    /// [`Finish::Rotate`]: both slots change under one table lock.
    fn rotate(&mut self, to: SessionId, write: RecordWrite, then: Then) -> Result<Finished> {
        let now = Timestamp::now();
        let token = self.token;
        let loaded = self.held.record.take();
        let from = self.held.key.clone();
        let target = SessionKey::new(from.namespace.clone(), to);
        let shared = &self.store.shared;
        let out = {
            let mut table = shared.table();
            let ns = table.entry(from.namespace.clone()).or_default();
            let checked = match ns.get(&from.id) {
                Some(slot)
                    if slot
                        .holder
                        .as_ref()
                        .is_some_and(|h| h.token == token && h.deadline > Instant::now()) =>
                {
                    check_unchanged(slot, loaded.as_ref(), now).and_then(|()| {
                        if loaded.is_none() {
                            Err(Error::Gone)
                        } else {
                            Ok(())
                        }
                    })
                }
                _ => Err(Error::LeaseLost),
            };
            let checked = checked.and_then(|()| match ns.get(&target.id).and_then(|s| s.live_record(now)) {
                Some(live) => Err(Error::Conflict {
                    expected: 0,
                    found: live.version,
                }),
                None => Ok(()),
            });
            if checked.is_ok() {
                let record = write.into_record(1);
                shared.reindex(&target.namespace, &target.id, None, record.principal.as_ref());
                ns.entry(target.id.clone()).or_default().record = Some(record);
                if let Some(slot) = ns.get_mut(&from.id) {
                    let old = slot.record.take();
                    shared.reindex(
                        &from.namespace,
                        &from.id,
                        old.as_ref().and_then(|r| r.principal.as_ref()),
                        None,
                    );
                }
            }
            checked
        };
        if then == Then::Release || out.is_err() {
            self.release();
        }
        out.map(|()| Finished::Rotated)
    }

    fn release(&mut self) {
        if !self.released {
            self.released = true;
            let token = self.token;
            self.store
                .shared
                .with_slot(&self.held.key, |slot| slot.release(token));
        }
    }
}

impl Drop for MemoryLockGuard {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sweep must leave no empty slot behind (each would be a leak for
    /// the life of the process), while a locked expired session keeps its.
    #[tokio::test]
    async fn a_full_sweep_frees_every_slot_it_empties() {
        let store = MemoryStore::new();
        let ns = Namespace::new("sweep").unwrap();
        let now = Timestamp::now();
        let expired = RecordWrite {
            data: b"x".to_vec(),
            created: now,
            accessed: now,
            expires: now.saturating_add(Duration::from_millis(1)),
            principal: None,
        };
        let mut keys = Vec::new();
        for _ in 0..25 {
            let key = SessionKey::new(ns.clone(), SessionId::generate());
            store.create(&key, expired.clone()).await.unwrap();
            keys.push(key);
        }
        let held = store
            .lock(
                &keys[0],
                LockOptions::new(Duration::from_secs(30), Duration::ZERO),
            )
            .await
            .unwrap();
        let later = now.saturating_add(Duration::from_secs(1));
        let mut cursor = None;
        let mut deleted = 0;
        loop {
            let batch = store.sweep_expired(&ns, later, cursor, 4).await.unwrap();
            deleted += batch.deleted.len();
            match batch.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(deleted, 24, "every expired, unlocked session is swept");
        let slots: Vec<SessionId> = store
            .shared
            .table()
            .get(&ns)
            .map_or(Vec::new(), |ns| ns.keys().cloned().collect());
        assert_eq!(
            slots,
            vec![keys[0].id.clone()],
            "only the locked session keeps a slot"
        );
        held.unlock().await.unwrap();
        store.sweep_expired(&ns, later, None, 100).await.unwrap();
        assert!(store.shared.table().is_empty(), "the last sweep left empty slots");
    }
}
