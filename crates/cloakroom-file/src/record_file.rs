//! One record file: reading it, replacing it whole, removing it, and the
//! shard write mutex that makes a read-check-replace atomic against every
//! other writer. Everything here runs on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use cloakroom_core::{Error, Principal, Record, RecordWrite, Result, SessionId, SessionKey, Timestamp};

use crate::error::io_error;
use crate::format::{self, Header, Meta, HEADER_LEN, META_MAX_LEN};
use crate::layout::{create_dirs, mutex_path, SessionPaths};
use crate::store::Inner;

/// The record at `path`, whatever its expiry; `None` if there is none.
pub(crate) fn read_record(path: &Path) -> Result<Option<Record>> {
    match fs::read(path) {
        Ok(bytes) => format::decode(&bytes).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(e)),
    }
}

/// Only the header of the record at `path`: listing and sweeping never read
/// session data.
pub(crate) fn read_header(path: &Path) -> Result<Option<Header>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let mut head = Vec::with_capacity(HEADER_LEN);
    file.take(HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_error)?;
    format::decode_header(&head).map(Some)
}

/// The header and principal of the record at `path`, without its data:
/// what the principal index and deletes need.
pub(crate) fn read_meta(path: &Path) -> Result<Option<Meta>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(e)),
    };
    let mut head = Vec::with_capacity(META_MAX_LEN);
    file.take(META_MAX_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io_error)?;
    format::decode_meta(&head).map(Some)
}

/// Replace the record of `paths` with `record`: write a temporary file in the
/// same directory, flush it, rename it over. Never truncates in place, so a
/// concurrent reader sees the old file or the new one, never a partial one
/// (truncating and then writing in place lets a reader in between read an
/// empty file).
pub(crate) fn write_record(
    paths: &SessionPaths,
    id: &SessionId,
    record: &Record,
    durable: bool,
) -> Result<()> {
    let bytes = format::encode(record);
    let temp = paths.temp(id);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&temp, &paths.data)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(io_error(e));
    }
    if durable {
        sync_dir(&paths.shard)?;
    }
    Ok(())
}

/// Remove the record file; returns whether there was one.
pub(crate) fn remove_record(paths: &SessionPaths, durable: bool) -> Result<bool> {
    match fs::remove_file(&paths.data) {
        Ok(()) => {
            if durable {
                sync_dir(&paths.shard)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(e)),
    }
}

/// fsync a directory, so a rename or unlink in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)
}

/// Attempts to take a shard mutex whose file keeps being removed under us
/// (a sweep removing the emptied shard between our open and our lock,
/// again and again) before giving up.
const MAX_MUTEX_ATTEMPTS: usize = 64;

/// The write mutex of one shard directory, held while a writer reads the
/// current record (and the session's lock file), checks them and replaces
/// them, so that compare-and-set, lock claims, the fenced writes of lock
/// holders and the sweep's check-then-delete are atomic against every other
/// writer in every process. Held for a few reads and one write at most,
/// never across a request; released when dropped (closing the file drops
/// the `flock`).
///
/// Every name in the shard directory is created or removed under it, which
/// is what lets a sweep remove an emptied shard: it unlinks the mutex file
/// *while holding it*, then the directory. Whoever opened the old file and
/// then won its `flock` sees that the file is no longer the one at the path
/// and starts over, recreating the directory if it is gone; nobody holds a
/// mutex on an unlinked file believing it guards the shard.
#[derive(Debug)]
pub(crate) struct ShardMutex {
    _file: File,
}

impl ShardMutex {
    /// Wait for the mutex of the shard directory `shard`, creating the
    /// directory and the mutex file if needed.
    pub(crate) fn lock(shard: &Path) -> Result<Self> {
        Self::acquire(shard, true)?.ok_or_else(|| Error::backend("shard mutex not created"))
    }

    /// Wait for the mutex of `shard` if the directory exists; `None` if it
    /// does not, for callers that have nothing to do in a missing shard (a
    /// missing shard holds no record and no lock).
    pub(crate) fn lock_existing(shard: &Path) -> Result<Option<Self>> {
        Self::acquire(shard, false)
    }

