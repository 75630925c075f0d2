//! [`FileStore`]: the [`SessionStore`] implementation.
//!
//! Every write takes the shard's [`ShardMutex`] for one read-check-replace,
//! which makes compare-and-set and "saves never resurrect" atomic across
//! processes; reads take nothing, because records are only ever replaced
//! whole by rename. Session locks (held across a request) are separate
//! `flock`s, see [`crate::lock`].

use async_trait::async_trait;
use cloakroom_core::{
    check_loaded_is_live, Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace,
    Record, RecordWrite, Result, SessionId, SessionKey, SessionStore, SweepBatch, Timestamp,
};
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::FileOptions;
use crate::disk::{self, io_error, ShardMutex};
use crate::layout::{self, Layout};
use crate::lock::{self, FileLockGuard};

/// Sessions as files under one directory, safe across threads and processes
/// on one host. Cloning shares the same store.
///
/// Capabilities: multi-process, durable when [`FileOptions::durable`] is on,
/// [`LockKind::FileLock`].
#[derive(Clone, Debug)]
pub struct FileStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) layout: Layout,
    pub(crate) options: FileOptions,
}

impl FileStore {
    /// A durable store rooted at `root`. No file system access happens until
    /// the first operation (or [`SessionStore::migrate`]); directories are
    /// created on demand.
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self::with_options(FileOptions::new(root))
    }

    /// A store with explicit options.
    pub fn with_options(options: FileOptions) -> Self {
        FileStore {
            inner: Arc::new(Inner {
                layout: Layout::new(options.root.clone()),
                options,
            }),
        }
    }

    /// A store from `file:///abs/dir[?durable=false][&max_record_bytes=N]`;
    /// [`Error::Config`] if the URL is malformed. Two processes given the same
    /// URL share sessions and locks.
    pub fn from_url(url: &str) -> Result<Self> {
        FileOptions::from_url(url).map(Self::with_options)
    }

    /// The options in force.
    pub fn options(&self) -> &FileOptions {
        &self.inner.options
    }

    fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.options.max_record_bytes)
    }

    /// Run blocking file work on the blocking pool, off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        run_blocking(move || work(&inner)).await
    }
}

pub(crate) async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::backend(format!("file store worker failed: {e}")))?
}

/// The fence a locked writer checks on the file as it is now.
pub(crate) fn check_unchanged(
    current: Option<&Record>,
    loaded: Option<&Record>,
    now: Timestamp,
) -> Result<()> {
    check_loaded_is_live(
        loaded.map(|r| r.version),
        current.filter(|r| r.is_live_at(now)).map(|r| r.version),
    )
}

impl Inner {
    pub(crate) fn durable(&self) -> bool {
        self.options.durable
    }

    /// Write `write` as the new record, after `current` (the record read under
    /// the shard mutex): keeps `created` and bumps the version, or starts a
    /// new record at version 1. Returns the record as written.
    pub(crate) fn replace(
        &self,
        key: &SessionKey,
        current_live: Option<&Record>,
        write: RecordWrite,
    ) -> Result<Record> {
        let record = match current_live {
            Some(live) => Record {
                created: live.created,
                ..write.into_record(live.version + 1)
            },
            None => write.into_record(1),
        };
        disk::write_record(&self.layout.session(key), &key.id, &record, self.durable())?;
        Ok(record)
    }

    /// Rewrite the metadata of a record, data and version unchanged (by
    /// rename, like every write: never in place). Returns the record as
    /// written.
    pub(crate) fn retouch(
        &self,
        key: &SessionKey,
        mut record: Record,
        accessed: Timestamp,
        expires: Timestamp,
    ) -> Result<Record> {
        record.accessed = accessed;
        record.expires = expires;
        disk::write_record(&self.layout.session(key), &key.id, &record, self.durable())?;
        Ok(record)
    }

