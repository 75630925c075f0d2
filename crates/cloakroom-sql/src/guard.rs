//! Taking a row lock ([`RowLockStore::lock_row`]) and [`RowLockGuard`]: one
//! held row lock, which is an open transaction on one pooled connection.
//!
//! The lease is enforced twice. On the holder's side every finishing call
//! checks the lease deadline first, so a holder whose lease ran out gets
//! `LeaseLost` and writes nothing. On the server's side the transaction must
//! end at the deadline so that the next waiter gets the row: Postgres ends
//! it by itself (`idle_in_transaction_session_timeout`, set per lock by the
//! backend); for MySQL, which has no sub-second equivalent, a watchdog task
//! rolls the transaction back at the deadline. Either way, a holder that
//! comes back later finds its transaction gone and gets `LeaseLost`.
//!
//! A row lock cannot outlive a `COMMIT`, so [`Then::Keep`] writes into the
//! locking transaction and leaves it open: the next holder's turn sees the
//! write, other connections see the last committed version, and the write
//! becomes durable at the [`Then::Release`] that commits it (hence
//! `durable_while_locked = false`). A finish that fails, a lease that runs
//! out, and a guard dropped without a release all roll the transaction back,
//! kept writes included: an error from `finish` means that nothing of the
//! uncommitted chain was written, except for a `COMMIT` cut off by a lost
//! connection, which is `Unavailable` (outcome unknown).
//!
//! [`Finish::Rotate`] runs in the same transaction, so it is atomic here
//! (`Capabilities::rotates_atomically`): the holder deletes its row if it is
//! still the live record at the version it knows, writes the new id's row
//! (over an expired one, or new) unless a live record holds it, and then
//! commits or, with [`Then::Keep`], keeps the transaction open like a kept
//! save. Any refusal rolls the whole transaction back, so nothing of it is
//! ever seen. The new id's row is locked by the transaction until it ends.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{
    wait_for_lock, Error, Finish, Finished, HeldSession, Lease, LockGuard, LockOptions, Record, RecordWrite,
    Result, SessionId, SessionKey, Then, Timestamp,
};
use sqlx::pool::PoolConnection;
use tokio::task::JoinHandle;

use crate::backend::Backend;
use crate::connection::{Driver, Param, PrincipalColumn, TxConn};
use crate::error::{to_error, Failure};
use crate::store::{
    insert_params, key_params, live_record, over_expired_params, version_from_db, version_to_db, RowLockStore,
};

impl<B: Backend> RowLockStore<B> {
    /// Take the lock on `key`, like
    /// [`SessionStore::lock`](cloakroom_core::SessionStore::lock), returning
    /// the concrete guard.
    pub(crate) async fn lock_row(&self, key: &SessionKey, options: LockOptions) -> Result<RowLockGuard<B>> {
        wait_for_lock(options.wait, |left| async move {
            let attempt = LockOptions::new(options.lease, left);
            Ok(self.try_lock_row(key, attempt).await?.ok_or(None))
        })
        .await
    }

