//! [`LeaseMapStore`]: records and leases in one map, and the
//! [`SessionStore`] impl over it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use cloakroom_core::{
    async_trait, check_loaded_is_live, Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions,
    Namespace, Principal, Record, RecordWrite, Result, SessionId, SessionKey, SessionStore, SessionSummary,
    StoreUrl, SweepBatch, SweptRecord, Timestamp,
};

use crate::guard::LeaseMapGuard;
use crate::options::ExampleOptions;

/// Sessions of this process, each with its lease. Clones share them.
///
/// Single-process and not durable, as its [`Capabilities`] say.
#[derive(Clone)]
pub struct LeaseMapStore {
    options: ExampleOptions,
    pub(crate) map: Arc<LeaseMap>,
}

/// Per namespace, the entries in id order (so listings and sweeps can
/// resume after an id), the ids of each principal (the index behind
/// `list_by_principal`, kept under the same lock), and the counter that
/// makes lease tokens.
#[derive(Default)]
pub(crate) struct LeaseMap {
    namespaces: Mutex<HashMap<Namespace, BTreeMap<SessionId, Entry>>>,
    principals: Mutex<HashMap<(Namespace, Principal), BTreeSet<SessionId>>>,
    last_token: AtomicU64,
}

/// One key: its record, if stored, and its lease, if held.
#[derive(Default)]
pub(crate) struct Entry {
    pub(crate) record: Option<Record>,
    pub(crate) lease: Option<Held>,
}

/// A lease: who holds it (a token no other hold ever gets) and until when.
#[derive(Clone, Copy)]
pub(crate) struct Held {
    pub(crate) token: u64,
    pub(crate) deadline: Instant,
}

impl Entry {
    pub(crate) fn live(&self, now: Timestamp) -> Option<&Record> {
        self.record.as_ref().filter(|r| r.is_live_at(now))
    }
}

impl LeaseMap {
    fn namespaces(&self) -> MutexGuard<'_, HashMap<Namespace, BTreeMap<SessionId, Entry>>> {
        // Every change under this lock is a plain assignment, so a panic
        // elsewhere cannot leave an entry half-written: carry on.
        self.namespaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Move `id` in the principal index from `before` to `after`; called
    /// with the namespaces lock held, so the index never disagrees with the
    /// records.
    fn reindex(
        &self,
        namespace: &Namespace,
        id: &SessionId,
        before: Option<Principal>,
        after: Option<&Principal>,
    ) {
        if before.as_ref() == after {
            return;
        }
        let mut principals = self.principals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = before {
            let slot = (namespace.clone(), old);
            if let Some(ids) = principals.get_mut(&slot) {
                ids.remove(id);
                if ids.is_empty() {
                    principals.remove(&slot);
                }
            }
        }
        if let Some(new) = after {
            principals
                .entry((namespace.clone(), new.clone()))
                .or_default()
                .insert(id.clone());
        }
    }

    /// Run `f` on the entry of `key`, with a lapsed lease already dropped
    /// (it no longer holds anyone off), keep the principal index in step,
    /// and forget the entry afterwards if it keeps nothing.
    pub(crate) fn with_entry<T>(&self, key: &SessionKey, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut namespaces = self.namespaces();
        let ids = namespaces.entry(key.namespace.clone()).or_default();
        let entry = ids.entry(key.id.clone()).or_default();
        if entry.lease.is_some_and(|held| held.deadline <= Instant::now()) {
            entry.lease = None;
        }
        let before = entry.record.as_ref().and_then(|r| r.principal.clone());
        let out = f(entry);
        let after = entry.record.as_ref().and_then(|r| r.principal.as_ref());
        self.reindex(&key.namespace, &key.id, before, after);
        if entry.record.is_none() && entry.lease.is_none() {
            ids.remove(&key.id);
            if ids.is_empty() {
                namespaces.remove(&key.namespace);
            }
        }
        out
    }
}

impl LeaseMapStore {
    /// An empty store; checks `options`.
    pub fn new(options: ExampleOptions) -> Result<Self> {
        options.validate()?;
        Ok(LeaseMapStore {
            options,
            map: Arc::default(),
        })
    }

    /// An empty store from an `example:` URL (see the crate docs).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(ExampleOptions::from_url(&StoreUrl::parse(url)?)?)
    }

    /// The options this store was made with.
    pub fn options(&self) -> &ExampleOptions {
        &self.options
    }
}

