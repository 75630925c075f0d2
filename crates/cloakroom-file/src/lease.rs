//! Session locks as leases written down in `<id>.lock`.
//!
//! A lock file holds one line, `<token> <until>\n`: the fencing token of the
//! holder and the end of its lease in wall-clock milliseconds. It is read,
//! written and removed only under the shard mutex
//! ([`ShardMutex`](crate::record_file::ShardMutex)), which is held for one
//! check-and-set and never across a request. So a lock is nothing that a
//! process holds: it is a fact on disk, and every step of a holder checks it
//! under the mutex:
//!
//! - **claim**: free if there is no lock file, or its lease ran out, or it
//!   cannot be read as one (only a writer that crashed mid-write leaves
//!   that); then the claimer writes its own token and lease end.
//! - **renew**: the file must still hold our token and a lease that has
//!   not run out; the new lease end is written over it.
//! - **write** (a holder's save, touch or delete): the same check, and the
//!   record write, under one hold of the mutex, so nobody can take the lock
//!   between the check and the write.
//! - **release**: the file is removed if it still holds our token.
//!
//! A holder that is frozen (a stopped process or VM) keeps nothing locked:
//! once its lease has run out, the next waiter claims the session, and the
//! frozen holder's writes after it wakes find another token (or no file, or
//! a lapsed lease) and fail with [`Error::LeaseLost`] having changed
//! nothing.
//!
//! A holder that was killed is noticed sooner: its token names the owner
//! file of its store ([`Liveness`]), and a waiter that finds nobody holding
//! that owner file's `flock` any more takes the session over at once
//! instead of waiting for the lease.
//!
//! Lock files are not kept: a release removes the file, and a sweep removes
//! lock files whose lease ran out (holders that died, or froze and never
//! came back).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use cloakroom_core::liveness::Liveness;
use cloakroom_core::{Error, Record, Result, SessionKey, Timestamp};

use crate::error::io_error;
use crate::layout::SessionPaths;
use crate::record_file::{self, ShardMutex};
use crate::store::Inner;

/// More than any lock file of ours (a token of 60 characters and a number);
/// a longer one is not read further, and is not a lease.
const MAX_LOCK_FILE_BYTES: u64 = 256;

/// What a lock file says: who holds the session, and until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseOnDisk {
    pub token: String,
    /// The end of the lease, on the wall clock of the host that wrote it.
    pub until: Timestamp,
}

impl LeaseOnDisk {
    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        self.until > now
    }

    fn encode(token: &str, until: Timestamp) -> String {
        format!("{token} {}\n", until.as_millis())
    }

    /// The lease in `bytes`, or `None` for anything that is not one (an
    /// empty file, a write torn before its final newline, foreign text).
    fn decode(bytes: &[u8]) -> Option<LeaseOnDisk> {
        let line = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
        let (token, until) = line.split_once(' ')?;
        let token_ok = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !token_ok || until.is_empty() || !until.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(LeaseOnDisk {
            token: token.to_owned(),
            until: Timestamp::from_millis(until.parse().ok()?),
        })
    }
}

/// The lease in the lock file at `path`; `None` if there is no file, or it
/// holds no lease (see [`LeaseOnDisk::decode`]). Call under the shard mutex.
pub(crate) fn read_lease(path: &Path) -> Result<Option<LeaseOnDisk>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_LOCK_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    Ok(LeaseOnDisk::decode(&bytes))
}

/// Write `token`'s lease until `until` to the lock file at `path`. In place:
/// readers hold the shard mutex, and a write torn by a crash of its writer
/// reads as no lease, which is what a dead writer holds. Not synced: after a
/// power cut every holder is gone anyway.
fn write_lease(path: &Path, token: &str, until: Timestamp) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    file.write_all(LeaseOnDisk::encode(token, until).as_bytes())
        .map_err(io_error)
}

/// Remove the lock file at `path`, if any. Call under the shard mutex.
pub(crate) fn remove_lease(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(e)),
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn until_from(now: Timestamp, lease: Duration) -> Timestamp {
    Timestamp::from_millis(now.as_millis().saturating_add(millis(lease)))
}

/// What one claim got.
#[derive(Debug)]
pub(crate) enum Claim {
    /// The lock is ours, from `claimed_at` (on this process's clock, taken
    /// before the lease end on disk was computed, so our own deadline never
    /// outlasts the one on disk), with the live record.
    Locked {
        claimed_at: Instant,
        record: Option<Record>,
    },
    /// Someone else's lease, which ends in this long.
    Busy(Duration),
    /// Claimed, but the caller had gone meanwhile: released again.
    Abandoned,
}