    /// One attempt at the row lock of `key`, queued in the server (its own
    /// wake-up) for at most `options.wait`; `None` if the row stayed locked.
    pub(crate) async fn try_lock_row(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> Result<Option<RowLockGuard<B>>> {
        let give_up = Instant::now() + options.wait;
        let mut tx = match self.begin_locking_tx(give_up, options.lease).await {
            Ok(tx) => tx,
            Err(None) => return Ok(None),
            Err(Some(e)) => return Err(e),
        };
        let row = match B::lock_row(tx.conn(), &self.inner.sql, key, options.lease, give_up).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                // Not worth a failure of its own if the rollback fails: the
                // connection is closed then, which ends the transaction too.
                let _ = tx.end(B::ROLLBACK).await;
                return Ok(None);
            }
            Err(e) => {
                let failure = self.classify(&e);
                if failure == Failure::LockBusy {
                    let _ = tx.end(B::ROLLBACK).await;
                    return Ok(None);
                }
                return Err(to_error(e, failure));
            }
        };
        let record = live_record(row, Timestamp::now())?;
        let token = self.inner.next_token.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Some(RowLockGuard::new(
            self.clone(),
            key.clone(),
            record,
            tx,
            options.lease,
            token,
        )))
    }

    /// A connection on which the locking transaction has begun
    /// ([`Backend::begin_lock`]). `Err(None)`: timed out.
    ///
    /// An idle connection is taken without the pool's liveness ping (a
    /// round trip of its own before every acquire): the `BEGIN` script, one
    /// round trip either way, is the test. It has no effect that outlives a
    /// failure (a transaction that began on a connection that then fails is
    /// rolled back by the server), so if it fails for any reason the
    /// connection is closed and the lock goes the regular way, through a
    /// pinged (or new) connection, as if the idle one had failed its ping.
    async fn begin_locking_tx(
        &self,
        give_up: Instant,
        lease: Duration,
    ) -> std::result::Result<TxConn<B::DB>, Option<Error>> {
        // A lock with no time left still tries once (a `wait` of zero means
        // "do not wait for a holder"), so `left` may be zero throughout.
        if let Some(conn) = self.pool().try_acquire() {
            let left = give_up.saturating_duration_since(Instant::now());
            let mut tx = TxConn::new(conn);
            match B::DB::run_script(tx.conn(), &B::begin_lock(left, lease)).await {
                Ok(()) => return Ok(tx),
                Err(e) => {
                    tracing::debug!(
                        backend = B::NAME,
                        error = %e,
                        "an idle connection failed to begin a lock; closing it and taking another"
                    );
                    // Dropping the transaction closes the connection.
                    drop(tx);
                }
            }
        }
        let conn = self.acquire_for_lock(give_up).await?;
        let left = give_up.saturating_duration_since(Instant::now());
        let mut tx = TxConn::new(conn);
        B::DB::run_script(tx.conn(), &B::begin_lock(left, lease))
            .await
            .map_err(|e| Some(self.map_err(e)))?;
        Ok(tx)
    }

    /// A connection for `lock`. Waiting for a connection that other
    /// requests hold (an exhausted pool) is a wait like any other, bounded by
    /// the lock's deadline (`Err(None)`: timed out). A connection the pool
    /// can give at once (idle, or a new one) is taken even by a lock that may
    /// not wait at all, within the pool's acquire timeout like every other
    /// call: a lock that waits for nobody must still be able to take a free
    /// session, and a server that cannot be reached is `Unavailable`, not a
    /// busy lock. (If the pool is exhausted by other locks between the check
    /// and the acquire, the wait for a connection is bounded by the acquire
    /// timeout rather than by the lock's.)
    async fn acquire_for_lock(
        &self,
        give_up: Instant,
    ) -> std::result::Result<PoolConnection<B::DB>, Option<Error>> {
        let pool = self.pool();
        let max = self.inner.options.max_connections;
        loop {
            let exhausted = pool.num_idle() == 0 && pool.size() >= max;
            let acquired = if exhausted {
                match tokio::time::timeout_at(give_up.into(), pool.acquire()).await {
                    Ok(acquired) => acquired,
                    Err(_elapsed) => return Err(None),
                }
            } else {
                pool.acquire().await
            };
            match acquired {
                Ok(conn) => return Ok(conn),
                Err(sqlx::Error::PoolTimedOut) if pool.size() >= max => {
                    if Instant::now() >= give_up {
                        return Err(None);
                    }
                }
                Err(e) => return Err(Some(self.map_err(e))),
            }
        }
    }
}

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
pub(crate) struct RowLockGuard<B: Backend> {
    store: RowLockStore<B>,
    held: HeldSession,
    /// The transaction and deadline, shared with the lease watchdog.
    shared: Arc<Held<B>>,
    watchdog: Option<JoinHandle<()>>,
    /// The transaction holds writes made with `Then::Keep` that no `COMMIT`
    /// has made durable yet: a release must commit, even with nothing to write.
    pending: bool,
    /// The locked row exists in the transaction (a record, an expired record
    /// or a lock placeholder); false after a kept delete, when a save must
    /// insert.
    row: bool,
}

/// What one write did inside the transaction, before it is kept or committed.
struct Written {
    finished: Finished,
    /// The guard's record afterwards; `None`: unchanged.
    record: Option<Option<Record>>,
    /// A statement changed the transaction.
    wrote: bool,
    /// Whether the locked row exists in the transaction afterwards.
    row: bool,
}

