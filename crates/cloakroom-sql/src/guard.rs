//! [`RowLockGuard`]: one held row lock, which is an open transaction on one
//! pooled connection.
//!
//! The lease is enforced twice. On the holder's side every finishing call
//! checks the lease deadline first, so a holder whose lease ran out gets
//! `LeaseLost` and writes nothing. On the server's side the transaction must
//! end at the deadline so that the next waiter gets the row: Postgres ends
//! it by itself (`idle_in_transaction_session_timeout`, set per lock by the
//! backend); for MySQL, which has no sub-second equivalent, a watchdog task
//! rolls the transaction back at the deadline. Either way, a holder that
//! comes back later finds its transaction gone and gets `LeaseLost`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{Error, Lease, LockGuard, Record, RecordWrite, Result, SessionKey, Timestamp};
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::driver::{Driver, Param};
use crate::error::Failure;
use crate::store::{key_params, version_to_db, RowLockStore};
use crate::tx::TxConn;

/// State shared between the guard and its lease watchdog.
struct Held<B: Backend> {
    /// The locking transaction; `None` once it has ended.
    tx: tokio::sync::Mutex<Option<TxConn<B::DB>>>,
    /// When the lease runs out.
    deadline: Mutex<Instant>,
}

impl<B: Backend> Held<B> {
    fn deadline(&self) -> Instant {
        *self.deadline.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A held session lock of a [`RowLockStore`].
pub struct RowLockGuard<B: Backend> {
    store: RowLockStore<B>,
    key: SessionKey,
    record: Option<Record>,
    lease: Lease,
    held: Arc<Held<B>>,
    watchdog: Option<JoinHandle<()>>,
}

impl<B: Backend> fmt::Debug for RowLockGuard<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowLockGuard")
            .field("backend", &B::NAME)
            .field("key", &self.key)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> RowLockGuard<B> {
    pub(crate) fn new(
        store: RowLockStore<B>,
        key: SessionKey,
        record: Option<Record>,
        tx: TxConn<B::DB>,
        lease: Duration,
        token: u64,
    ) -> Self {
        let deadline = Instant::now() + lease;
        let held = Arc::new(Held {
            tx: tokio::sync::Mutex::new(Some(tx)),
            deadline: Mutex::new(deadline),
        });
        let watchdog = B::CLIENT_LEASE_WATCHDOG.then(|| tokio::spawn(watch_lease(Arc::clone(&held))));
        RowLockGuard {
            store,
            key,
            record,
            lease: Lease {
                token: token.to_string(),
                deadline,
            },
            held,
            watchdog,
        }
    }

    /// The server's id of the connection holding this lock (Postgres
    /// `pg_backend_pid()`, MySQL `CONNECTION_ID()`), for diagnostics such as
    /// finding the holder in `pg_stat_activity` or `SHOW PROCESSLIST`.
    pub async fn connection_id(&self) -> Result<i64> {
        let mut tx = self.held.tx.lock().await;
        let tx = tx.as_mut().ok_or(Error::LeaseLost)?;
        let ids = B::DB::fetch_ints(tx.conn(), B::CONNECTION_ID, Vec::new())
            .await
            .map_err(|e| self.store.map_err(e))?;
        ids.first()
            .copied()
            .ok_or_else(|| Error::backend("no connection id returned"))
    }

    /// Take the transaction out for a finishing call, enforcing the lease.
    async fn take_tx(&mut self) -> Result<TxConn<B::DB>> {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        let tx = self.held.tx.lock().await.take().ok_or(Error::LeaseLost)?;
        if Instant::now() >= self.lease.deadline {
            let _ = tx.end(B::ROLLBACK).await;
            return Err(Error::LeaseLost);
        }
        Ok(tx)
    }

    /// The error for a failure of the locking transaction: a lost connection
    /// means the server rolled back and the lock is gone.
    fn held_error(&self, e: sqlx::Error) -> Error {
        match self.store.classify(&e) {
            Failure::Unavailable => Error::LeaseLost,
            _ => Error::backend(e),
        }
    }

    /// Run one statement in the transaction and commit it.
    async fn write_and_commit(&self, mut tx: TxConn<B::DB>, sql: &str, params: Vec<Param>) -> Result<u64> {
        let affected = match B::DB::run(tx.conn(), sql, params).await {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.end(B::ROLLBACK).await;
                return Err(self.held_error(e));
            }
        };
        // Unlike a failed statement, a COMMIT cut off by a lost connection is
        // ambiguous: the server may have committed before the connection
        // died. `Unavailable` says "outcome unknown"; `LeaseLost` would promise
        // that nothing was written (seen: a MariaDB restart mid-COMMIT wrote
        // an increment its caller had been told was refused).
        tx.end(B::COMMIT).await.map_err(|e| self.store.map_err(e))?;
        Ok(affected)
    }

    /// `Gone` if the loaded record expired while locked (a lock keeps others
    /// out, not time).
    async fn check_still_live(&self, tx: TxConn<B::DB>) -> Result<TxConn<B::DB>> {
        match &self.record {
            Some(r) if !r.is_live_at(Timestamp::now()) => {
                let _ = tx.end(B::ROLLBACK).await;
                Err(Error::Gone)
            }
            _ => Ok(tx),
        }
    }
}

async fn watch_lease<B: Backend>(held: Arc<Held<B>>) {
    loop {
        let deadline = held.deadline();
        tokio::time::sleep_until(deadline.into()).await;
        if Instant::now() < held.deadline() {
            continue; // renewed meanwhile
        }
        let tx = held.tx.lock().await.take();
        if let Some(tx) = tx {
            tracing::debug!(
                backend = B::NAME,
                "lease ran out; rolling back the holder's transaction"
            );
            let _ = tx.end(B::ROLLBACK).await;
        }
        return;
    }
}

#[async_trait]
impl<B: Backend> LockGuard for RowLockGuard<B> {
    fn key(&self) -> &SessionKey {
        &self.key
    }

    fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    fn lease(&self) -> &Lease {
        &self.lease
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        if Instant::now() >= self.lease.deadline {
            return Err(Error::LeaseLost);
        }
        let mut tx = self.held.tx.lock().await;
        let conn = tx.as_mut().ok_or(Error::LeaseLost)?.conn();
        B::renew(conn, lease).await.map_err(|e| self.held_error(e))?;
        let deadline = Instant::now() + lease;
        *self.held.deadline.lock().unwrap_or_else(PoisonError::into_inner) = deadline;
        self.lease.deadline = deadline;
        Ok(())
    }

    async fn save_and_unlock(mut self: Box<Self>, write: RecordWrite) -> Result<u64> {
        self.store.check_size(&write)?;
        let tx = self.take_tx().await?;
        let tx = self.check_still_live(tx).await?;
        let (version, created) = match &self.record {
            Some(r) => (r.version + 1, r.created),
            None => (1, write.created),
        };
        let mut params = vec![
            Param::Bytes(write.data),
            version_to_db(version)?.into(),
            created.as_millis().into(),
            write.accessed.as_millis().into(),
            write.expires.as_millis().into(),
        ];
        params.extend(key_params(&self.key, []));
        let sql = &self.store.inner.sql.held_save;
        match self.write_and_commit(tx, sql, params).await? {
            1 => Ok(version),
            n => Err(Error::backend(format!("locked save matched {n} rows"))),
        }
    }

    async fn touch_and_unlock(mut self: Box<Self>, accessed: Timestamp, expires: Timestamp) -> Result<()> {
        let tx = self.take_tx().await?;
        let tx = self.check_still_live(tx).await?;
        if self.record.is_none() {
            let _ = tx.end(B::ROLLBACK).await;
            return Err(Error::Gone);
        }
        let mut params = vec![accessed.as_millis().into(), expires.as_millis().into()];
        params.extend(key_params(&self.key, []));
        self.write_and_commit(tx, &self.store.inner.sql.held_touch, params)
            .await?;
        Ok(())
    }

    async fn delete_and_unlock(mut self: Box<Self>) -> Result<bool> {
        let tx = self.take_tx().await?;
        let params = key_params(&self.key, []);
        self.write_and_commit(tx, &self.store.inner.sql.held_delete, params)
            .await?;
        Ok(self
            .record
            .as_ref()
            .is_some_and(|r| r.is_live_at(Timestamp::now())))
    }

    async fn unlock(mut self: Box<Self>) -> Result<()> {
        // A lapsed or killed holder has nothing left to release.
        let Ok(tx) = self.take_tx().await else {
            return Ok(());
        };
        match tx.end(B::ROLLBACK).await {
            Ok(()) => Ok(()),
            Err(e) => match self.held_error(e) {
                Error::LeaseLost => Ok(()),
                other => Err(other),
            },
        }
    }
}

impl<B: Backend> Drop for RowLockGuard<B> {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        // Not finished: roll back on a task (keeping the connection), or,
        // without a runtime, let the TxConn close the connection.
        let tx = match self.held.tx.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(tx) = tx {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = tx.end(B::ROLLBACK).await;
                    });
                }
                Err(_) => drop(tx),
            }
        }
    }
}
