//! Session locks: an exclusive `flock` on `<id>.lock`, and the guard that
//! holds it.
//!
//! Why a separate lock file: a rename replaces the record's inode, so a lock
//! on the record file would lock nothing once a writer replaced it.
//!
//! Lock files are long-lived but not immortal: a holder that leaves no record
//! behind (a lock on a session never saved, or deleted under the lock)
//! unlinks the lock file *while still holding it*, and every locker re-checks
//! after `flock` succeeds that the inode it locked is still the one at the
//! path. A process that opened the old inode and then won its `flock`
//! therefore notices it locked a dead file and starts over; nobody can hold a
//! lock on an unlinked file believing it is the session's lock.
//!
//! `flock` has no lease, so the guard enforces one: a timer task closes the
//! file (dropping the `flock`) when the lease runs out unless renewed, which
//! lets a waiter take over from a holder that hangs; the holder's later
//! writes find the file gone and fail with [`Error::LeaseLost`]. A holder
//! killed outright loses the `flock` at once: the kernel drops it with the
//! process.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{Error, Lease, LockGuard, Record, RecordWrite, Result, SessionKey, Timestamp};
use tokio::task::AbortHandle;

use crate::disk::{self, io_error, ShardMutex};
use crate::layout::{create_dirs, SessionPaths};
use crate::store::{check_unchanged, run_blocking, Inner};

/// Attempts to lock a lock file that keeps being replaced under us before
/// reporting it busy (the caller then backs off and retries).
const MAX_STALE_RETRIES: usize = 16;

/// Take the session lock of `paths` if it is free, without waiting. With
/// `create`, makes the lock file (and the shard) if missing; without, a
/// missing lock file means there is nothing to lock and gives `None`.
pub(crate) fn try_lock_session(paths: &SessionPaths, create: bool) -> Result<Option<File>> {
    for _ in 0..MAX_STALE_RETRIES {
        let file = match open_lock_file(paths, create) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(None),
            Err(e) => return Err(io_error(e)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(e)) => return Err(io_error(e)),
        }
        let ours = file.metadata().map_err(io_error)?;
        match fs::metadata(&paths.lock) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(Some(file)),
            // Unlinked (and maybe recreated) between our open and our flock.
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_error(e)),
        }
    }
    Ok(None)
}

fn open_lock_file(paths: &SessionPaths, create: bool) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(0o600)
            .open(&paths.lock)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
            create_dirs(&paths.shard)?;
            open()
        }
        other => other,
    }
}

impl Inner {
    /// Lock `key` if free and load its live record under the lock.
    pub(crate) fn try_lock_and_load(&self, key: &SessionKey) -> Result<Option<(File, Option<Record>)>> {
        let paths = self.layout.session(key);
        let Some(held) = try_lock_session(&paths, true)? else {
            return Ok(None);
        };
        match disk::read_record(&paths.data) {
            Ok(record) => Ok(Some((held, record.filter(|r| r.is_live_at(Timestamp::now()))))),
            Err(e) => {
                self.release(key, held);
                Err(e)
            }
        }
    }

    /// Release a held session lock, unlinking the lock file first if the
    /// session has no record (see the module docs for why that is safe), and
    /// wake this process's next waiter.
    pub(crate) fn release(&self, key: &SessionKey, held: File) {
        let paths = self.layout.session(key);
        if matches!(fs::symlink_metadata(&paths.data), Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let _ = fs::remove_file(&paths.lock);
        }
        drop(held);
        self.wakers.wake(key);
    }

