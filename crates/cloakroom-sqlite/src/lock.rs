//! Per-session locks as lease columns, and the guard that holds one.
//!
//! A lock is `lock_token` + `lock_until` in the session's row, claimed by one
//! upsert that succeeds only if the lease is free or ran out (a missing
//! session gets a placeholder row to carry the lock). Nothing stays open
//! between claim and release: the lock lives in the data, not in a
//! transaction, so other sessions never wait for it. A holder that dies is
//! taken over once its lease ends; its late writes are fenced by the token
//! (`… AND lock_token = ? AND lock_until > now`) and fail with
//! [`Error::LeaseLost`].
//!
//! Waiting: waiters in this process are woken by the releaser through
//! [`Wakers`](crate::wake::Wakers); other processes' releases are noticed by a
//! short exponential backoff (1 ms doubling to 20 ms), up to the deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{
    Error, Lease, LockGuard, LockOptions, Record, RecordWrite, Result, SessionId, SessionKey, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::pool::sql_error;
use crate::schema::Sql;
use crate::store::{
    check_unchanged, now_ms, read_current, record_columns, record_from_columns, write_row, Current, Inner,
};

const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(20);

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Claim the lock of `key` for `token` if free: when the lease was written
/// (on this process's clock) and the live record. `None` if someone else
/// holds a live lease.
fn try_claim(
    conn: &Connection,
    sql: &Sql,
    key: &SessionKey,
    token: &str,
    lease: Duration,
) -> Result<Option<Claim>> {
    // Taken just before the row's lease end is computed, so the holder's
    // deadline never outlasts the row's, and time spent queueing for a
    // connection does not eat into the lease.
    let claimed_at = Instant::now();
    let now = now_ms();
    // A plain read first: in WAL it never waits, and a waiter that finds the
    // lock held does not take SQLite's database-wide write lock for nothing.
    let held_until: Option<Option<i64>> = conn
        .prepare_cached(&sql.lock_state)
        .and_then(|mut stmt| {
            stmt.query_row(params![key.namespace.as_str(), key.id.as_str()], |row| row.get(0))
                .optional()
        })
        .map_err(sql_error)?;
    if held_until.flatten().is_some_and(|until| until > now) {
        return Ok(None);
    }
    let claimed = conn
        .prepare_cached(&sql.claim)
        .and_then(|mut stmt| {
            stmt.query_row(
                params![
                    key.namespace.as_str(),
                    key.id.as_str(),
                    token,
                    now.saturating_add(lease_ms(lease)),
                    now
                ],
                record_columns,
            )
            .optional()
        })
        .map_err(sql_error)?;
    let Some(columns) = claimed else {
        return Ok(None);
    };
    let live = columns.0 > 0 && columns.4 > now;
    let record = if live {
        Some(record_from_columns(columns)?)
    } else {
        None
    };
    Ok(Some(Claim { claimed_at, record }))
}

/// [`SessionStore::lock`](cloakroom_core::SessionStore::lock) for the SQLite store.
pub(crate) async fn lock(
    inner: &Arc<Inner>,
    key: &SessionKey,
    options: LockOptions,
) -> Result<Box<dyn LockGuard>> {
    let started = Instant::now();
    let give_up_at = started + options.wait;
    let token = SessionId::generate().as_str().to_owned();
    let waiting = inner.wakers.subscribe(key);
    let mut backoff = FIRST_BACKOFF;
    loop {
        // Registered before the attempt, so a release between a failed
        // attempt and the nap still wakes us.
        let notified = waiting.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();

        let (run_inner, k, t) = (inner.clone(), key.clone(), token.clone());
        let mut claim = PendingClaim {
            task: Some(tokio::spawn(async move {
                run_inner
                    .run(move |sql, conn| try_claim(conn, sql, &k, &t, options.lease))
                    .await
            })),
            inner: inner.clone(),
            key: key.clone(),
            token: token.clone(),
        };
        let claimed = claim.outcome().await;
        if let Some(Claim { claimed_at, record }) = claimed? {
            return Ok(Box::new(SqliteLockGuard {
                inner: inner.clone(),
                key: key.clone(),
                record,
                lease: Lease {
                    token,
                    deadline: claimed_at + options.lease,
                },
                released: false,
            }));
        }
        let now = Instant::now();
        if now >= give_up_at {
            return Err(Error::LockTimeout {
                waited: started.elapsed(),
            });
        }
        let _ = tokio::time::timeout(backoff.min(give_up_at - now), notified).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A successful claim.
struct Claim {
    claimed_at: Instant,
    record: Option<Record>,
}

type Claimed = Option<Claim>;

/// A claim running on its own task. If the `lock` future is dropped while the
/// claim runs (a cancelled request), the claim may still succeed: the drop
/// then releases it once it finishes, instead of leaving the session locked
/// for a whole lease.
struct PendingClaim {
    task: Option<tokio::task::JoinHandle<Result<Claimed>>>,
    inner: Arc<Inner>,
    key: SessionKey,
    token: String,
}

impl PendingClaim {
    async fn outcome(&mut self) -> Result<Claimed> {
        let Some(task) = self.task.as_mut() else {
            return Err(Error::backend("sqlite lock claim awaited twice"));
        };
        let out = task.await;
        self.task = None;
        out.map_err(|e| Error::backend(format!("sqlite lock claim failed: {e}")))?
    }
}

impl Drop for PendingClaim {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        let (inner, key, token) = (self.inner.clone(), self.key.clone(), self.token.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Ok(Some(_))) = task.await {
                    spawn_release(inner, key, token);
                }
            });
        }
    }
}

