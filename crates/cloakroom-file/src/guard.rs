//! Taking a session lock, and the guard that holds it.
//!
//! The lock is a lease recorded in the session's lock file (see
//! [`lease`](crate::lease)): the guard holds no file and no `flock` between
//! its steps, only its token and its deadline. Every step (renew, write,
//! release) is one check-and-set under the shard mutex on the blocking pool.
//!
//! Cancellation: a `try_lock` dropped while its claim runs releases the
//! claim (the claim asks, with the mutex still held, whether its caller is
//! still there; a claim that already answered is released by the drop). A
//! `finish` dropped while its write runs gives the guard up: a release is
//! sent after the write. If it lands after the write, it frees the lock once
//! the write is done; if it overtakes it, the write finds no lease and is
//! `LeaseLost`. Either way the write happens whole or not at all, and the
//! session is not left locked for the rest of the lease.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{
    check_loaded_is_live, Acquired, Error, Finish, Finished, HeldSession, Lease, LockGuard, LockOptions,
    Record, Result, SessionKey, Then, Timestamp,
};

use crate::layout::SessionPaths;
use crate::lease::Claim;
use crate::record_file::{self, ShardMutex};
use crate::store::{run_blocking, Inner};

/// Between a claim and its caller: whether the caller gave up waiting, and
/// the token of the claim once it succeeded. Whichever of the two learns
/// last about the other releases the lock.
#[derive(Debug, Default)]
struct ClaimState {
    abandoned: bool,
    claimed: Option<String>,
}

fn state(state: &Mutex<ClaimState>) -> MutexGuard<'_, ClaimState> {
    // Each critical section sets or reads two fields: nothing half-done.
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Dropped with a `try_lock` future: if the claim went through and its
/// answer was not received, the lock is released.
struct ClaimInFlight {
    inner: Arc<Inner>,
    key: SessionKey,
    state: Arc<Mutex<ClaimState>>,
    armed: bool,
}

impl Drop for ClaimInFlight {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let claimed = {
            let mut s = state(&self.state);
            s.abandoned = true;
            s.claimed.take()
        };
        if let Some(token) = claimed {
            release_soon(self.inner.clone(), self.key.clone(), token);
        }
    }
}

/// [`SessionStore::try_lock`](cloakroom_core::SessionStore::try_lock) for
/// the file store: one claim, answered at once. Nothing signals a release
/// across processes, so a held lock is [`Acquired::Busy`] with the holder's
/// remaining lease, and core's `lock` backs off; waiters of one process are
/// queued by the lock engine before they get here.
pub(crate) async fn try_lock(inner: &Arc<Inner>, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
    let shared = Arc::new(Mutex::new(ClaimState::default()));
    let mut in_flight = ClaimInFlight {
        inner: inner.clone(),
        key: key.clone(),
        state: shared.clone(),
        armed: true,
    };
    let (claim_inner, claim_key) = (inner.clone(), key.clone());
    let out = run_blocking(move || {
        // The owner file is claimed on first use, so the token is made here.
        let liveness = claim_inner.liveness();
        let token = claim_inner.new_token(liveness.as_deref());
        let claim = claim_inner.claim(&claim_key, &token, options.lease, liveness.as_deref(), || {
            let mut s = state(&shared);
            if !s.abandoned {
                s.claimed = Some(token.clone());
            }
            !s.abandoned
        })?;
        Ok((claim, token))
    })
    .await;
    // A claim that failed (or a blocking task that died) may still have
    // claimed: then the drop releases it.
    in_flight.armed = out.is_err();
    drop(in_flight);
    let (claim, token) = out?;
    Ok(match claim {
        Claim::Locked { claimed_at, record } => Acquired::Locked(Box::new(FileLockGuard {
            inner: inner.clone(),
            held: HeldSession {
                key: key.clone(),
                record,
                lease: Lease {
                    token,
                    deadline: claimed_at + options.lease,
                },
            },
            spent: false,
            release_on_drop: true,
        })),
        Claim::Busy(left) => Acquired::Busy { retry_in: Some(left) },
        Claim::Abandoned => Acquired::BUSY,
    })
}

/// Release a lock from synchronous code (a `Drop`): on the blocking pool
/// when there is a runtime, else right here.
fn release_soon(inner: Arc<Inner>, key: SessionKey, token: String) {
    let release = move || {
        if let Err(e) = inner.release(&key, &token) {
            tracing::warn!(%key, error = %e, "file store could not release a dropped lock; its lease will");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(release);
        }
        // Outside a runtime there is no blocking pool to defer to.
        Err(_) => release(),
    }
}

/// A held lock of the [`FileStore`](crate::FileStore).
#[derive(Debug)]
pub struct FileLockGuard {
    inner: Arc<Inner>,
    held: HeldSession,
    /// Every later call fails with `LeaseLost` (after a release, a failed
    /// step, or a cancelled write).
    spent: bool,
    /// The lock file may still hold our token: dropping the guard releases it.
    release_on_drop: bool,
}

/// Gives the guard up if a `finish` is dropped while its write runs (a
/// cancelled request): the lock is released, after the write or before it
/// (which makes the write `LeaseLost`).
struct InFlight {
    inner: Arc<Inner>,
    key: SessionKey,
    token: String,
    armed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.armed {
            release_soon(self.inner.clone(), self.key.clone(), self.token.clone());
        }
    }
}