/// Shows the options only: the sessions are credentials and data.
impl fmt::Debug for LeaseMapStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseMapStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl SessionStore for LeaseMapStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(LockKind::Lease)
            .named("example")
            .max_record_bytes(self.options.max_record_bytes)
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let now = Timestamp::now();
        Ok(self.map.with_entry(key, |entry| entry.live(now).cloned()))
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        write.check_size(self.options.max_record_bytes)?;
        let now = Timestamp::now();
        self.map.with_entry(key, |entry| {
            // A live record is someone's session: never overwrite it.
            check_loaded_is_live(None, entry.live(now).map(|r| r.version))?;
            let record = write.into_record(1);
            entry.record = Some(record.clone());
            Ok(record)
        })
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        write.check_size(self.options.max_record_bytes)?;
        let now = Timestamp::now();
        self.map.with_entry(key, |entry| {
            // Never creates: a missing record is a logout, which a late
            // save must not undo (`Gone`).
            let live = entry.live(now).ok_or(Error::Gone)?;
            check_loaded_is_live(Some(expected.unwrap_or(live.version)), Some(live.version))?;
            let (version, created) = (live.version + 1, live.created);
            entry.record = Some(Record {
                created,
                ..write.into_record(version)
            });
            Ok(version)
        })
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = Timestamp::now();
        Ok(self.map.with_entry(key, |entry| {
            entry.record.take().is_some_and(|r| r.is_live_at(now))
        }))
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let now = Timestamp::now();
        Ok(self.map.with_entry(key, |entry| match &mut entry.record {
            Some(r) if r.is_live_at(now) => {
                (r.accessed, r.expires) = (accessed, expires);
                true
            }
            _ => false,
        }))
    }

    /// This store has no release signal to wait on, so a held lock is
    /// `Busy` at once, with the holder's remaining lease as the longest
    /// useful pause; core's backoff does the waiting.
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        let token = self.map.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Timestamp::now();
        let taken = self.map.with_entry(key, |entry| match entry.lease {
            Some(holder) => Err(holder.deadline),
            None => {
                let deadline = Instant::now() + options.lease;
                entry.lease = Some(Held { token, deadline });
                Ok((deadline, entry.live(now).cloned()))
            }
        });
        Ok(match taken {
            Ok((deadline, record)) => Acquired::Locked(Box::new(LeaseMapGuard::new(
                self.clone(),
                key.clone(),
                Held { token, deadline },
                record,
            ))),
            Err(lapses) => Acquired::Busy {
                retry_in: Some(lapses.saturating_duration_since(Instant::now())),
            },
        })
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = Cursor::resume_after(cursor)?;
        let now = Timestamp::now();
        let namespaces = self.map.namespaces();
        let Some(ids) = namespaces.get(namespace) else {
            return Ok(IdPage::default());
        };
        let mut live = ids
            .range((after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded))
            .filter(|(_, entry)| entry.live(now).is_some())
            .map(|(id, _)| id.clone());
        let page: Vec<SessionId> = live.by_ref().take(limit.max(1)).collect();
        let next = match live.next() {
            Some(_) => page.last().map(Cursor::after),
            None => None,
        };
        Ok(IdPage { ids: page, next })
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let now = Timestamp::now();
        let namespaces = self.map.namespaces();
        let live = namespaces.get(namespace).map_or(0, |ids| {
            ids.values().filter(|entry| entry.live(now).is_some()).count()
        });
        Ok(live as u64)
    }

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let now = Timestamp::now();
        let namespaces = self.map.namespaces();
        let principals = self.map.principals.lock().unwrap_or_else(|p| p.into_inner());
        let Some(ids) = principals.get(&(namespace.clone(), principal.clone())) else {
            return Ok(Vec::new());
        };
        let mut found: Vec<SessionSummary> = ids
            .iter()
            .filter_map(|id| {
                let record = namespaces.get(namespace)?.get(id)?.live(now)?;
                Some(SessionSummary {
                    id: id.clone(),
                    created: record.created,
                    accessed: record.accessed,
                    expires: record.expires,
                })
            })
            .collect();
        found.sort_by_key(|s| s.created);
        Ok(found)
    }

    /// Examines at most `limit` entries; check and delete happen under one
    /// map lock, so a touch or a lock cannot slip in between.
    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let after = Cursor::resume_after(cursor)?;
        let held_until = Instant::now();
        let mut namespaces = self.map.namespaces();
        let Some(ids) = namespaces.get_mut(namespace) else {
            return Ok(SweepBatch::default());
        };
        let start = (after.map_or(Bound::Unbounded, Bound::Excluded), Bound::Unbounded);
        let examined: Vec<SessionId> = ids
            .range(start)
            .take(limit.max(1))
            .map(|(id, _)| id.clone())
            .collect();
        let sweepable = |entry: &Entry| {
            let expired = entry.record.as_ref().is_some_and(|r| !r.is_live_at(now));
            expired && entry.lease.is_none_or(|held| held.deadline <= held_until)
        };
        let mut deleted = Vec::new();
        for id in &examined {
            if !ids.get(id).is_some_and(sweepable) {
                continue;
            }
            if let Some(record) = ids.remove(id).and_then(|entry| entry.record) {
                self.map.reindex(namespace, id, record.principal.clone(), None);
                deleted.push(SweptRecord {
                    id: id.clone(),
                    record,
                });
            }
        }
        let next = examined
            .last()
            .filter(|last| {
                ids.range((Bound::Excluded(*last), Bound::Unbounded))
                    .next()
                    .is_some()
            })
            .map(Cursor::after);
        if ids.is_empty() {
            namespaces.remove(namespace);
        }
        Ok(SweepBatch { deleted, next })
    }
}
