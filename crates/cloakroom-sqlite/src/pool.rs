//! A few rusqlite connections, used only on tokio's blocking pool, and the
//! mapping of SQLite errors onto cloakroom's.

use std::sync::{Arc, Mutex, MutexGuard};

use cloakroom_core::{Error, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::Semaphore;

use crate::checkpoint::{self, Outcome, WalLimit};
use crate::config::SqliteOptions;

/// SQLite errors as cloakroom errors: a database still busy after the busy
/// timeout (another process holds the write lock too long) is
/// [`Error::Unavailable`], retryable; anything else is [`Error::Backend`].
pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::unavailable(e),
        _ => Error::backend(e),
    }
}

/// Idle connections plus a limit on how many are in use at once.
#[derive(Debug)]
pub(crate) struct Pool {
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    wal: WalLimit,
}

impl Pool {
    /// A pool for `options`, which must have passed [`SqliteOptions::validate`].
    pub(crate) fn new(options: SqliteOptions) -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(options.max_connections)),
            idle: Mutex::new(Vec::new()),
            wal: WalLimit::new(&options.path, options.max_wal_bytes),
            options,
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // Push and pop only: nothing half-done to inherit from a panic.
        self.idle.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Run `work` with a connection on the blocking pool. A connection whose
    /// work failed is still reused: a transaction left open is rolled back
    /// when rusqlite's `Transaction` drops.
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::backend("sqlite connection pool closed"))?;
        let pool = self.clone();
        let out = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let out = pool.with_connection(work);
            pool.wal.after_operation();
            out
        })
        .await
        .map_err(|e| Error::backend(format!("sqlite worker failed: {e}")))?;
        if self.wal.claim() {
            let mut claim = Claim {
                pool: self.clone(),
                outcome: None,
            };
            tokio::spawn(async move {
                let outcome = claim.pool.truncate_wal().await;
                claim.done(outcome);
            });
        }
        out
    }

    fn with_connection<T>(&self, work: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut conn = match self.idle().pop() {
            Some(conn) => conn,
            None => self.connect()?,
        };
        let out = work(&mut conn);
        self.idle().push(conn);
        out
    }

    /// Checkpoint and truncate the WAL with every connection of this pool
    /// idle (see [`checkpoint`] for why). `None` if it failed outright.
    async fn truncate_wal(self: &Arc<Self>) -> Option<Outcome> {
        // `validate` keeps max_connections within u32; the semaphore queues
        // new work behind this claim, so the pool drains and stays idle.
        let all = u32::try_from(self.options.max_connections).unwrap_or(u32::MAX);
        let permits = self.permits.clone().acquire_many_owned(all).await.ok()?;
        let pool = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            let _permits = permits;
            let started = std::time::Instant::now();
            let outcome = pool.with_connection(|conn| checkpoint::truncate(conn).map_err(sql_error));
            (outcome, started.elapsed())
        })
        .await;
        match result {
            Ok((Ok(outcome), paused)) => {
                tracing::debug!(?outcome, ?paused, "sqlite WAL checkpoint (truncate)");
                Some(outcome)
            }
            Ok((Err(e), _)) => {
                tracing::warn!(error = %e, "sqlite WAL checkpoint failed; retried later");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "sqlite WAL checkpoint worker failed; retried later");
                None
            }
        }
    }

    fn connect(&self) -> Result<Connection> {
        let o = &self.options;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&o.path, flags).map_err(sql_error)?;
        conn.busy_timeout(o.busy_timeout).map_err(sql_error)?;
        // WAL: readers never block the writer nor each other, and a commit is
        // one append; the setting is persistent in the file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sql_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(format!(
                "sqlite refused WAL mode (got {mode}); is the database on a network file system?"
            )));
        }
        conn.pragma_update(None, "synchronous", o.synchronous.pragma_value())
            .map_err(sql_error)?;
        // Whenever the WAL does start over, cut the file back to the limit
        // instead of keeping the largest size it ever reached.
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(o.max_wal_bytes).unwrap_or(i64::MAX),
        )
        .map_err(sql_error)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }
}

/// A claimed WAL checkpoint, released however its task ends (even dropped
/// unfinished with its runtime), so that a later one can run.
struct Claim {
    pool: Arc<Pool>,
    outcome: Option<Outcome>,
}

impl Claim {
    fn done(&mut self, outcome: Option<Outcome>) {
        self.outcome = outcome;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.pool.wal.finish(self.outcome);
    }
}
