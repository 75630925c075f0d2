//! The principal index: one empty marker file per stored id in a directory
//! per principal, `<root>/<namespace>/principals/<digest>/<id>` (see
//! `layout`), so that listing a principal's sessions reads one small
//! directory and that principal's records, never the whole namespace.
//!
//! A record and its marker are two files, and no rename changes both, so
//! the index is kept a *superset* of the live records with that principal
//! and every listing checks each marker against its record:
//!
//! - A write that gives a record the principal `P` first makes `P`'s marker
//!   (fsynced with its directory when the store is durable, like records),
//!   then writes the record.
//! - A write that takes `P` away (a delete, a sweep, a save with another
//!   principal or none) first writes or removes the record, then removes
//!   `P`'s marker, best effort.
//! - Both happen under the record's shard mutex, the one every write of
//!   that record takes, so for one id the marker steps and the record write
//!   are never interleaved with another writer's.
//!
//! A crash (or a failed removal) between two steps thus leaves a marker
//! whose record is gone or belongs to someone else, never a live record
//! without its marker. Such stale markers are harmless: a listing loads the
//! record behind each marker, keeps only records live with the principal
//! asked for, and removes the stale markers it meets, re-checking under the
//! shard mutex (without it, a listing that read the record just before a
//! writer marked and wrote it could remove the new marker). Expired
//! records' markers are stale too; the sweep removes them with the record.
//!
//! A principal's directory is removed when its last marker goes, so the
//! index does not keep a directory for every principal ever seen; a writer
//! that finds its directory removed under it makes it again.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;

use cloakroom_core::{
    Error, Namespace, Principal, Record, Result, SessionId, SessionKey, SessionSummary, Timestamp,
};

use crate::error::io_error;
use crate::layout::{self, create_dirs};
use crate::record_file::{self, sync_dir, ShardMutex};
use crate::store::Inner;

/// Attempts to make a marker whose directory keeps being removed under us
/// (the last marker of the principal removed between our mkdir and our
/// create, again and again) before giving up.
const MAX_MARKER_ATTEMPTS: usize = 64;

impl Inner {
    /// Write `record` as the record of `key`, keeping the index a superset:
    /// the marker of its principal first, the record, then the removal of
    /// the marker of `previous`, the principal of the record file it
    /// replaces (live or not), if that was another. Call under the shard
    /// mutex.
    pub(crate) fn write_indexed(
        &self,
        key: &SessionKey,
        record: &Record,
        previous: Option<&Principal>,
    ) -> Result<()> {
        if let Some(principal) = &record.principal {
            self.add_marker(&key.namespace, principal, &key.id)?;
        }
        record_file::write_record(&self.layout.session(key), &key.id, record, self.durable())?;
        if let Some(previous) = previous.filter(|p| record.principal.as_ref() != Some(*p)) {
            self.remove_marker(&key.namespace, previous, &key.id);
        }
        Ok(())
    }

    /// Make the marker of `id` in `principal`'s directory, durably if the
    /// store is durable. Call under the shard mutex of `id`.
    fn add_marker(&self, namespace: &Namespace, principal: &Principal, id: &SessionId) -> Result<()> {
        let dir = self.layout.principal_dir(namespace, principal);
        let marker = dir.join(id.as_str());
        let mut made_dir = false;
        for _ in 0..MAX_MARKER_ATTEMPTS {
            let created = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&marker);
            match created {
                Ok(_) => {
                    if self.durable() {
                        sync_dir(&dir)?;
                        if made_dir {
                            // The new directory's own entry, and that of
                            // `principals` if it was new as well.
                            let principals = self.layout.principals_dir(namespace);
                            sync_dir(&principals)?;
                            sync_dir(&self.layout.namespace_dir(namespace))?;
                        }
                    }
                    return Ok(());
                }
                // Made by an earlier write of this record, under the same
                // mutex, which synced it before letting go.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => match create_dirs(&dir) {
                    Ok(()) => made_dir = true,
                    // A parent removed as the last marker of another
                    // principal went: try again.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(e)),
                },
                Err(e) => return Err(io_error(e)),
            }
        }
        Err(Error::backend(format!(
            "the index directory {} kept being removed under us",
            dir.display()
        )))
    }

    /// Remove the marker of `id` from `principal`'s directory, and the
    /// directory (and `principals`) if that was the last marker. Best
    /// effort: a marker left behind is stale, which listings tolerate and
    /// clean up. Call under the shard mutex of `id`.
    pub(crate) fn remove_marker(&self, namespace: &Namespace, principal: &Principal, id: &SessionId) {
        let dir = self.layout.principal_dir(namespace, principal);
        match fs::remove_file(dir.join(id.as_str())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(namespace = %namespace, error = %e, "file store left a stale index marker");
                return;
            }
        }
        // Both fail harmlessly while anything is left in them; a writer that
        // makes a marker meanwhile makes the directory again.
        if fs::remove_dir(&dir).is_ok() {
            let _ = fs::remove_dir(self.layout.principals_dir(namespace));
        }
    }

    /// The live records of `namespace` with `principal`, oldest first, from
    /// the markers; stale markers met on the way are removed.
    pub(crate) fn list_by_principal_blocking(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let dir = self.layout.principal_dir(namespace, principal);
        let mut sessions = Vec::new();
        for id in layout::read_markers(&dir).map_err(io_error)? {
            let key = SessionKey::new(namespace.clone(), id);
            // Without the mutex: records are replaced whole, so this is the
            // record as it was at some point during the call.
            match record_file::read_meta(&self.layout.session(&key).data) {
                Ok(Some(meta)) if is_listed(meta.header.expires, meta.principal.as_ref(), principal) => {
                    sessions.push(SessionSummary {
                        id: key.id,
                        created: meta.header.created,
                        accessed: meta.header.accessed,
                        expires: meta.header.expires,
                    });
                }
                Ok(_) => {
                    if let Err(e) = self.drop_stale_marker(&key, principal) {
                        tracing::debug!(%key, error = %e, "file store could not remove a stale index marker");
                    }
                }
                Err(Error::Corrupt { reason }) => {
                    // Kept: the marker may be right, and it costs nothing.
                    tracing::warn!(%key, %reason, "file store principal listing skipped a corrupt record");
                }
                Err(e) => return Err(e),
            }
        }
        sessions.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)));
        Ok(sessions)
    }

    /// Remove `principal`'s marker of `key` if, under the shard mutex, the
    /// record is still not live with that principal.
    fn drop_stale_marker(&self, key: &SessionKey, principal: &Principal) -> Result<()> {
        let paths = self.layout.session(key);
        // Taken even if the shard is gone: a writer may be about to make it,
        // mark the record and write it, and must not lose its marker to us.
        let mutex = ShardMutex::lock(&paths.shard)?;
        let (stale, record_missing) = match record_file::read_meta(&paths.data) {
            Ok(Some(meta)) => (
                !is_listed(meta.header.expires, meta.principal.as_ref(), principal),
                false,
            ),
            Ok(None) => (true, true),
            Err(_) => (false, false),
        };
        if stale {
            self.remove_marker(&key.namespace, principal, &key.id);
        }
        if record_missing {
            // We may have made the shard just now to hold its mutex.
            mutex.remove_shard_if_empty(&paths.shard);
        }
        Ok(())
    }
}

/// Whether a record expiring at `expires` with `has` is live with `wanted`.
fn is_listed(expires: Timestamp, has: Option<&Principal>, wanted: &Principal) -> bool {
    expires > Timestamp::now() && has == Some(wanted)
}
