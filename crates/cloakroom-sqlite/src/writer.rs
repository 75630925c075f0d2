//! The one writer connection of a store, on a thread of its own.
//!
//! SQLite lets one connection at a time write to a database. When several
//! pooled connections of one process take turns, each waits for the others
//! in SQLite's busy handler, which sleeps (1 ms, 2 ms, 5 ms, … up to 100 ms)
//! instead of being woken: measured on the spread benchmark, 3,125 sleeps
//! averaging 3.6 ms in a 3 s run, a p99 of 57 ms at 8 tasks, and a quarter
//! of the throughput of a plain sqlx store. So every write of a store goes
//! through this one connection, fed by a channel, and within a process
//! nobody ever meets the busy handler (other processes still do, which is
//! what it is for).
//!
//! The thread also batches: it takes whatever requests are queued (up to
//! [`MAX_BATCH`]) and runs them in one `BEGIN IMMEDIATE … COMMIT`, one
//! `SAVEPOINT` each, so one commit (one WAL append, one lock round) serves
//! many sessions. A request that SQLite fails is rolled back to its
//! savepoint alone; a request refused for a reason of its own (`LeaseLost`,
//! `Gone`, `Conflict`) keeps what it wrote, which is at most the release of
//! its lock. Callers hear their own result only after the `COMMIT`, so an
//! answer is never a write that might still be rolled back; a failed
//! `COMMIT` (or `BEGIN`) fails the whole batch.
//!
//! Between batches the thread also keeps the WAL bounded (see
//! [`checkpoint`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;

use cloakroom_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::checkpoint::{self, WalLimit};
use crate::database::Connector;
use crate::error::{is_busy, is_sql_failure};
use crate::readers::ReadGate;
use crate::schema::Sql;

/// Most requests committed together. Bounds how long the first of a batch
/// waits for the last, and the work one failed `COMMIT` undoes.
pub(crate) const MAX_BATCH: usize = 64;

/// One request to the writer.
pub(crate) trait Job: Send {
    /// Do the work, inside the batch's transaction.
    fn run(&mut self, conn: &Connection, sql: &Sql) -> Ran;

    /// Tell the caller, once the batch is committed (`failed` is `None`) or
    /// failed as a whole. May hand back a job to run next, for a caller who
    /// stopped listening and left behind a lock that must be released.
    fn answer(self: Box<Self>, failed: Option<&BatchFailure>) -> Option<Box<dyn Job>>;
}

/// Whether a job's writes stay in the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ran {
    /// Keep them (success, or a refusal that released a lock).
    Keep,
    /// SQLite failed the job: undo what it did.
    RollBack,
}

/// Why a whole batch failed, kept as text so that every request of the
/// batch gets its own [`Error`] of the same kind.
#[derive(Debug)]
pub(crate) struct BatchFailure {
    busy: bool,
    message: String,
}

impl BatchFailure {
    fn sql(e: &rusqlite::Error) -> Self {
        BatchFailure {
            busy: is_busy(e),
            message: e.to_string(),
        }
    }

    fn of(e: &Error) -> Self {
        BatchFailure {
            busy: matches!(e, Error::Unavailable { .. }),
            message: e.to_string(),
        }
    }

    pub(crate) fn error(&self) -> Error {
        if self.busy {
            Error::unavailable(self.message.clone())
        } else {
            Error::backend(self.message.clone())
        }
    }
}

type Work<T> = Box<dyn FnOnce(&Connection, &Sql) -> Result<T> + Send>;

/// What to do with a result nobody waits for any more (a cancelled `lock`
/// whose claim succeeded): the job that undoes it.
pub(crate) type Unheard<T> = Box<dyn FnOnce(T) -> Option<Box<dyn Job>> + Send>;

/// A job that computes a `T` and sends it back on a oneshot channel.
struct Task<T> {
    work: Option<Work<T>>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
    unheard: Option<Unheard<T>>,
}

impl<T: Send + 'static> Job for Task<T> {
    fn run(&mut self, conn: &Connection, sql: &Sql) -> Ran {
        let Some(work) = self.work.take() else {
            return Ran::Keep;
        };
        // A bug in one request must not take the writer (and with it every
        // write of the store) down.
        let out = catch_unwind(AssertUnwindSafe(|| work(conn, sql)))
            .unwrap_or_else(|_| Err(Error::backend("a sqlite store request panicked")));
        let ran = match &out {
            Err(e) if is_sql_failure(e) => Ran::RollBack,
            _ => Ran::Keep,
        };
        self.out = Some(out);
        ran
    }

    fn answer(self: Box<Self>, failed: Option<&BatchFailure>) -> Option<Box<dyn Job>> {
        let out = match failed {
            Some(failure) => Err(failure.error()),
            None => self
                .out
                .unwrap_or_else(|| Err(Error::backend("a sqlite store request was never run"))),
        };
        match self.reply.send(out) {
            Ok(()) => None,
            Err(Ok(value)) => self.unheard.and_then(|undo| undo(value)),
            Err(Err(_)) => None,
        }
    }
}