/// Release in the background (from `Drop`, which cannot wait). Without a
/// runtime there is nothing to run it on, and the lease frees the lock.
fn spawn_release(inner: Arc<Inner>, key: SessionKey, token: String) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let k = key.clone();
            let released = inner
                .run(move |sql, conn| {
                    let tx = conn
                        .transaction_with_behavior(TransactionBehavior::Immediate)
                        .map_err(sql_error)?;
                    release(&tx, sql, &k, &token)?;
                    tx.commit().map_err(sql_error)
                })
                .await;
            if let Err(e) = released {
                tracing::warn!(%key, error = %e, "sqlite store could not release a dropped lock; its lease will");
            }
            inner.wakers.wake(&key);
        });
    }
}

/// Clear our lock on `key`, dropping the row if it is only a placeholder.
fn release(tx: &Transaction<'_>, sql: &Sql, key: &SessionKey, token: &str) -> Result<()> {
    let p = params![key.namespace.as_str(), key.id.as_str(), token];
    tx.prepare_cached(&sql.drop_placeholder)
        .and_then(|mut stmt| stmt.execute(p))
        .map_err(sql_error)?;
    tx.prepare_cached(&sql.clear_lock)
        .and_then(|mut stmt| stmt.execute(p))
        .map_err(sql_error)?;
    Ok(())
}

/// A held lock of the [`SqliteStore`](crate::SqliteStore).
#[derive(Debug)]
pub struct SqliteLockGuard {
    inner: Arc<Inner>,
    key: SessionKey,
    record: Option<Record>,
    lease: Lease,
    released: bool,
}

type FencedOp<T> = Box<dyn FnOnce(&Transaction<'_>, &Sql, &Current) -> Result<T> + Send>;

impl SqliteLockGuard {
    /// In one transaction: check the fence, run `op` if it holds, release
    /// the lock whatever the outcome.
    async fn finish<T: Send + 'static>(mut self: Box<Self>, op: FencedOp<T>) -> Result<T> {
        self.released = true;
        let lapsed = Instant::now() >= self.lease.deadline;
        let (key, token) = (self.key.clone(), self.lease.token.clone());
        let out = self
            .inner
            .run(move |sql, conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql_error)?;
                let current = read_current(&tx, sql, &key)?;
                let ours = current
                    .as_ref()
                    .filter(|c| c.lock_token.as_deref() == Some(token.as_str()));
                let out = match ours {
                    Some(c) if !lapsed && c.is_locked(now_ms()) => op(&tx, sql, c),
                    _ => Err(Error::LeaseLost),
                };
                if ours.is_some() {
                    release(&tx, sql, &key, &token)?;
                }
                tx.commit().map_err(sql_error)?;
                out
            })
            .await;
        self.inner.wakers.wake(&self.key);
        out
    }
}

#[async_trait]
impl LockGuard for SqliteLockGuard {
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
        let (key, token) = (self.key.clone(), self.lease.token.clone());
        let (renewed_at, changed) = self
            .inner
            .run(move |sql, conn| {
                let renewed_at = Instant::now();
                let now = now_ms();
                conn.prepare_cached(&sql.renew)
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            key.namespace.as_str(),
                            key.id.as_str(),
                            token,
                            now.saturating_add(lease_ms(lease)),
                            now
                        ])
                    })
                    .map(|changed| (renewed_at, changed))
                    .map_err(sql_error)
            })
            .await?;
        if changed == 0 {
            return Err(Error::LeaseLost);
        }
        self.lease.deadline = renewed_at + lease;
        Ok(())
    }

    async fn save_and_unlock(self: Box<Self>, write: RecordWrite) -> Result<u64> {
        write.check_size(self.inner.options.max_record_bytes)?;
        let loaded = self.record.clone();
        let key = self.key.clone();
        self.finish(Box::new(move |tx, sql, current| {
            check_unchanged(loaded.as_ref(), current.live_version(now_ms()))?;
            let (version, created) = match &loaded {
                Some(r) => (r.version + 1, r.created),
                None => (1, write.created),
            };
            write_row(tx, &sql.update_data, &key, version, created, &write)?;
            Ok(version)
        }))
        .await
    }

    async fn touch_and_unlock(self: Box<Self>, accessed: Timestamp, expires: Timestamp) -> Result<()> {
        let loaded = self.record.clone();
        let key = self.key.clone();
        self.finish(Box::new(move |tx, sql, current| {
            let now = now_ms();
            check_unchanged(loaded.as_ref(), current.live_version(now))?;
            if loaded.is_none() {
                return Err(Error::Gone);
            }
            tx.prepare_cached(&sql.touch_live)
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        key.namespace.as_str(),
                        key.id.as_str(),
                        now,
                        accessed.as_millis(),
                        expires.as_millis()
                    ])
                })
                .map_err(sql_error)?;
            Ok(())
        }))
        .await
    }

    async fn delete_and_unlock(self: Box<Self>) -> Result<bool> {
        let key = self.key.clone();
        self.finish(Box::new(move |tx, sql, current| {
            // Turned into a placeholder; the release that follows drops it.
            tx.prepare_cached(&sql.make_placeholder)
                .and_then(|mut stmt| stmt.execute(params![key.namespace.as_str(), key.id.as_str()]))
                .map_err(sql_error)?;
            Ok(current.live_version(now_ms()).is_some())
        }))
        .await
    }

    async fn unlock(self: Box<Self>) -> Result<()> {
        match self.finish(Box::new(|_, _, _| Ok(()))).await {
            // Nothing left to release; unlocking is not a write.
            Err(Error::LeaseLost) => Ok(()),
            other => other,
        }
    }
}

impl Drop for SqliteLockGuard {
    fn drop(&mut self) {
        if !self.released {
            spawn_release(self.inner.clone(), self.key.clone(), self.lease.token.clone());
        }
    }
}