impl<B: Backend> fmt::Debug for RowLockGuard<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowLockGuard")
            .field("backend", &B::NAME)
            .field("key", &self.held.key)
            .field("lease", &self.held.lease)
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
        let shared = Arc::new(Held {
            tx: tokio::sync::Mutex::new(Some(tx)),
            deadline: Mutex::new(deadline),
        });
        let watchdog = B::CLIENT_LEASE_WATCHDOG.then(|| tokio::spawn(watch_lease(Arc::clone(&shared))));
        RowLockGuard {
            store,
            held: HeldSession {
                key,
                record,
                lease: Lease {
                    token: token.to_string(),
                    deadline,
                },
            },
            shared,
            watchdog,
            pending: false,
            row: true,
        }
    }

    /// The server's id of the connection holding this lock.
    pub(crate) async fn connection_id(&self) -> Result<i64> {
        let mut tx = self.shared.tx.lock().await;
        let tx = tx.as_mut().ok_or(Error::LeaseLost)?;
        let ids = B::DB::fetch_ints(tx.conn(), B::CONNECTION_ID, Vec::new())
            .await
            .map_err(|e| self.store.map_err(e))?;
        ids.first()
            .copied()
            .ok_or_else(|| Error::backend("no connection id returned"))
    }

    /// Take the transaction out for a finishing call; `LeaseLost` if it has
    /// ended (released, failed, or rolled back by the lease watchdog).
    async fn take_tx(&mut self) -> Result<TxConn<B::DB>> {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        self.shared.tx.lock().await.take().ok_or(Error::LeaseLost)
    }

    /// Hand the transaction back after a kept write, with its watchdog.
    async fn keep_tx(&mut self, tx: TxConn<B::DB>) {
        *self.shared.tx.lock().await = Some(tx);
        if B::CLIENT_LEASE_WATCHDOG {
            // Same deadline: if it passed during the write, this rolls back at once.
            self.watchdog = Some(tokio::spawn(watch_lease(Arc::clone(&self.shared))));
        }
    }

    /// End the transaction after a failure, dropping its writes (kept ones too).
    async fn abandon(&mut self, tx: TxConn<B::DB>) {
        self.pending = false;
        // Not worth a failure of its own: if the rollback fails the
        // connection is closed, which ends the transaction too.
        let _ = tx.end(B::ROLLBACK).await;
    }

    /// The error for a failure of the locking transaction: a lost connection
    /// means the server rolled back and the lock is gone.
    fn held_error(&self, e: sqlx::Error) -> Error {
        match self.store.classify(&e) {
            Failure::Unavailable => Error::LeaseLost,
            _ => Error::backend(e),
        }
    }

    /// `Gone` if the guard's record expired while locked (a lock keeps others
    /// out, not time). Nobody else can have changed the row: the row lock
    /// makes every other writer wait, so this is the whole "still live" check.
    fn check_still_live(&self, now: Timestamp) -> Result<()> {
        match &self.held.record {
            Some(r) if !r.is_live_at(now) => Err(Error::Gone),
            _ => Ok(()),
        }
    }

    /// Run one of the holder's statements (`params` without the lease
    /// parameter) in the transaction; returns how many rows it wrote.
    async fn run_held(&self, tx: &mut TxConn<B::DB>, sql: &str, params: Vec<Param>) -> Result<u64> {
        // A failed statement on a lost connection is `LeaseLost`: the server
        // rolled the transaction back, nothing was written.
        self.run_held_raw(tx, sql, params)
            .await
            .map_err(|e| self.held_error(e))
    }

    /// [`run_held`](Self::run_held) with the driver's error, for a caller
    /// that tells some errors apart.
    async fn run_held_raw(
        &self,
        tx: &mut TxConn<B::DB>,
        sql: &str,
        mut params: Vec<Param>,
    ) -> sqlx::Result<u64> {
        if self.store.inner.sql.held_sets_lease {
            // Rounded up: the server must not end the transaction before our
            // own deadline, or a release that commits kept writes just
            // before it would find the connection gone and have to answer
            // `Unavailable` (outcome unknown) for a transaction surely rolled back.
            let left = self.held.lease.deadline.saturating_duration_since(Instant::now());
            let millis = left.as_micros().div_ceil(1000).max(1);
            params.push(Param::Text(format!("{millis}ms")));
            B::DB::fetch_texts(tx.conn(), sql, params)
                .await
                .map(|rows| u64::try_from(rows.len()).unwrap_or(u64::MAX))
        } else {
            B::DB::run(tx.conn(), sql, params).await
        }
    }

    /// [`Finish::Rotate`], in the locking transaction, which the caller
    /// rolls back if this fails.
    async fn rotate(
        &self,
        tx: &mut TxConn<B::DB>,
        to: SessionId,
        write: RecordWrite,
        now: Timestamp,
    ) -> Result<Written> {
        self.check_still_live(now)?;
        // No record (a new session, or one deleted earlier in this chain):
        // nothing to move, and a rotation must not create one from nothing.
        let Some(current) = &self.held.record else {
            return Err(Error::Gone);
        };
        let from = &self.held.key;
        if to == from.id {
            return Err(Error::Conflict {
                expected: 0,
                found: current.version,
            });
        }
        let sql = &self.store.inner.sql;
        let now_ms = now.as_millis();

        // The row lock keeps other writers out, so the version cannot have
        // moved; the statement checks it anyway, and the expiry, which time
        // alone can change.
        let params = key_params(from, [version_to_db(current.version)?, now_ms]);
        if self.run_held(tx, &sql.held_rotate_delete, params).await? != 1 {
            let live = self.live_version_in_tx(tx, from, now_ms).await?;
            return Err(match live {
                Some(found) => Error::Conflict {
                    expected: current.version,
                    found,
                },
                None => Error::Gone,
            });
        }

        let target = SessionKey::new(from.namespace.clone(), to);
        let over_expired = over_expired_params::<B>(&target, &write, now_ms);
        let mut placed = self
            .run_target(tx, &sql.held_rotate_over_expired, over_expired)
            .await?
            > 0;
        if !placed {
            placed = self
                .run_target(tx, &sql.held_rotate_insert, insert_params::<B>(&target, &write))
                .await?
                > 0;
        }
        if !placed {
            // Neither expired nor missing: a live record holds the new id.
            let found = self.live_version_in_tx(tx, &target, now_ms).await?;
            return Err(Error::Conflict {
                expected: 0,
                found: found.unwrap_or(0),
            });
        }
        Ok(Written {
            finished: Finished::Rotated,
            record: Some(None),
            wrote: true,
            row: false,
        })
    }

    /// One of the rotation's writes to the new id. That row's lock held by
    /// another transaction (past this one's lock timeout) means another
    /// request is using the id: `Conflict` (its version unknown, so 0),
    /// like a live record there.
    async fn run_target(&self, tx: &mut TxConn<B::DB>, sql: &str, params: Vec<Param>) -> Result<u64> {
        match self.run_held_raw(tx, sql, params).await {
            Ok(n) => Ok(n),
            Err(e) => match self.store.classify(&e) {
                Failure::LockBusy | Failure::Deadlock => Err(Error::Conflict {
                    expected: 0,
                    found: 0,
                }),
                _ => Err(self.held_error(e)),
            },
        }
    }

    /// The version of the live record under `key` as this transaction sees it.
    async fn live_version_in_tx(
        &self,
        tx: &mut TxConn<B::DB>,
        key: &SessionKey,
        now: i64,
    ) -> Result<Option<u64>> {
        let found = B::DB::fetch_ints(
            tx.conn(),
            &self.store.inner.sql.live_version,
            key_params(key, [now]),
        )
        .await
        .map_err(|e| self.held_error(e))?;
        found.first().map(|&v| version_from_db(v)).transpose()
    }

    /// Apply `op` inside the transaction, without committing.
    async fn write(&self, tx: &mut TxConn<B::DB>, op: Finish) -> Result<Written> {
        let now = Timestamp::now();
        let sql = &self.store.inner.sql;
        match op {
            Finish::Save(write) => {
                self.check_still_live(now)?;
                let (version, created) = match &self.held.record {
                    Some(r) => (r.version + 1, r.created),
                    None => (1, write.created),
                };
                let record = Record {
                    created,
                    ..write.into_record(version)
                };
                let mut params = vec![
                    Param::Bytes(record.data.clone()),
                    version_to_db(version)?.into(),
                    created.as_millis().into(),
                    record.accessed.as_millis().into(),
                    record.expires.as_millis().into(),
                    B::DB::principal_param(record.principal.as_ref()),
                ];
                params.extend(key_params(&self.held.key, []));
                let statement = if self.row {
                    &sql.held_save
                } else {
                    &sql.held_insert
                };
                match self.run_held(tx, statement, params).await? {
                    1 => Ok(Written {
                        finished: Finished::Saved { version },
                        record: Some(Some(record)),
                        wrote: true,
                        row: true,
                    }),
                    n => Err(Error::backend(format!("locked save matched {n} rows"))),
                }
            }
            Finish::Touch { accessed, expires } => {
                self.check_still_live(now)?;
                let Some(current) = &self.held.record else {
                    return Err(Error::Gone);
                };
                let mut params = vec![accessed.as_millis().into(), expires.as_millis().into()];
                params.extend(key_params(&self.held.key, []));
                match self.run_held(tx, &sql.held_touch, params).await? {
                    1 => Ok(Written {
                        finished: Finished::Touched,
                        record: Some(Some(Record {
                            accessed,
                            expires,
                            ..current.clone()
                        })),
                        wrote: true,
                        row: true,
                    }),
                    n => Err(Error::backend(format!("locked touch matched {n} rows"))),
                }
            }
            Finish::Delete => {
                let was_live = self.held.record.as_ref().is_some_and(|r| r.is_live_at(now));
                // Deleted earlier in this transaction: nothing left to delete.
                let wrote = self.row;
                if wrote {
                    self.run_held(tx, &sql.held_delete, key_params(&self.held.key, []))
                        .await?;
                }
                Ok(Written {
                    finished: Finished::Deleted { was_live },
                    record: Some(None),
                    wrote,
                    row: false,
                })
            }
            Finish::Rotate { to, write } => self.rotate(tx, to, write, now).await,
            Finish::Nothing => Ok(Written {
                finished: Finished::Nothing,
                record: None,
                wrote: false,
                row: self.row,
            }),
            _ => Err(Error::backend(format!(
                "{}: a kind of finish this backend does not know",
                B::NAME
            ))),
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
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        if Instant::now() >= self.held.lease.deadline {
            return Err(Error::LeaseLost);
        }
        let mut tx = self.shared.tx.lock().await;
        let conn = tx.as_mut().ok_or(Error::LeaseLost)?.conn();
        B::renew(conn, lease).await.map_err(|e| self.held_error(e))?;
        let deadline = Instant::now() + lease;
        *self
            .shared
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = deadline;
        self.held.lease.deadline = deadline;
        Ok(())
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        let mut tx = self.take_tx().await?;
        if let Finish::Save(write) | Finish::Rotate { write, .. } = &op {
            if let Err(too_large) = self.store.check_size(write) {
                self.abandon(tx).await;
                return Err(too_large);
            }
        }
        // The lease is checked here, before anything is sent: a holder whose
        // lease ran out writes nothing, even if the server has not ended its
        // transaction yet.
        if Instant::now() >= self.held.lease.deadline {
            self.abandon(tx).await;
            return Err(Error::LeaseLost);
        }
        let written = match self.write(&mut tx, op).await {
            Ok(written) => written,
            Err(e) => {
                self.abandon(tx).await;
                return Err(e);
            }
        };
        let commit = written.wrote || self.pending;
        match then {
            Then::Keep => {
                self.pending = commit;
                self.keep_tx(tx).await;
            }
            Then::Release if commit => {
                self.pending = false;
                // Unlike a failed statement, a COMMIT cut off by a lost
                // connection is ambiguous: the server may have committed
                // before the connection died. `Unavailable` says "outcome
                // unknown"; `LeaseLost` would promise that nothing was written
                // (seen: a MariaDB restart mid-COMMIT wrote an increment its
                // caller had been told was refused).
                tx.end(B::COMMIT).await.map_err(|e| self.store.map_err(e))?;
            }
            // Nothing to keep: the rollback also removes a lock placeholder.
            Then::Release => tx.end(B::ROLLBACK).await.map_err(|e| self.held_error(e))?,
        }
        self.row = written.row;
        if let Some(record) = written.record {
            self.held.record = record;
        }
        Ok(written.finished)
    }
}