/// The sending end of a store's writer thread. The thread ends once every
/// sender is gone and the queue is drained, closing the connection.
#[derive(Debug)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Start the writer thread of a store. The connection is opened on the
    /// first request, so a store can be built before its file is reachable.
    /// `gate` is taken exclusively for a WAL checkpoint, pausing this
    /// store's readers.
    pub(crate) fn start(connector: &Arc<Connector>, sql: Arc<Sql>, gate: Arc<ReadGate>) -> Result<Self> {
        let (jobs, queue) = mpsc::channel();
        let connector = connector.clone();
        thread::Builder::new()
            .name("cloakroom-sqlite-writer".into())
            .spawn(move || serve(&queue, &connector, &sql, &gate))
            .map_err(|e| Error::backend(format!("cannot start the sqlite writer thread: {e}")))?;
        Ok(Writer { jobs })
    }

    /// Queue `job` without waiting for it.
    pub(crate) fn submit(&self, job: Box<dyn Job>) -> Result<()> {
        self.jobs
            .send(job)
            .map_err(|_| Error::backend("the sqlite writer thread stopped"))
    }

    /// Queue `work`; its result arrives on the returned channel after the
    /// commit. `unheard` undoes a result whose receiver was dropped first.
    pub(crate) fn request<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
        unheard: Option<Unheard<T>>,
    ) -> Result<oneshot::Receiver<Result<T>>> {
        let (reply, answer) = oneshot::channel();
        self.submit(Box::new(Task {
            work: Some(Box::new(work)),
            out: None,
            reply,
            unheard,
        }))?;
        Ok(answer)
    }

    /// Run `work` in the next batch and wait for its committed result.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection, &Sql) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.request(work, None)?.await.map_err(|_| stopped())?
    }
}

pub(crate) fn stopped() -> Error {
    Error::backend("the sqlite writer thread dropped a request")
}

/// The writer thread: batches until every sender is gone.
fn serve(queue: &mpsc::Receiver<Box<dyn Job>>, connector: &Connector, sql: &Sql, gate: &ReadGate) {
    let mut conn = None;
    let options = connector.options();
    let mut wal = WalLimit::new(&options.path, options.max_wal_bytes);
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut follow_ups: Vec<Box<dyn Job>> = Vec::new();
    loop {
        batch.append(&mut follow_ups);
        if batch.is_empty() {
            match queue.recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::RecvError) => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let failed = run_batch(&mut conn, connector, sql, &mut batch).err();
        let done = batch.len();
        for job in batch.drain(..) {
            follow_ups.extend(job.answer(failed.as_ref()));
        }
        if let Some(conn) = &conn {
            if wal.after_operations(done) {
                // No write of this store can run meanwhile (this thread is
                // the only writer) and the gate holds its readers back, so
                // only other processes can keep the checkpoint from
                // finishing; then the next look at the size tries again.
                let _paused = gate.pause();
                match checkpoint::truncate(conn) {
                    Ok(outcome) => tracing::debug!(?outcome, "sqlite WAL checkpoint (truncate)"),
                    Err(e) => tracing::warn!(error = %e, "sqlite WAL checkpoint failed; retried later"),
                }
            }
        }
    }
}

/// Run one batch in one transaction. `Err` when the batch as a whole failed
/// and nothing of it was committed.
fn run_batch(
    conn: &mut Option<Connection>,
    connector: &Connector,
    sql: &Sql,
    batch: &mut [Box<dyn Job>],
) -> std::result::Result<(), BatchFailure> {
    let conn = match conn {
        Some(conn) => conn,
        None => conn.insert(connector.connect(sql).map_err(|e| BatchFailure::of(&e))?),
    };
    let outcome = run_in_transaction(conn, sql, batch);
    if outcome.is_err() && !conn.is_autocommit() {
        // Failing too would change nothing: the batch is already reported
        // failed, and SQLite ends the transaction when it can.
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

fn run_in_transaction(
    conn: &Connection,
    sql: &Sql,
    batch: &mut [Box<dyn Job>],
) -> std::result::Result<(), BatchFailure> {
    let exec = |statement: &str| -> std::result::Result<(), BatchFailure> {
        conn.prepare_cached(statement)
            .and_then(|mut stmt| stmt.execute([]))
            .map(drop)
            .map_err(|e| BatchFailure::sql(&e))
    };
    exec("BEGIN IMMEDIATE")?;
    if let [job] = batch {
        // Alone in its batch, a job needs no savepoint: the transaction is
        // its own.
        if job.run(conn, sql) == Ran::RollBack {
            // (Unless SQLite already rolled back by itself.)
            if !conn.is_autocommit() {
                exec("ROLLBACK")?;
            }
            return Ok(());
        }
    } else {
        for job in batch.iter_mut() {
            // Some errors (disk full, I/O) make SQLite roll back the whole
            // transaction by itself; the next jobs must not then run in
            // autocommit mode, and the earlier ones are lost too.
            if conn.is_autocommit() {
                return Err(BatchFailure::of(&Error::backend(
                    "sqlite rolled back a batch of writes",
                )));
            }
            exec("SAVEPOINT job")?;
            if job.run(conn, sql) == Ran::RollBack {
                exec("ROLLBACK TO job")?;
            }
            exec("RELEASE job")?;
        }
    }
    exec("COMMIT")
}
