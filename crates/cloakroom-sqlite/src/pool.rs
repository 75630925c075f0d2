//! Opening connections, the reader threads, and the mapping of SQLite
//! errors onto cloakroom's.
//!
//! Writes go to the store's one writer thread ([`writer`](crate::writer));
//! reads that need no lock (`load`, `list_ids`, `count`) go to a few reader
//! threads, each with its own connection. In WAL mode readers never wait for
//! the writer nor for each other, so they run beside the writer's batches.
//! SQLite calls never run on the async workers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;

use cloakroom_core::{Error, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::oneshot;

use crate::config::SqliteOptions;
use crate::schema::Sql;

/// SQLite errors as cloakroom errors: a database still busy after the busy
/// timeout (another process holds the write lock too long) is
/// [`Error::Unavailable`], retryable; anything else is [`Error::Backend`].
pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Error::unavailable(e),
        _ => Error::backend(e),
    }
}

/// The gate's guards. Nothing is ever half-done under the gate (it guards
/// `()`), so a poisoned lock is taken over.
fn read_lock(gate: &RwLock<()>) -> RwLockReadGuard<'_, ()> {
    gate.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write_lock(gate: &RwLock<()>) -> RwLockWriteGuard<'_, ()> {
    gate.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Open a connection to the store's database, set up as every connection
/// of the store needs.
pub(crate) fn connect(o: &SqliteOptions) -> Result<Connection> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
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

/// One read: runs on a reader thread with its connection (or the error that
/// kept it from opening) and sends its own answer.
type ReadJob = Box<dyn FnOnce(Result<&Connection>, &Sql) + Send>;

/// The sending end of a store's reader threads; they end once it is gone.
#[derive(Debug)]
pub(crate) struct Readers {
    jobs: mpsc::Sender<ReadJob>,
}

impl Readers {
    /// Start `count` reader threads (at least one). Connections are opened
    /// on first use. A read runs with the `gate` held shared, so the writer
    /// can pause reads for a WAL checkpoint.
    pub(crate) fn start(
        count: usize,
        options: &SqliteOptions,
        sql: &Arc<Sql>,
        gate: &Arc<RwLock<()>>,
    ) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..count.max(1) {
            let (queue, options, sql, gate) = (queue.clone(), options.clone(), sql.clone(), gate.clone());
            thread::Builder::new()
                .name("cloakroom-sqlite-reader".into())
                .spawn(move || serve(&queue, &options, &sql, &gate))
                .map_err(|e| Error::backend(format!("cannot start a sqlite reader thread: {e}")))?;
        }
        Ok(Readers { jobs })
    }

    /// Run `work` on a reader connection and wait for its result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn, sql| {
                // The caller may have gone (a cancelled request): fine.
                let _ = reply.send(conn.and_then(|conn| work(conn, sql)));
            }))
            .map_err(|_| Error::backend("the sqlite reader threads stopped"))?;
        answer
            .await
            .map_err(|_| Error::backend("a sqlite reader thread dropped a request"))?
    }
}

fn serve(queue: &Mutex<mpsc::Receiver<ReadJob>>, options: &SqliteOptions, sql: &Sql, gate: &RwLock<()>) {
    let mut conn: Option<Connection> = None;
    loop {
        // Idle threads queue on the mutex; the one holding it waits for the
        // next read, takes it and lets go.
        let job = {
            let queue = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        let _reading = read_lock(gate);
        let opened = match &conn {
            Some(_) => Ok(()),
            None => connect(options).map(|c| {
                conn = Some(c);
            }),
        };
        let conn = match (&conn, opened) {
            (Some(c), _) => Ok(c),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => Err(Error::backend("sqlite reader has no connection")),
        };
        // A panicking read drops its reply (its caller gets an error) and
        // must not take the thread down with it.
        let _ = catch_unwind(AssertUnwindSafe(|| job(conn, sql)));
    }
}