/// Read the current record under the shard mutex and check it is still the
/// one the guard loaded: nobody deleted, replaced or let it expire behind
/// the lock's back.
fn current_if_unchanged(paths: &SessionPaths, loaded: Option<&Record>) -> Result<Option<Record>> {
    let current = record_file::read_record(&paths.data)?;
    let now = Timestamp::now();
    check_loaded_is_live(
        loaded.map(|r| r.version),
        current.as_ref().filter(|r| r.is_live_at(now)).map(|r| r.version),
    )?;
    Ok(current)
}

/// The write of one `finish`, under the shard mutex, once the lease is
/// known to hold: what it did, and the guard's record afterwards.
fn apply(
    inner: &Inner,
    key: &SessionKey,
    paths: &SessionPaths,
    loaded: Option<Record>,
    op: Finish,
) -> Result<(Finished, Option<Record>)> {
    match op {
        Finish::Save(write) => {
            let current = current_if_unchanged(paths, loaded.as_ref())?;
            // The file's principal, even if it expired: its marker goes.
            let previous = current.and_then(|r| r.principal);
            let record = inner.replace(key, loaded.as_ref(), previous.as_ref(), write)?;
            Ok((
                Finished::Saved {
                    version: record.version,
                },
                Some(record),
            ))
        }
        Finish::Touch { accessed, expires } => match current_if_unchanged(paths, loaded.as_ref())? {
            Some(current) if loaded.is_some() => {
                let record = inner.retouch(key, current, accessed, expires)?;
                Ok((Finished::Touched, Some(record)))
            }
            _ => Err(Error::Gone),
        },
        Finish::Delete => {
            let was_live = inner.remove_locked(key, paths)?;
            Ok((Finished::Deleted { was_live }, None))
        }
        Finish::Nothing => Ok((Finished::Nothing, loaded)),
        // Refused before the write by `finish_blocking`; kept here so that
        // a rotation can never be half done.
        Finish::Rotate { .. } => Err(rotation_unsupported()),
        other => Err(Error::Unsupported(format!(
            "the file store does not know the finish {other:?}"
        ))),
    }
}

/// The file store cannot create one record and delete another in one step
/// (two files, two renames), so it does not claim
/// [`Capabilities::rotates_atomically`](cloakroom_core::Capabilities::rotates_atomically)
/// and the lock engine rotates in two steps instead of sending it this.
fn rotation_unsupported() -> Error {
    Error::Unsupported("the file store cannot rotate a session atomically".into())
}

/// One `finish` on the blocking pool: the size check, then under one hold
/// of the shard mutex the lease check, the write, and the release (with
/// [`Then::Release`], or after any failure).
fn finish_blocking(
    inner: &Inner,
    key: &SessionKey,
    token: &str,
    lapsed: bool,
    loaded: Option<Record>,
    op: Finish,
    then: Then,
) -> Result<(Finished, Option<Record>)> {
    let paths = inner.layout.session(key);
    let size = match &op {
        Finish::Save(write) => write.check_size(inner.options.max_record_bytes),
        // Refused like an oversized save: nothing written, lock released.
        Finish::Rotate { .. } => Err(rotation_unsupported()),
        _ => Ok(()),
    };
    // No shard, no lock file: someone else took the lock and let it go.
    let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
        size?;
        return Err(Error::LeaseLost);
    };
    let out = size
        .and_then(|()| inner.check_lease(&paths, token, lapsed))
        .and_then(|()| apply(inner, key, &paths, loaded, op));
    if then == Then::Release || out.is_err() {
        if let Err(e) = inner.release_locked(&paths, token) {
            tracing::warn!(%key, error = %e, "file store could not release a lock; its lease will");
        }
    }
    out
}

#[async_trait]
impl LockGuard for FileLockGuard {
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        if self.spent || Instant::now() >= self.held.lease.deadline {
            self.spent = true;
            return Err(Error::LeaseLost);
        }
        let (inner, key, token) = (
            self.inner.clone(),
            self.held.key.clone(),
            self.held.lease.token.clone(),
        );
        match run_blocking(move || inner.renew(&key, &token, lease)).await {
            Ok(renewed_at) => {
                self.held.lease.deadline = renewed_at + lease;
                Ok(())
            }
            Err(e) => {
                self.spent = true;
                Err(e)
            }
        }
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.spent {
            return Err(Error::LeaseLost);
        }
        let lapsed = Instant::now() >= self.held.lease.deadline;
        // Given up until the write answers: if this future is dropped, the
        // in-flight guard releases the lock.
        self.spent = true;
        self.release_on_drop = false;
        let mut in_flight = InFlight {
            inner: self.inner.clone(),
            key: self.held.key.clone(),
            token: self.held.lease.token.clone(),
            armed: true,
        };
        let (inner, key, token) = (
            self.inner.clone(),
            self.held.key.clone(),
            self.held.lease.token.clone(),
        );
        let loaded = self.held.record.take();
        let out = run_blocking(move || finish_blocking(&inner, &key, &token, lapsed, loaded, op, then)).await;
        in_flight.armed = false;
        match out {
            Ok((finished, record)) => {
                self.held.record = record;
                if then == Then::Keep {
                    self.spent = false;
                    self.release_on_drop = true;
                }
                Ok(finished)
            }
            Err(e) => {
                // The write released the lock; if that failed too (or the
                // blocking task died), dropping the guard tries again.
                self.release_on_drop = true;
                Err(e)
            }
        }
    }
}

impl Drop for FileLockGuard {
    fn drop(&mut self) {
        if self.release_on_drop {
            release_soon(
                self.inner.clone(),
                self.held.key.clone(),
                self.held.lease.token.clone(),
            );
        }
    }
}
