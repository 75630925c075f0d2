//! A few rusqlite connections, used only on tokio's blocking pool, and the
//! mapping of SQLite errors onto cloakroom's.

use std::sync::{Arc, Mutex, MutexGuard};

use cloakroom_core::{Error, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::Semaphore;

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
}

impl Pool {
    pub(crate) fn new(options: SqliteOptions) -> Self {
        Pool {
            permits: Arc::new(Semaphore::new(options.max_connections)),
            idle: Mutex::new(Vec::new()),
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
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = match pool.idle().pop() {
                Some(conn) => conn,
                None => pool.connect()?,
            };
            let out = work(&mut conn);
            pool.idle().push(conn);
            out
        })
        .await
        .map_err(|e| Error::backend(format!("sqlite worker failed: {e}")))?
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
        conn.set_prepared_statement_cache_capacity(32);
        Ok(conn)
    }
}