impl<B: Backend> Drop for RowLockGuard<B> {
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
        // Not finished: roll back on a task (keeping the connection), or,
        // without a runtime, let the TxConn close the connection.
        let tx = match self.shared.tx.try_lock() {
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

/// Writes the public guard type of a store written by
/// [`public_store!`](crate::store::public_store): a newtype over the
/// [`RowLockGuard`] of one backend whose [`LockGuard`] impl forwards every
/// call.
macro_rules! public_guard {
    ($(#[$doc:meta])* $guard:ident, backend $backend:ty $(,)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $guard($crate::guard::RowLockGuard<$backend>);

        impl $guard {
            /// The server's id of the connection holding this lock (Postgres
            /// `pg_backend_pid()`, MySQL `CONNECTION_ID()`), for diagnostics
            /// such as finding the holder in `pg_stat_activity` or
            /// `SHOW PROCESSLIST`.
            pub async fn connection_id(&self) -> cloakroom_core::Result<i64> {
                self.0.connection_id().await
            }
        }

        #[async_trait::async_trait]
        impl cloakroom_core::LockGuard for $guard {
            fn held(&self) -> &cloakroom_core::HeldSession {
                self.0.held()
            }

            async fn renew(&mut self, lease: std::time::Duration) -> cloakroom_core::Result<()> {
                self.0.renew(lease).await
            }

            async fn finish(
                &mut self,
                op: cloakroom_core::Finish,
                then: cloakroom_core::Then,
            ) -> cloakroom_core::Result<cloakroom_core::Finished> {
                self.0.finish(op, then).await
            }
        }
    };
}

pub(crate) use public_guard;
