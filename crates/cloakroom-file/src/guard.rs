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
//!
//! A write ([`LockGuard::finish`]) takes the file out of the shared hold for
//! its duration, so the timer cannot drop the `flock` under it; the lease is
//! checked on the blocking pool right before the write. With [`Then::Keep`]
//! the write hands the file back afterwards, unless the lease ran out
//! meanwhile (the timer found nothing to close) or the guard was given up
//! (dropped, or its `finish` cancelled): then the write releases it itself.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{
    check_loaded_is_live, Error, Finish, Finished, Lease, LockGuard, Record, Result, SessionKey, Then,
    Timestamp,
};
use tokio::task::AbortHandle;

use crate::error::io_error;
use crate::layout::{create_dirs, SessionPaths};
use crate::record_file::{self, ShardMutex};
use crate::store::{run_blocking, Inner};

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
        match record_file::read_record(&paths.data) {
            Ok(record) => Ok(Some((held, record.filter(|r| r.is_live_at(Timestamp::now()))))),
            Err(e) => {
                self.release(key, held);
                Err(e)
            }
        }
    }

    /// Release a held session lock, unlinking the lock file first if the
    /// session has no record (see the module docs for why that is safe).
    pub(crate) fn release(&self, key: &SessionKey, held: File) {
        let paths = self.layout.session(key);
        if matches!(fs::symlink_metadata(&paths.data), Err(e) if e.kind() == io::ErrorKind::NotFound) {
            let _ = fs::remove_file(&paths.lock);
        }
        drop(held);
    }
}

/// The flock file and the lease end, shared with the lease timer.
#[derive(Debug)]
struct Hold {
    /// The flock; `None` once released, and while a write has it.
    file: Option<File>,
    deadline: Instant,
    /// The guard was given up: a write in flight releases the flock rather
    /// than handing it back.
    spent: bool,
}

fn hold(hold: &Mutex<Hold>) -> MutexGuard<'_, Hold> {
    // Each critical section is a few field reads and writes: nothing half-done.
    hold.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Release a flock from synchronous code (a `Drop`): on the blocking pool
/// when there is a runtime, else right here.
fn release_soon(inner: Arc<Inner>, key: SessionKey, file: File) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || inner.release(&key, file));
        }
        // Outside a runtime there is no blocking pool to defer to.
        Err(_) => inner.release(&key, file),
    }
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
                spent: false,
            })),
            timer: None,
        };
        guard.start_timer();
        guard
    }

    /// (Re)start the task that drops the flock when the lease runs out.
    fn start_timer(&mut self) {
        self.stop_timer();
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
                    // `None` if released, or if a write has it: that write
                    // sees the lapse when it is done and releases it.
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

    fn stop_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

/// Gives the guard up if a `finish` is dropped while its write runs (a
/// cancelled request): the write then releases the flock when it is done,
/// or the flock is released here if the write already handed it back.
struct InFlight {
    inner: Arc<Inner>,
    key: SessionKey,
    hold: Arc<Mutex<Hold>>,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let file = {
            let mut h = hold(&self.hold);
            h.spent = true;
            h.file.take()
        };
        if let Some(file) = file {
            release_soon(self.inner.clone(), self.key.clone(), file);
        }
    }
}

/// Read the current record under the shard mutex and check it is still the
/// one the guard loaded.
fn current_if_unchanged(paths: &SessionPaths, loaded: Option<&Record>) -> Result<Option<Record>> {
    let current = record_file::read_record(&paths.data)?;
    check_loaded_is_on_file(current.as_ref(), loaded, Timestamp::now())?;
    Ok(current)
}

/// The fence of a locked writer: the record the guard loaded (or its
/// absence) is still the live one in the file as it is now, so nobody
/// deleted, replaced or let it expire behind the lock's back.
fn check_loaded_is_on_file(current: Option<&Record>, loaded: Option<&Record>, now: Timestamp) -> Result<()> {
    check_loaded_is_live(
        loaded.map(|r| r.version),
        current.filter(|r| r.is_live_at(now)).map(|r| r.version),
    )
}

/// The write of one `finish`, once the lease is known to hold: what it did,
/// and the guard's record afterwards.
fn apply(
    inner: &Inner,
    key: &SessionKey,
    loaded: Option<Record>,
    op: Finish,
) -> Result<(Finished, Option<Record>)> {
    match op {
        Finish::Save(write) => {
            let paths = inner.layout.session(key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            current_if_unchanged(&paths, loaded.as_ref())?;
            let record = inner.replace(key, loaded.as_ref(), write)?;
            Ok((
                Finished::Saved {
                    version: record.version,
                },
                Some(record),
            ))
        }
        Finish::Touch { accessed, expires } => {
            let paths = inner.layout.session(key);
            let _mutex = ShardMutex::lock(&paths.shard)?;
            match current_if_unchanged(&paths, loaded.as_ref())? {
                Some(current) if loaded.is_some() => {
                    let record = inner.retouch(key, current, accessed, expires)?;
                    Ok((Finished::Touched, Some(record)))
                }
                _ => Err(Error::Gone),
            }
        }
        Finish::Delete => {
            let was_live = inner.remove(key)?;
            Ok((Finished::Deleted { was_live }, None))
        }
        Finish::Nothing => Ok((Finished::Nothing, loaded)),
        other => Err(Error::backend(format!(
            "the file store does not know the finish {other:?}"
        ))),
    }
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

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        // Take the flock from the timer for the write. Gone means it was
        // released (by the timer, or by an earlier finish): someone else may
        // hold it now.
        let (file, deadline) = {
            let mut h = hold(&self.hold);
            (h.file.take(), h.deadline)
        };
        let Some(file) = file else {
            self.stop_timer();
            return Err(Error::LeaseLost);
        };
        if then == Then::Release {
            self.stop_timer();
        }
        let mut in_flight = InFlight {
            inner: self.inner.clone(),
            key: self.key.clone(),
            hold: self.hold.clone(),
            armed: true,
        };
        let (inner, key, shared) = (self.inner.clone(), self.key.clone(), self.hold.clone());
        let loaded = self.record.take();
        let out = run_blocking(move || {
            let out = (|| {
                if let Finish::Save(write) = &op {
                    write.check_size(inner.options.max_record_bytes)?;
                }
                // Past the deadline but not yet released: still nobody else
                // can have written, but a lapsed lease writes nothing.
                if Instant::now() >= deadline {
                    return Err(Error::LeaseLost);
                }
                apply(&inner, &key, loaded, op)
            })();
            let mut file = Some(file);
            if then == Then::Keep && out.is_ok() {
                let mut h = hold(&shared);
                // The timer closes the file only once the deadline passed,
                // and it found nothing if that happened during the write.
                if !h.spent && Instant::now() < h.deadline {
                    h.file = file.take();
                }
            }
            if let Some(file) = file {
                inner.release(&key, file);
            }
            out
        })
        .await;
        in_flight.armed = false;
        match out {
            Ok((finished, record)) => {
                self.record = record;
                Ok(finished)
            }
            Err(e) => {
                self.stop_timer();
                Err(e)
            }
        }
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        self.stop_timer();
        let file = {
            let mut h = hold(&self.hold);
            h.spent = true;
            h.file.take()
        };
        if let Some(file) = file {
            release_soon(self.inner.clone(), self.key.clone(), file);
        }
    }
}
