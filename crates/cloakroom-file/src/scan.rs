//! Walking a namespace in id order: the live ids for listing and counting,
//! the expired records for the sweep, and the cleanup of what dead sessions
//! and crashed writers leave behind. Everything here runs on the blocking
//! pool.

use std::path::Path;

use cloakroom_core::{
    Cursor, Error, IdPage, Namespace, Record, Result, SessionId, SessionKey, SweepBatch, SweptRecord,
    Timestamp,
};

use crate::error::io_error;
use crate::layout::{self, ShardEntries};
use crate::lease::{read_lease, remove_lease};
use crate::record_file::{self, ShardMutex};
use crate::store::Inner;

impl Inner {
    /// Up to `limit` live ids of `namespace` after `after`, and a cursor if
    /// there are more.
    pub(crate) fn list_blocking(
        &self,
        namespace: &Namespace,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<IdPage> {
        let mut ids = Vec::new();
        let mut live = LiveIds::new(self, namespace, after, Timestamp::now())?;
        while ids.len() < limit {
            match live.next_id()? {
                Some(id) => ids.push(id),
                None => return Ok(IdPage { ids, next: None }),
            }
        }
        let next = match live.next_id()? {
            Some(_) => ids.last().map(Cursor::after),
            None => None,
        };
        Ok(IdPage { ids, next })
    }

    /// The number of live records of `namespace`.
    pub(crate) fn count_blocking(&self, namespace: &Namespace) -> Result<u64> {
        let mut live = LiveIds::new(self, namespace, None, Timestamp::now())?;
        let mut n = 0;
        while live.next_id()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    pub(crate) fn sweep_blocking(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let ns_dir = self.layout.namespace_dir(namespace);
        let mut deleted = Vec::new();
        let mut examined = 0;
        let mut last: Option<SessionId> = None;
        for shard in layout::shards_from(&ns_dir, after.as_ref()).map_err(io_error)? {
            let entries = layout::read_shard(&ns_dir.join(&shard)).map_err(io_error)?;
            let deleted_before = deleted.len();
            for id in entries
                .records
                .iter()
                .filter(|id| after.as_ref().is_none_or(|a| *id > a))
            {
                if examined == limit {
                    return Ok(SweepBatch {
                        deleted,
                        next: last.as_ref().map(Cursor::after),
                    });
                }
                examined += 1;
                last = Some(id.clone());
                let key = SessionKey::new(namespace.clone(), id.clone());
                if let Some(record) = self.sweep_one(&key, now)? {
                    deleted.push(SweptRecord {
                        id: id.clone(),
                        record,
                    });
                }
            }
            let records_left = entries.records.len() > deleted.len() - deleted_before;
            self.collect_garbage(namespace, &ns_dir.join(&shard), entries, records_left);
        }
        Ok(SweepBatch { deleted, next: None })
    }

    /// Delete one record if it is expired at `now` and nobody holds its lock,
    /// and return it as it was. The check is repeated under the shard mutex,
    /// on the record read whole under it, so a touch or save that renewed
    /// the session between the first look and the delete wins, and the
    /// session is not deleted from under it, and what is returned is exactly
    /// what was deleted.
    fn sweep_one(&self, key: &SessionKey, now: Timestamp) -> Result<Option<Record>> {
        let paths = self.layout.session(key);
        // A first look at the header only, so that live records (most of
        // them) cost neither the mutex nor a read of their data.
        match record_file::read_header(&paths.data) {
            Ok(Some(h)) if !h.is_live_at(now) => {}
            Ok(_) => return Ok(None),
            Err(Error::Corrupt { reason }) => {
                // Never delete what we cannot read: an operator may want it.
                tracing::warn!(%key, %reason, "file store sweep skipped a corrupt record");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
            return Ok(None);
        };
        if read_lease(&paths.lock)?.is_some_and(|l| l.is_live_at(Timestamp::now())) {
            return Ok(None); // in use by a request: not ours to delete
        }
        let record = match record_file::read_record(&paths.data) {
            Ok(Some(record)) if !record.is_live_at(now) => record,
            Ok(_) | Err(Error::Corrupt { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !record_file::remove_record(&paths, self.durable())? {
            return Ok(None);
        }
        // The lease that ran out goes with the record (best effort: the
        // garbage collection of the shard tries again), and so does the
        // index marker, after the record (see `index`).
        let _ = remove_lease(&paths.lock);
        if let Some(principal) = &record.principal {
            self.remove_marker(&key.namespace, principal, &key.id);
        }
        Ok(Some(record))
    }

    /// Best-effort cleanup of a fully swept shard, under its mutex: lock
    /// files whose lease ran out (holders that died or froze), temporary
    /// files of writers that crashed, and then the shard directory itself
    /// if nothing is left in it. Failures only leave a small file or an
    /// empty directory behind, so they are not reported.
    fn collect_garbage(
        &self,
        namespace: &Namespace,
        shard: &Path,
        entries: ShardEntries,
        records_left: bool,
    ) {
        if entries.locks.is_empty() && entries.temps.is_empty() && records_left {
            return; // nothing to collect, and the shard is in use
        }
        let Ok(Some(mutex)) = ShardMutex::lock_existing(shard) else {
            return;
        };
        let now = Timestamp::now();
        for id in entries.locks {
            let key = SessionKey::new(namespace.clone(), id);
            let lock = self.layout.session(&key).lock;
            if !matches!(read_lease(&lock), Ok(Some(l)) if l.is_live_at(now)) {
                let _ = remove_lease(&lock);
            }
        }
        // Temporaries are only written under the shard mutex, so while we hold
        // it every temporary listed before is a dead writer's.
        for name in entries.temps {
            let _ = std::fs::remove_file(shard.join(name));
        }
        mutex.remove_shard_if_empty(shard);
    }
}

/// Live ids of a namespace in id order, one shard in memory at a time.
struct LiveIds<'a> {
    inner: &'a Inner,
    namespace: &'a Namespace,
    after: Option<SessionId>,
    now: Timestamp,
    shards: std::vec::IntoIter<String>,
    current: std::vec::IntoIter<SessionId>,
}

impl<'a> LiveIds<'a> {
    fn new(
        inner: &'a Inner,
        namespace: &'a Namespace,
        after: Option<SessionId>,
        now: Timestamp,
    ) -> Result<Self> {
        let shards =
            layout::shards_from(&inner.layout.namespace_dir(namespace), after.as_ref()).map_err(io_error)?;
        Ok(LiveIds {
            inner,
            namespace,
            after,
            now,
            shards: shards.into_iter(),
            current: Vec::new().into_iter(),
        })
    }

    fn next_id(&mut self) -> Result<Option<SessionId>> {
        loop {
            let Some(id) = self.current.next() else {
                let Some(shard) = self.shards.next() else {
                    return Ok(None);
                };
                let dir = self.inner.layout.namespace_dir(self.namespace).join(shard);
                let mut records = layout::read_shard(&dir).map_err(io_error)?.records;
                if let Some(after) = &self.after {
                    records.retain(|id| id > after);
                }
                self.current = records.into_iter();
                continue;
            };
            let key = SessionKey::new(self.namespace.clone(), id);
            match record_file::read_header(&self.inner.layout.session(&key).data) {
                Ok(Some(h)) if h.is_live_at(self.now) => return Ok(Some(key.id)),
                Ok(_) => {} // expired, or deleted since the directory was read
                Err(Error::Corrupt { reason }) => {
                    tracing::warn!(%key, %reason, "file store listing skipped a corrupt record");
                }
                Err(e) => return Err(e),
            }
        }
    }
}