    fn sweep_blocking(
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
                if self.sweep_one(&key, now)? {
                    deleted.push(id.clone());
                }
            }
            self.collect_garbage(namespace, &ns_dir.join(&shard), entries);
        }
        Ok(SweepBatch { deleted, next: None })
    }

    /// Delete one record if it is expired at `now` and nobody holds its lock.
    /// The check is repeated under the lock and the shard mutex, so a touch
    /// or save that renewed it meanwhile (seed 001's race) wins.
    fn sweep_one(&self, key: &SessionKey, now: Timestamp) -> Result<bool> {
        let paths = self.layout.session(key);
        match disk::read_header(&paths.data) {
            Ok(Some(h)) if !h.is_live_at(now) => {}
            Ok(_) => return Ok(false),
            Err(Error::Corrupt { reason }) => {
                // Never delete what we cannot read: an operator may want it.
                tracing::warn!(%key, %reason, "file store sweep skipped a corrupt record");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let Some(held) = lock::try_lock_session(&paths, true)? else {
            return Ok(false); // in use by a request: not ours to delete
        };
        let deleted = (|| {
            let _mutex = ShardMutex::lock(&paths.shard)?;
            match disk::read_header(&paths.data) {
                Ok(Some(h)) if !h.is_live_at(now) => disk::remove_record(&paths, self.durable()),
                Ok(_) | Err(Error::Corrupt { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })();
        self.release(key, held);
        deleted
    }

    /// Best-effort cleanup of a fully swept shard: lock files of sessions
    /// without a record, and temporary files of writers that crashed.
    /// Failures only leave a small file behind, so they are not reported.
    fn collect_garbage(&self, namespace: &Namespace, shard: &std::path::Path, entries: layout::ShardEntries) {
        for id in entries.orphan_locks {
            let key = SessionKey::new(namespace.clone(), id);
            let paths = self.layout.session(&key);
            if let Ok(Some(held)) = lock::try_lock_session(&paths, false) {
                self.release(&key, held);
            }
        }
        if entries.temps.is_empty() {
            return;
        }
        // Temporaries are only written under the shard mutex, so while we hold
        // it every temporary listed before is a dead writer's.
        if let Ok(_mutex) = ShardMutex::lock(shard) {
            for name in entries.temps {
                let _ = std::fs::remove_file(shard.join(name));
            }
        }
    }
}

#[async_trait]
impl SessionStore for FileStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(
            true,
            self.inner.options.durable,
            LockKind::FileLock,
            self.inner.options.max_record_bytes,
        )
    }

    async fn migrate(&self) -> Result<()> {
        self.blocking(|inner| layout::create_dirs(inner.layout.root()).map_err(io_error))
            .await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let record = disk::read_record(&inner.layout.session(&key).data)?;
            Ok(record.filter(|r| r.is_live_at(Timestamp::now())))
        })
        .await
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let key = key.clone();
        self.blocking(move |inner| {
            let paths = inner.layout.session(&key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            let current = disk::read_record(&paths.data)?;
            if let Some(live) = current.filter(|r| r.is_live_at(Timestamp::now())) {
                return Err(Error::Conflict {
                    expected: 0,
                    found: live.version,
                });
            }
            let record = write.into_record(1);
            disk::write_record(&paths, &key.id, &record, inner.durable())?;
            Ok(record)
        })
        .await
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let key = key.clone();
        self.blocking(move |inner| {
            let paths = inner.layout.session(&key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            let current = disk::read_record(&paths.data)?;
            let Some(live) = current.filter(|r| r.is_live_at(Timestamp::now())) else {
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
            inner.replace(&key, Some(&live), write).map(|r| r.version)
        })
        .await
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| inner.remove(&key)).await
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let key = key.clone();
        self.blocking(move |inner| {
            let paths = inner.layout.session(&key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            match disk::read_record(&paths.data)?.filter(|r| r.is_live_at(Timestamp::now())) {
                Some(live) => inner.retouch(&key, live, accessed, expires).map(|_| true),
                None => Ok(false),
            }
        })
        .await
    }

    /// `flock` has no timed wait, so this is one non-blocking attempt; the
    /// core's backoff does the waiting (waiters of one process queue in the
    /// lock engine and never get here together).
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        let attempt_key = key.clone();
        let acquired = self
            .blocking(move |inner| inner.try_lock_and_load(&attempt_key))
            .await?;
        Ok(match acquired {
            Some((held, record)) => Acquired::Locked(Box::new(FileLockGuard::new(
                self.inner.clone(),
                key.clone(),
                held,
                record,
                options.lease,
            ))),
            None => Acquired::BUSY,
        })
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = Cursor::resume_after(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.blocking(move |inner| {
            let now = Timestamp::now();
            let mut ids = Vec::new();
            let mut live = LiveIds::new(inner, &namespace, after, now)?;
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
        })
        .await
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let namespace = namespace.clone();
        self.blocking(move |inner| {
            let mut live = LiveIds::new(inner, &namespace, None, Timestamp::now())?;
            let mut n = 0;
            while live.next_id()?.is_some() {
                n += 1;
            }
            Ok(n)
        })
        .await
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let after = Cursor::resume_after(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.blocking(move |inner| inner.sweep_blocking(&namespace, now, after, limit))
            .await
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
            match disk::read_header(&self.inner.layout.session(&key).data) {
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
