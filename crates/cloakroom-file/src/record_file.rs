//! One record file: reading it, replacing it whole, removing it, and the
//! shard write mutex that makes a read-check-replace atomic against every
//! other writer. Everything here runs on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cloakroom_core::{Error, Record, RecordWrite, Result, SessionId, SessionKey, Timestamp};

use crate::error::io_error;
use crate::format::{self, Header, HEADER_LEN};
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
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error)
}

/// The write mutex of one shard directory, held while a writer reads the
/// current record, checks it and replaces it, so that compare-and-set, the
/// fenced writes of lock holders and the sweep's check-then-delete are atomic
/// against every other writer in every process. Held for one read and one
/// write at most, never across a request; released when dropped (closing
/// the file drops the `flock`).
#[derive(Debug)]
pub(crate) struct ShardMutex {
    _file: File,
}

impl ShardMutex {
    /// Wait for the mutex of the shard directory `shard`, creating it if needed.
    pub(crate) fn lock(shard: &Path) -> Result<Self> {
        let path = mutex_path(shard);
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        };
        let file = match open() {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                create_dirs(shard).map_err(io_error)?;
                open().map_err(io_error)?
            }
            Err(e) => return Err(io_error(e)),
        };
        // Blocking is fine here: holders keep it for one read and one write.
        file.lock().map_err(io_error)?;
        Ok(ShardMutex { _file: file })
    }
}

impl Inner {
    /// Write `write` as the new record, after `current_live` (the record read
    /// under the shard mutex): keeps `created` and bumps the version, or
    /// starts a new record at version 1. Returns the record as written.
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
        write_record(&self.layout.session(key), &key.id, &record, self.durable())?;
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
        write_record(&self.layout.session(key), &key.id, &record, self.durable())?;
        Ok(record)
    }

    /// Delete the record of `key`; whether a live one was deleted. A corrupt
    /// record is deleted too (and counts as not live): logging out must work.
    pub(crate) fn remove(&self, key: &SessionKey) -> Result<bool> {
        let paths = self.layout.session(key);
        let _mutex = ShardMutex::lock(&paths.shard)?;
        let was_live = match read_header(&paths.data) {
            Ok(h) => h.is_some_and(|h| h.is_live_at(Timestamp::now())),
            Err(Error::Corrupt { .. }) => false,
            Err(e) => return Err(e),
        };
        remove_record(&paths, self.durable())?;
        Ok(was_live)
    }
}