    fn acquire(shard: &Path, create: bool) -> Result<Option<Self>> {
        let path = mutex_path(shard);
        for _ in 0..MAX_MUTEX_ATTEMPTS {
            let opened = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path);
            let file = match opened {
                Ok(file) => file,
                // The shard directory is missing (never made, or swept).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    create_dirs(shard).map_err(io_error)?;
                    continue;
                }
                Err(e) => return Err(io_error(e)),
            };
            // Blocking is fine here: holders keep it for a few reads and
            // one write.
            file.lock().map_err(io_error)?;
            let ours = file.metadata().map_err(io_error)?;
            match fs::symlink_metadata(&path) {
                Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                    return Ok(Some(ShardMutex { _file: file }));
                }
                // Unlinked by a sweep (and maybe recreated) since our open.
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(e)),
            }
        }
        Err(Error::backend(format!(
            "the mutex of {} kept being removed under us",
            shard.display()
        )))
    }

    /// Remove the shard directory if nothing but this mutex is left in it:
    /// the mutex file first (while we hold it), then the directory. Whoever
    /// creates a name in the shard meanwhile makes the directory non-empty
    /// and the removal a no-op; whoever waited for the old mutex starts over
    /// (see the type's docs). Best effort: a failure leaves an empty shard.
    pub(crate) fn remove_shard_if_empty(self, shard: &Path) {
        match crate::layout::read_shard(shard) {
            Ok(entries) if entries.is_empty() => {}
            _ => return,
        }
        if fs::remove_file(mutex_path(shard)).is_ok() {
            // Fails harmlessly (not empty) if a new mutex file appeared.
            let _ = fs::remove_dir(shard);
        }
        drop(self);
    }
}

impl Inner {
    /// Write `write` as the new record, after `current_live` (the live
    /// record read under the shard mutex): keeps `created` and bumps the
    /// version, or starts a new record at version 1. `previous` is the
    /// principal of the record file being replaced, live or not, whose
    /// index marker goes if the principal changes. Returns the record as
    /// written.
    pub(crate) fn replace(
        &self,
        key: &SessionKey,
        current_live: Option<&Record>,
        previous: Option<&Principal>,
        write: RecordWrite,
    ) -> Result<Record> {
        let record = match current_live {
            Some(live) => Record {
                created: live.created,
                ..write.into_record(live.version + 1)
            },
            None => write.into_record(1),
        };
        self.write_indexed(key, &record, previous)?;
        Ok(record)
    }

    /// Rewrite the metadata of a record, data, version and principal
    /// unchanged (by rename, like every write: never in place), so its
    /// index marker stays as it is. Returns the record as written.
    pub(crate) fn retouch(
        &self,
        key: &SessionKey,
        mut record: Record,
        accessed: Timestamp,
        expires: Timestamp,
    ) -> Result<Record> {
        record.accessed = accessed;
        record.expires = expires;
        write_record(&self.layout.session(key), &key.id, &record, self.durable())?;
        Ok(record)
    }

    /// Delete the record of `key`; whether a live one was deleted. A corrupt
    /// record is deleted too (and counts as not live): logging out must work.
    /// Its index marker goes after it (one of a corrupt record stays, stale,
    /// until a listing meets it).
    pub(crate) fn remove(&self, key: &SessionKey) -> Result<bool> {
        let paths = self.layout.session(key);
        let Some(_mutex) = ShardMutex::lock_existing(&paths.shard)? else {
            return Ok(false);
        };
        self.remove_locked(key, &paths)
    }

    /// [`remove`](Self::remove), with the shard mutex already held.
    pub(crate) fn remove_locked(&self, key: &SessionKey, paths: &SessionPaths) -> Result<bool> {
        let (was_live, principal) = match read_meta(&paths.data) {
            Ok(Some(meta)) => (meta.header.is_live_at(Timestamp::now()), meta.principal),
            Ok(None) | Err(Error::Corrupt { .. }) => (false, None),
            Err(e) => return Err(e),
        };
        remove_record(paths, self.durable())?;
        if let Some(principal) = principal {
            self.remove_marker(&key.namespace, &principal, &key.id);
        }
        Ok(was_live)
    }
}
