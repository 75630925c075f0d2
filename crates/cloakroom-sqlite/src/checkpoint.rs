//! Keeping the WAL file bounded under steady concurrent traffic.
//!
//! SQLite's automatic checkpoint copies committed pages back into the
//! database, but the WAL only starts over from its beginning when a writer
//! begins at an instant when every frame has been copied back *and* no other
//! connection is reading from the WAL. With several pooled connections
//! overlapping short transactions that instant never comes (checkpoint
//! starvation), so the file grows by every commit, for as long as the
//! traffic lasts: measured here at 260 MiB beside a 145 MiB database after
//! 64,000 writes, and at 21 GB during a sweep of a million sessions.
//!
//! So the store's writer thread (see [`writer`](crate::writer)) watches the
//! WAL's size between batches, and once it passes
//! [`SqliteOptions::max_wal_bytes`](crate::SqliteOptions::max_wal_bytes) it
//! makes that instant: being the store's only writer, it has no write of
//! its own in flight; it holds this store's readers back (the read gate)
//! and runs `PRAGMA wal_checkpoint(TRUNCATE)`. That waits, through the busy
//! timeout, for other processes' readers and writers, copies the few pages
//! the automatic checkpoints left, and truncates the file. The pause is the
//! time to finish in-flight reads plus that copy, because the automatic
//! checkpoints keep doing most of the copying meanwhile.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// How many writes pass between two looks at the WAL's size (one `stat`
/// each): at about 20 KiB of WAL per write, a few MiB at most.
const CHECK_EVERY: u64 = 64;

/// The WAL size watch of one store, kept by its writer thread.
#[derive(Debug)]
pub(crate) struct WalLimit {
    wal: PathBuf,
    max_bytes: u64,
    operations: u64,
}

/// What one `wal_checkpoint(TRUNCATE)` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalCheckpoint {
    /// Every frame copied back and the file truncated.
    Truncated,
    /// Another connection held the checkpoint lock, or a reader or writer
    /// outlasted the busy timeout; the next look at the size tries again.
    Busy,
}

impl WalLimit {
    /// A watch of the WAL beside `database` (SQLite names it `<database>-wal`).
    pub(crate) fn new(database: &Path, max_bytes: u64) -> Self {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        WalLimit {
            wal: wal.into(),
            max_bytes,
            operations: 0,
        }
    }

    /// Count `n` more writes; whenever that passes a multiple of
    /// [`CHECK_EVERY`], look at the file: true if it needs a checkpoint.
    /// A checkpoint that came back `Busy` is retried at the next look, not
    /// after every batch: another process holding it off would otherwise
    /// stall this store's writes for a busy timeout each time.
    pub(crate) fn after_operations(&mut self, n: usize) -> bool {
        let before = self.operations;
        self.operations = before.saturating_add(n as u64);
        if before / CHECK_EVERY == self.operations / CHECK_EVERY {
            return false;
        }
        // A missing file (not in WAL mode yet, or just truncated) is size 0.
        std::fs::metadata(&self.wal).map_or(0, |m| m.len()) > self.max_bytes
    }
}

/// Run `PRAGMA wal_checkpoint(TRUNCATE)` on `conn`.
pub(crate) fn truncate(conn: &Connection) -> rusqlite::Result<WalCheckpoint> {
    // (busy, frames in the WAL, frames copied back); busy is 1 when the
    // checkpoint could not finish. After a TRUNCATE both counts are 0.
    let (busy, _log, _copied): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    Ok(if busy == 0 {
        WalCheckpoint::Truncated
    } else {
        WalCheckpoint::Busy
    })
}