impl Inner {
    /// Claim the lock of `key` for `token` if it is free (or its holder is
    /// known to be dead), and load the live record with it. `still_wanted`
    /// is asked once the lock file is written, with the mutex still held:
    /// `false` undoes the claim (the caller was cancelled).
    pub(crate) fn claim(
        &self,
        key: &SessionKey,
        token: &str,
        lease: Duration,
        liveness: Option<&Liveness>,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<Claim> {
        let paths = self.layout.session(key);
        let _mutex = ShardMutex::lock(&paths.shard)?;
        let claimed_at = Instant::now();
        let now = Timestamp::now();
        if let Some(held) = read_lease(&paths.lock)?.filter(|l| l.is_live_at(now)) {
            if !liveness.is_some_and(|l| l.holder_is_dead(&held.token)) {
                let left = u64::try_from(held.until.as_millis().saturating_sub(now.as_millis())).unwrap_or(0);
                return Ok(Claim::Busy(Duration::from_millis(left)));
            }
            tracing::info!(namespace = %key.namespace, "took over the lock of a session whose holder process is gone");
        }
        // A record we cannot read fails the claim before anything is written.
        let record = record_file::read_record(&paths.data)?.filter(|r| r.is_live_at(now));
        write_lease(&paths.lock, token, until_from(now, lease))?;
        if !still_wanted() {
            remove_lease(&paths.lock)?;
            return Ok(Claim::Abandoned);
        }
        Ok(Claim::Locked { claimed_at, record })
    }

    /// Extend `token`'s lease of `key` to `lease` from now, if it still
    /// holds a lease that has not run out; returns when the new lease began
    /// on this process's clock. A lease of ours that ran out is removed.
    pub(crate) fn renew(&self, key: &SessionKey, token: &str, lease: Duration) -> Result<Instant> {
        let paths = self.layout.session(key);
        let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
            return Err(Error::LeaseLost);
        };
        let renewed_at = Instant::now();
        let now = Timestamp::now();
        match read_lease(&paths.lock)? {
            Some(l) if l.token == token && l.is_live_at(now) => {
                write_lease(&paths.lock, token, until_from(now, lease))?;
                Ok(renewed_at)
            }
            Some(l) if l.token == token => {
                remove_lease(&paths.lock)?;
                Err(Error::LeaseLost)
            }
            _ => Err(Error::LeaseLost),
        }
    }

    /// The fence of a holder's write, under the shard mutex: the lock file
    /// still holds `token` with a lease that has not run out (and the
    /// holder's own clock agrees: not `lapsed`).
    pub(crate) fn check_lease(&self, paths: &SessionPaths, token: &str, lapsed: bool) -> Result<()> {
        let now = Timestamp::now();
        match read_lease(&paths.lock)? {
            Some(l) if !lapsed && l.token == token && l.is_live_at(now) => Ok(()),
            _ => Err(Error::LeaseLost),
        }
    }

    /// Remove the lock file of `paths` if it holds `token`, under the shard
    /// mutex (already held).
    pub(crate) fn release_locked(&self, paths: &SessionPaths, token: &str) -> Result<()> {
        match read_lease(&paths.lock)? {
            Some(l) if l.token == token => remove_lease(&paths.lock),
            _ => Ok(()),
        }
    }

    /// Release `token`'s lock of `key`, if it still holds it.
    pub(crate) fn release(&self, key: &SessionKey, token: &str) -> Result<()> {
        let paths = self.layout.session(key);
        match ShardMutex::lock_existing(&paths.shard)? {
            Some(_mutex) => self.release_locked(&paths, token),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_trip_and_anything_else_is_no_lease() {
        let until = Timestamp::from_millis(1_700_000_000_123);
        let text = LeaseOnDisk::encode("AbCdEfGhIjKlMnOp.x-y_z", until);
        assert_eq!(
            LeaseOnDisk::decode(text.as_bytes()),
            Some(LeaseOnDisk {
                token: "AbCdEfGhIjKlMnOp.x-y_z".into(),
                until
            })
        );
        // Every torn prefix of a write is no lease.
        for len in 0..text.len() {
            assert_eq!(LeaseOnDisk::decode(&text.as_bytes()[..len]), None, "{len}");
        }
        for bad in [
            "tok 12\nmore\n",
            " 12\n",
            "tok -12\n",
            "tok +12\n",
            "tok 99999999999999999999999\n",
            "../x 12\n",
            "tok\t12\n",
            "tok 12 13\n",
            "\u{e9} 12\n",
        ] {
            assert_eq!(LeaseOnDisk::decode(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
