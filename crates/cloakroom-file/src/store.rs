//! [`FileStore`]: the [`SessionStore`] implementation and its constructors.
//!
//! Every write takes the shard's write mutex for one read-check-replace,
//! which makes compare-and-set and "saves never resurrect" atomic across
//! processes; reads take nothing, because records are only ever replaced
//! whole by rename. Session locks are leases written in lock files (see
//! `lease`), claimed and checked under the same shard mutex.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::liveness::Liveness;
use cloakroom_core::{
    Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Principal, Record,
    RecordWrite, Result, SessionId, SessionKey, SessionStore, SessionSummary, StoreUrl, SweepBatch,
    Timestamp,
};

use crate::error::{io_error, worker_error};
use crate::layout::{self, Layout};
use crate::options::FileOptions;
use crate::record_file::{self, ShardMutex};

/// Sessions as files under one directory, safe across threads and processes
/// on one host. Cloning shares the same store.
///
/// Capabilities: multi-process, durable when [`FileOptions::durable`] is on,
/// [`LockKind::Lease`] (a lease recorded in a lock file beside the record,
/// see the crate docs). Not
/// [`rotates_atomically`](Capabilities::rotates_atomically): a record and
/// its successor are two files that no single rename replaces, so the lock
/// engine rotates in two steps (and `Finish::Rotate` is
/// [`Error::Unsupported`]).
#[derive(Clone, Debug)]
pub struct FileStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) layout: Layout,
    pub(crate) options: FileOptions,
    /// This store's owner file, claimed on the first lock.
    owner: Mutex<OwnerFile>,
}

/// How long a store whose owner file could not be made waits before
/// trying again (meanwhile its locks carry no owner, and only their lease
/// frees them if this process dies).
const OWNER_RETRY: Duration = Duration::from_secs(60);

/// The state of a store's owner file (see [`Liveness`]).
#[derive(Debug)]
enum OwnerFile {
    Unclaimed,
    Claimed(Arc<Liveness>),
    Failed(Instant),
}

impl FileStore {
    /// A store with `options`; [`Error::Config`] if they are invalid (see
    /// [`FileOptions::root`]). No file system access happens until the first
    /// operation (or [`SessionStore::migrate`]); directories are created on
    /// demand.
    pub fn new(options: FileOptions) -> Result<Self> {
        options.validate()?;
        Ok(FileStore {
            inner: Arc::new(Inner {
                layout: Layout::new(options.root.clone()),
                options,
                owner: Mutex::new(OwnerFile::Unclaimed),
            }),
        })
    }

    /// A store from `file:///abs/dir[?durable=false][&max_record_bytes=N]`
    /// (see [`FileOptions::from_url`]); [`Error::Config`] if the URL is
    /// malformed. Two processes given the same URL share sessions and locks.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(FileOptions::from_url(&StoreUrl::parse(url)?)?)
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
    tokio::task::spawn_blocking(work).await.map_err(worker_error)?
}

impl Inner {
    pub(crate) fn durable(&self) -> bool {
        self.options.durable
    }

    /// This store's owner file, claimed on first use in `<root>-owners/`
    /// (see [`Liveness`]); `None` if it cannot be made (a parent directory
    /// we may not write to): then a killed holder's locks are freed by
    /// their lease only, and a warning says so. Blocking.
    pub(crate) fn liveness(&self) -> Option<Arc<Liveness>> {
        let mut owner = self.owner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*owner {
            OwnerFile::Claimed(liveness) => return Some(liveness.clone()),
            OwnerFile::Failed(at) if at.elapsed() < OWNER_RETRY => return None,
            _ => {}
        }
        // Without a trailing slash, so the owners sit beside the root.
        let root: PathBuf = self.layout.root().components().collect();
        let claimed = layout::create_dirs(&root)
            .map_err(io_error)
            .and_then(|()| Liveness::claim(&root));
        match claimed {
            Ok(liveness) => {
                let liveness = Arc::new(liveness);
                *owner = OwnerFile::Claimed(liveness.clone());
                Some(liveness)
            }
            Err(e) => {
                tracing::warn!(
                    root = %root.display(),
                    error = %e,
                    "file store cannot make its owner file: the locks of a killed process will wait for their lease"
                );
                *owner = OwnerFile::Failed(Instant::now());
                None
            }
        }
    }

    /// A new lock token: owned by this store's owner file when there is one.
    pub(crate) fn new_token(&self, liveness: Option<&Liveness>) -> String {
        match liveness {
            Some(liveness) => liveness.new_token(),
            // No owner: a token no waiter can take for a dead owner's.
            None => SessionId::generate().as_str().to_owned(),
        }
    }
}

#[async_trait]
impl SessionStore for FileStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(LockKind::Lease)
            .named("file")
            .multi_process()
            .durable(self.inner.options.durable)
            .max_record_bytes(self.inner.options.max_record_bytes)
    }

    async fn migrate(&self) -> Result<()> {
        self.blocking(|inner| layout::create_dirs(inner.layout.root()).map_err(io_error))
            .await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.blocking(move |inner| {
            let record = record_file::read_record(&inner.layout.session(&key).data)?;
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
            let current = record_file::read_record(&paths.data)?;
            if let Some(live) = current.as_ref().filter(|r| r.is_live_at(Timestamp::now())) {
                return Err(Error::Conflict {
                    expected: 0,
                    found: live.version,
                });
            }
            // An expired record is replaced: its principal's marker goes.
            let previous = current.and_then(|r| r.principal);
            inner.replace(&key, None, previous.as_ref(), write)
        })
        .await
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let key = key.clone();
        self.blocking(move |inner| {
            let paths = inner.layout.session(&key);
            let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
                return Err(Error::Gone);
            };
            let current = record_file::read_record(&paths.data)?;
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
            let previous = live.principal.clone();
            inner
                .replace(&key, Some(&live), previous.as_ref(), write)
                .map(|r| r.version)
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
            let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
                return Ok(false);
            };
            match record_file::read_record(&paths.data)?.filter(|r| r.is_live_at(Timestamp::now())) {
                Some(live) => inner.retouch(&key, live, accessed, expires).map(|_| true),
                None => Ok(false),
            }
        })
        .await
    }

    /// One claim of the session's lease, answered at once (nothing signals
    /// a release across processes): a held lock is `Busy` with the
    /// holder's remaining lease, and core's backoff does the waiting
    /// (waiters of one process queue in the lock engine and never get here
    /// together).
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        crate::guard::try_lock(&self.inner, key, options).await
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = Cursor::resume_after(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.blocking(move |inner| inner.list_blocking(&namespace, after, limit))
            .await
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let namespace = namespace.clone();
        self.blocking(move |inner| inner.count_blocking(&namespace)).await
    }

    /// Served from the principal's marker directory, each marker checked
    /// against its record (see the `index` module).
    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let (namespace, principal) = (namespace.clone(), principal.clone());
        self.blocking(move |inner| inner.list_by_principal_blocking(&namespace, &principal))
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