    /// Delete the record of `key`; whether a live one was deleted. A corrupt
    /// record is deleted too (and counts as not live): logging out must work.
    pub(crate) fn remove(&self, key: &SessionKey) -> Result<bool> {
        let paths = self.layout.session(key);
        let _mutex = ShardMutex::lock(&paths.shard)?;
        let was_live = match disk::read_header(&paths.data) {
            Ok(h) => h.is_some_and(|h| h.is_live_at(Timestamp::now())),
            Err(Error::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        disk::remove_record(&paths, self.durable())?;
        Ok(was_live)
    }
}

/// The flock file and the lease end, shared with the lease timer.
#[derive(Debug)]
struct Hold {
    file: Option<File>,
    deadline: Instant,
}

fn hold(hold: &Mutex<Hold>) -> MutexGuard<'_, Hold> {
    // Each critical section is a field read or a take: nothing half-done.
    hold.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A held lock of the [`FileStore`](crate::FileStore).
#[derive(Debug)]
pub struct FileLockGuard {
    inner: Arc<Inner>,
    key: SessionKey,
    record: Option<Record>,
    lease: Lease,
    hold: Arc<Mutex<Hold>>,
    timer: Option<AbortHandle>,
}

impl FileLockGuard {
    pub(crate) fn new(
        inner: Arc<Inner>,
        key: SessionKey,
        file: File,
        record: Option<Record>,
        lease: Duration,
    ) -> Self {
        static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);
        let deadline = Instant::now() + lease;
        let token = format!(
            "{}-{}",
            std::process::id(),
            NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
        );
        let mut guard = FileLockGuard {
            inner,
            key,
            record,
            lease: Lease { token, deadline },
            hold: Arc::new(Mutex::new(Hold {
                file: Some(file),
                deadline,
            })),
            timer: None,
        };
        guard.start_timer();
        guard
    }

    /// (Re)start the task that drops the flock when the lease runs out.
    fn start_timer(&mut self) {
        if let Some(old) = self.timer.take() {
            old.abort();
        }
        let (inner, key, shared) = (self.inner.clone(), self.key.clone(), self.hold.clone());
        let task = tokio::spawn(async move {
            loop {
                let deadline = hold(&shared).deadline;
                tokio::time::sleep_until(deadline.into()).await;
                let file = {
                    let mut h = hold(&shared);
                    if Instant::now() < h.deadline {
                        continue; // renewed meanwhile
                    }
                    h.file.take()
                };
                if let Some(file) = file {
                    let _ = run_blocking(move || {
                        inner.release(&key, file);
                        Ok(())
                    })
                    .await;
                }
                return;
            }
        });
        self.timer = Some(task.abort_handle());
    }

    /// Take the flock back from the timer, run `op` if the lease still holds,
    /// and release whatever the outcome.
    async fn finish<T: Send + 'static>(
        mut self: Box<Self>,
        op: impl FnOnce(&Inner, &SessionKey, Option<Record>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        let (file, deadline) = {
            let mut h = hold(&self.hold);
            (h.file.take(), h.deadline)
        };
        // Gone means the timer already released it: someone may hold it now.
        let Some(file) = file else {
            return Err(Error::LeaseLost);
        };
        // Past the deadline but not yet released: still nobody else can have
        // written, but the contract is that a lapsed lease writes nothing.
        let lapsed = Instant::now() >= deadline;
        let (inner, key, loaded) = (self.inner.clone(), self.key.clone(), self.record.take());
        run_blocking(move || {
            let out = if lapsed {
                Err(Error::LeaseLost)
            } else {
                op(&inner, &key, loaded)
            };
            inner.release(&key, file);
            out
        })
        .await
    }
}

/// Read the current record under the shard mutex and check it is still the
/// one the guard loaded.
fn current_if_unchanged(paths: &SessionPaths, loaded: Option<&Record>) -> Result<Option<Record>> {
    let current = disk::read_record(&paths.data)?;
    check_unchanged(current.as_ref(), loaded, Timestamp::now())?;
    Ok(current)
}

#[async_trait]
impl LockGuard for FileLockGuard {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    fn lease(&self) -> &Lease {
        &self.lease
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        {
            let mut h = hold(&self.hold);
            let now = Instant::now();
            if h.file.is_none() || now >= h.deadline {
                return Err(Error::LeaseLost);
            }
            h.deadline = now + lease;
            self.lease.deadline = h.deadline;
        }
        // Restarted rather than left to notice: the new lease may be shorter.
        self.start_timer();
        Ok(())
    }

    async fn save_and_unlock(self: Box<Self>, write: RecordWrite) -> Result<u64> {
        write.check_size(self.inner.options.max_record_bytes)?;
        self.finish(move |inner, key, loaded| {
            let paths = inner.layout.session(key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            current_if_unchanged(&paths, loaded.as_ref())?;
            inner.replace(key, loaded.as_ref(), write)
        })
        .await
    }

    async fn touch_and_unlock(self: Box<Self>, accessed: Timestamp, expires: Timestamp) -> Result<()> {
        self.finish(move |inner, key, loaded| {
            let paths = inner.layout.session(key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            match current_if_unchanged(&paths, loaded.as_ref())? {
                Some(current) if loaded.is_some() => inner.retouch(key, current, accessed, expires),
                _ => Err(Error::Gone),
            }
        })
        .await
    }

    async fn delete_and_unlock(self: Box<Self>) -> Result<bool> {
        self.finish(|inner, key, _| inner.remove(key)).await
    }

    async fn unlock(self: Box<Self>) -> Result<()> {
        self.finish(|_, _, _| Ok(())).await.or_else(|e| match e {
            // Nothing to release any more; unlocking is not a write.
            Error::LeaseLost => Ok(()),
            e => Err(e),
        })
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        let Some(file) = hold(&self.hold).file.take() else {
            return;
        };
        let (inner, key) = (self.inner.clone(), self.key.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(move || inner.release(&key, file));
            }
            // Outside a runtime there is no blocking pool to defer to.
            Err(_) => inner.release(&key, file),
        }
    }
}
