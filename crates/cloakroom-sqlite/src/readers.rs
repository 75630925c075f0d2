//! The reader threads of a store, and the gate that pauses them.
//!
//! Writes go to the store's one writer thread ([`writer`](crate::writer));
//! reads that need no lock (`load`, `list_ids`, `count`,
//! `list_by_principal`) go to a few reader
//! threads, each with its own connection. In WAL mode readers never wait for
//! the writer nor for each other, so they run beside the writer's batches.
//! SQLite calls never run on the async workers.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;

use cloakroom_core::{Error, Result};
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::database::Connector;
use crate::schema::Sql;

/// Held shared by each read, exclusively by the writer's WAL checkpoint
/// (see [`checkpoint`](crate::checkpoint)), which so pauses this store's
/// reads. Nothing is ever half-done under the gate (it guards `()`), so a
/// poisoned lock is taken over.
#[derive(Debug, Default)]
pub(crate) struct ReadGate(RwLock<()>);

impl ReadGate {
    fn reading(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wait for the reads in flight and hold back new ones until the guard
    /// is dropped.
    pub(crate) fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
    /// on first use. A read runs with the `gate` held shared.
    pub(crate) fn start(
        count: usize,
        connector: &Arc<Connector>,
        sql: &Arc<Sql>,
        gate: &Arc<ReadGate>,
    ) -> Result<Self> {
        let (jobs, queue) = mpsc::channel::<ReadJob>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..count.max(1) {
            let (queue, connector, sql, gate) = (queue.clone(), connector.clone(), sql.clone(), gate.clone());
            thread::Builder::new()
                .name("cloakroom-sqlite-reader".into())
                .spawn(move || serve(&queue, &connector, &sql, &gate))
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

fn serve(queue: &Mutex<mpsc::Receiver<ReadJob>>, connector: &Connector, sql: &Sql, gate: &ReadGate) {
    let mut conn: Option<Connection> = None;
    loop {
        // Idle threads queue on the mutex; the one holding it waits for the
        // next read, takes it and lets go.
        let job = {
            let queue = queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            queue.recv()
        };
        let Ok(job) = job else { return };
        let _reading = gate.reading();
        let opened = match &conn {
            Some(_) => Ok(()),
            None => connector.connect(sql).map(|c| {
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
