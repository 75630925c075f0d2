//! Whether the holder of a lock is still alive, asked of the operating
//! system, so that the lock of a killed process is taken over at once
//! instead of when its lease runs out. For backends whose processes share
//! one host (files, SQLite).
//!
//! Every open store holds an exclusive OS lock (`flock`) on its own *owner
//! file*, `<place>-owners/<owner>` next to its database or directory, for
//! as long as it is open, and every lock token it writes starts with
//! `<owner>.`. A waiter that finds a
//! session locked by another owner tries to lock that owner's file: if it
//! can, the process that held it is gone (the kernel drops an `flock` when
//! its holder dies, however it dies), and the waiter takes the session
//! over. A wrong guess cannot corrupt anything: every write is fenced by
//! the token, so a holder that is somehow still running gets `LeaseLost`.
//!
//! A frozen (stopped) process still holds its file: its sessions wait for
//! their lease like before. An owner file that does not exist (a store of
//! an older version, or a database shared over a network file system where
//! the lock is not seen) means "unknown", and the lease decides.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::{Error, Result, SessionId};

/// This store's owner file, locked while the store is open.
#[derive(Debug)]
pub struct Liveness {
    dir: PathBuf,
    owner: String,
    /// Holds the `flock`; closing it (drop, or the process dying) releases it.
    _file: File,
}

impl Liveness {
    /// Create and lock a new owner file in `<place>-owners/`, next to the
    /// database file or directory at `place` (whose parent must exist).
    pub fn claim(place: &Path) -> Result<Self> {
        let mut dir = place.as_os_str().to_owned();
        dir.push("-owners");
        let dir = PathBuf::from(dir);
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        match builder.create(&dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(owner_error(&dir, e)),
            _ => {}
        }
        let owner = SessionId::generate().as_str()[..16].to_owned();
        let path = dir.join(&owner);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(|e| owner_error(&path, e))?;
        clear_dead_owners(&dir);
        file.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => owner_error(&path, e),
            TryLockError::WouldBlock => {
                Error::backend(format!("{} is locked by another store", path.display()))
            }
        })?;
        Ok(Liveness {
            dir,
            owner,
            _file: file,
        })
    }

    /// A lock token of this store: `<owner>.<random>`.
    pub fn new_token(&self) -> String {
        format!("{}.{}", self.owner, SessionId::generate().as_str())
    }

    /// Whether the store that wrote `token` is known to be gone: its owner
    /// file exists and nobody holds its lock. Every waiter that asks gets
    /// the same answer; the takeover itself is fenced by the token, so only
    /// one of them wins each session.
    pub fn holder_is_dead(&self, token: &str) -> bool {
        let Some((owner, _)) = token.split_once('.') else {
            return false;
        };
        // Owners are base64url from our own generator; anything else is
        // not a name to open.
        let valid = owner.len() == 16
            && owner
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid || owner == self.owner {
            return false;
        }
        let path = self.dir.join(owner);
        let Ok(file) = File::open(&path) else {
            return false;
        };
        // The file stays: the dead process may hold other sessions, whose
        // waiters must come to the same answer. `claim` clears old ones.
        file.try_lock().is_ok()
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(&self.owner));
    }
}

/// Owner files of processes that died more than a day ago: longer than any
/// lease, so none of their locks can still stand. Best effort.
fn clear_dead_owners(dir: &Path) {
    const LONG_DEAD: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified.elapsed().is_ok_and(|age| age > LONG_DEAD));
        if old && File::open(entry.path()).is_ok_and(|f| f.try_lock().is_ok()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn owner_error(path: &Path, e: io::Error) -> Error {
    Error::backend(format!("cannot create the owner file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_owner_is_alive_and_a_dead_one_is_dead_to_every_waiter() {
        let dir = std::env::temp_dir().join(format!(
            "cloakroom-liveness-{}",
            &SessionId::generate().as_str()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("s.db");
        let (one, other) = (Liveness::claim(&db).unwrap(), Liveness::claim(&db).unwrap());
        let token = other.new_token();
        assert!(!one.holder_is_dead(&token), "its store is open");
        assert!(
            !other.holder_is_dead(&token),
            "a store never takes itself for dead"
        );
        drop(other);
        // The owner file went with the store; a crash leaves it behind.
        assert!(
            !one.holder_is_dead(&token),
            "an owner with no file is unknown, not dead"
        );

        // A process killed while open leaves its owner file unlocked.
        let dead = "DEADDEADDEADDEAD";
        std::fs::write(one.dir.join(dead), b"").unwrap();
        let token = format!("{dead}.{}", SessionId::generate());
        assert!(
            one.holder_is_dead(&token),
            "nobody holds the file: its owner is gone"
        );
        assert!(
            one.holder_is_dead(&token),
            "every waiter, for every session the dead process held, concludes the same"
        );
        for bad in [
            "no-dot",
            "../../etc.x",
            ".x",
            "AAAAAAAAAAAAAAA.x",
            "AAAAAAAAAAAAAAA/.x",
        ] {
            assert!(!one.holder_is_dead(bad), "{bad}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
