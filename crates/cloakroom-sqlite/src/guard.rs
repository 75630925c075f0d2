//! Per-session locks as lease columns, and the guard that holds one.
//!
//! A lock is `lock_token` + `lock_until` in the session's row, claimed by one
//! upsert that succeeds only if the lease is free or ran out (a missing
//! session gets a placeholder row to carry the lock) and returns the record
//! with it: taking the lock and loading the session is one statement.
//! Nothing stays open between claim and release: the lock lives in the data,
//! not in a transaction, so other sessions never wait for it. A holder that
//! dies is taken over once its lease ends; its late writes are fenced by the
//! token (`… AND lock_token = ? AND lock_until > now`) and fail with
//! [`Error::LeaseLost`]. A save and its release are one fenced statement too.
//! A rotation ([`Finish::Rotate`]) is a few statements in the one
//! transaction of its writer job: every check first (the fence, the loaded
//! record still live at its version, no live record under the new id),
//! then the new row and the old row's delete, so it is all or nothing.
//!
//! Every claim, write and release is a request to the store's writer thread
//! ([`writer`](crate::writer)), batched with other sessions' requests.
//!
//! Waiting is not done here: [`try_lock`] makes one attempt; waiters of one
//! process queue in the lock engine, and core's `SessionStore::lock` backs
//! off between attempts (at most until the holder's lease runs out).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cloakroom_core::{
    check_loaded_is_live, Acquired, Error, Finish, Finished, HeldSession, Lease, LockGuard, LockOptions,
    Principal, Record, RecordWrite, Result, SessionId, SessionKey, Then, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::oneshot;

use crate::database::Database;
use crate::error::{is_sql_failure, sql_error};
use crate::row::{now_ms, read_current, record_columns, record_from_columns, write_row};
use crate::schema::Sql;
use crate::writer::{stopped, BatchFailure, Job, Ran};
use cloakroom_core::liveness::Liveness;

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX).max(1)
}

/// Claim the lock of `key` for `token` if free, in one statement that also
/// returns the record: when the lease was written (on this process's
/// clock) and the live record. If someone else holds a live lease: how long
/// that lease has left.
fn try_claim(
    conn: &Connection,
    sql: &Sql,
    key: &SessionKey,
    token: &str,
    lease: Duration,
    liveness: &Liveness,
) -> Result<ClaimOutcome> {
    // Taken just before the row's lease end is computed, so the holder's
    // deadline never outlasts the row's, and time spent queueing for the
    // writer does not eat into the lease.
    let claimed_at = Instant::now();
    let now = now_ms();
    let (ns, id) = (key.namespace.as_str(), key.id.as_str());
    let claimed = conn
        .prepare_cached(&sql.claim)
        .and_then(|mut stmt| {
            stmt.query_row(
                params![ns, id, token, now.saturating_add(lease_ms(lease)), now],
                record_columns,
            )
            .optional()
        })
        .map_err(sql_error)?;
    let columns = match claimed {
        Some(columns) => columns,
        None => {
            // Held: one more primary-key lookup, only on this path, names
            // the holder and when its lease runs out at the latest.
            let holder: Option<(Option<i64>, Option<String>)> = conn
                .prepare_cached(&sql.lock_holder)
                .and_then(|mut stmt| {
                    stmt.query_row(params![ns, id], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                })
                .map_err(sql_error)?;
            let (until, holder) = holder.unwrap_or((None, None));
            let taken = match holder.filter(|holder| liveness.holder_is_dead(holder)) {
                Some(dead) => conn
                    .prepare_cached(&sql.take_over)
                    .and_then(|mut stmt| {
                        stmt.query_row(
                            params![ns, id, token, now.saturating_add(lease_ms(lease)), dead],
                            record_columns,
                        )
                        .optional()
                    })
                    .map_err(sql_error)?,
                None => None,
            };
            match taken {
                Some(columns) => {
                    tracing::info!(namespace = %key.namespace, "took over the lock of a session whose holder process is gone");
                    columns
                }
                None => {
                    let left = until.map(|until| {
                        Duration::from_millis(u64::try_from(until.saturating_sub(now)).unwrap_or(0))
                    });
                    return Ok(ClaimOutcome::Busy(left));
                }
            }
        }
    };
    let live = columns.0 > 0 && columns.4 > now;
    let record = if live {
        Some(record_from_columns(columns)?)
    } else {
        None
    };
    Ok(ClaimOutcome::Locked { claimed_at, record })
}

/// [`SessionStore::try_lock`](cloakroom_core::SessionStore::try_lock) for
/// the SQLite store: one claim, answered at once. SQLite has no signal for
/// "released" across processes, so a held lock is [`Acquired::Busy`] with
/// the holder's remaining lease, and core's `lock` backs off; waiters of one
/// process are queued by the lock engine before they get here.
pub(crate) async fn try_lock(
    database: &Arc<Database>,
    key: &SessionKey,
    options: LockOptions,
) -> Result<Acquired> {
    let token = database.liveness.new_token();
    let (k, t) = (key.clone(), token.clone());
    let liveness = Arc::clone(&database.liveness);
    let undo = ReleaseJob::boxed(key.clone(), token.clone());
    let answer = database.writer.request(
        move |conn, sql| try_claim(conn, sql, &k, &t, options.lease, &liveness),
        // The claim succeeded but this call was dropped before the writer
        // could answer: release at once rather than leave the session
        // locked for a whole lease.
        Some(Box::new(move |claimed: ClaimOutcome| {
            matches!(claimed, ClaimOutcome::Locked { .. }).then_some(undo)
        })),
    )?;
    let mut claim = ClaimInFlight {
        answer: Some(answer),
        database,
        key,
        token: &token,
    };
    let claimed = claim.outcome().await;
    drop(claim);
    Ok(match claimed? {
        ClaimOutcome::Locked { claimed_at, record } => Acquired::Locked(Box::new(SqliteLockGuard {
            database: database.clone(),
            held: HeldSession {
                key: key.clone(),
                record,
                lease: Lease {
                    token,
                    deadline: claimed_at + options.lease,
                },
            },
            spent: false,
            release_on_drop: true,
        })),
        ClaimOutcome::Busy(retry_in) => Acquired::Busy { retry_in },
    })
}

/// What one claim got.
enum ClaimOutcome {
    Locked {
        claimed_at: Instant,
        record: Option<Record>,
    },
    /// Held by someone else, whose lease ends in this long (`None` if the
    /// row went away meanwhile).
    Busy(Option<Duration>),
}

/// A claim sent to the writer. If the `try_lock` future is dropped while it
/// waits (a cancelled request) and the claim succeeded, the drop releases
/// it; a claim answered only after the drop is released by the writer (see
/// `Unheard`).
struct ClaimInFlight<'a> {
    answer: Option<oneshot::Receiver<Result<ClaimOutcome>>>,
    database: &'a Arc<Database>,
    key: &'a SessionKey,
    token: &'a str,
}

impl ClaimInFlight<'_> {
    async fn outcome(&mut self) -> Result<ClaimOutcome> {
        let Some(answer) = self.answer.as_mut() else {
            return Err(Error::backend("sqlite lock claim awaited twice"));
        };
        let out = answer.await;
        self.answer = None;
        out.map_err(|_| stopped())?
    }
}

impl Drop for ClaimInFlight<'_> {
    fn drop(&mut self) {
        let Some(mut answer) = self.answer.take() else {
            return;
        };
        // After `close` the writer can no longer deliver (it then releases
        // by itself); an answer delivered before is here.
        answer.close();
        if let Ok(Ok(ClaimOutcome::Locked { .. })) = answer.try_recv() {
            let job = ReleaseJob::boxed(self.key.clone(), self.token.to_owned());
            if self.database.writer.submit(job).is_err() {
                tracing::warn!(key = %self.key, "sqlite store could not release a cancelled lock; its lease will");
            }
        }
    }
}

/// The release of a lock nobody holds a guard for any more (a dropped
/// guard, a cancelled claim), run by the writer without a caller waiting:
/// `Drop` cannot wait, and needs no async runtime this way.
pub(crate) struct ReleaseJob {
    key: SessionKey,
    token: String,
    failed: Option<Error>,
}

impl ReleaseJob {
    fn boxed(key: SessionKey, token: String) -> Box<dyn Job> {
        Box::new(ReleaseJob {
            key,
            token,
            failed: None,
        })
    }
}

impl Job for ReleaseJob {
    fn run(&mut self, conn: &Connection, sql: &Sql) -> Ran {
        match release(conn, sql, &self.key, &self.token) {
            Ok(()) => Ran::Keep,
            Err(e) => {
                self.failed = Some(e);
                Ran::RollBack
            }
        }
    }

    fn answer(self: Box<Self>, failed: Option<&BatchFailure>) -> Option<Box<dyn Job>> {
        if let Some(e) = failed.map(BatchFailure::error).or(self.failed) {
            tracing::warn!(key = %self.key, error = %e, "sqlite store could not release a dropped lock; its lease will");
        }
        None
    }
}

/// Clear our lock on `key`, dropping the row if it is only a placeholder.
fn release(tx: &Connection, sql: &Sql, key: &SessionKey, token: &str) -> Result<()> {
    let p = params![key.namespace.as_str(), key.id.as_str(), token];
    tx.prepare_cached(&sql.drop_placeholder)
        .and_then(|mut stmt| stmt.execute(p))
        .map_err(sql_error)?;
    tx.prepare_cached(&sql.clear_lock)
        .and_then(|mut stmt| stmt.execute(p))
        .map_err(sql_error)?;
    Ok(())
}

/// What a fenced write needs to know of the record the holder loaded: its
/// version (the fence against unlocked writers) and its creation time
/// (kept by a save).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Loaded {
    version: u64,
    created: Timestamp,
}

impl Loaded {
    fn of(record: Option<&Record>) -> Option<Loaded> {
        record.map(|r| Loaded {
            version: r.version,
            created: r.created,
        })
    }
}

/// What a successful [`finish_in_tx`] did, plus the record a save wrote.
pub(crate) type FinishOutcome = (Finished, Option<Record>);

fn version_param(version: u64) -> Result<i64> {
    i64::try_from(version).map_err(|_| Error::backend("record version overflow"))
}

/// The database work of [`LockGuard::finish`], inside a transaction the
/// caller opened and commits even when this returns a lock holder's failure
/// (`LeaseLost`, `Gone`, `Conflict`): the lock is then released and that
/// release must stick. Only an SQL failure ([`is_sql_failure`]) must be
/// rolled back.
///
/// The common cases are one statement: a save or touch checks the fence and
/// the loaded record and writes (and clears the lock, for
/// [`Then::Release`]) in one fenced `UPDATE`. When it changes no row,
/// nothing was written and the row is read to tell the caller why.
/// `lapsed` is the holder's own view that its lease ran out: the row's
/// `lock_until` is on the wall clock, which may lag behind the holder's.
#[allow(clippy::too_many_arguments)]
pub(crate) fn finish_in_tx(
    conn: &Connection,
    sql: &Sql,
    key: &SessionKey,
    token: &str,
    lapsed: bool,
    loaded: Option<Loaded>,
    op: Finish,
    then: Then,
) -> Result<FinishOutcome> {
    let now = now_ms();
    let release_too = then == Then::Release;
    let (ns, id) = (key.namespace.as_str(), key.id.as_str());
    let loaded_param = version_param(loaded.map_or(0, |l| l.version))?;
    // Writes that need a record: without one they are `Gone`.
    let needs_record = matches!(op, Finish::Touch { .. } | Finish::Rotate { .. });
    // A refusal the row alone does not explain (a live record under a
    // rotation's target, a kind of write added to `Finish` after this
    // store was written).
    let mut refused = None;
    let done = if lapsed {
        None
    } else {
        match op {
            Finish::Save(write) => {
                let (version, created) = match loaded {
                    Some(l) => (l.version + 1, l.created),
                    None => (1, write.created),
                };
                let statement = if release_too {
                    &sql.save_release
                } else {
                    &sql.save_keep
                };
                let version_param = version_param(version)?;
                let changed = conn
                    .prepare_cached(statement)
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            ns,
                            id,
                            token,
                            now,
                            version_param,
                            write.data,
                            created.as_millis(),
                            write.accessed.as_millis(),
                            write.expires.as_millis(),
                            loaded_param,
                            write.principal.as_ref().map(Principal::as_str),
                        ])
                    })
                    .map_err(sql_error)?;
                (changed > 0).then(|| {
                    let record = Record {
                        created,
                        ..write.into_record(version)
                    };
                    (Finished::Saved { version }, Some(record))
                })
            }
            // Touching needs a record: without one this is `Gone` (or a
            // conflict with a record created meanwhile), found below.
            Finish::Touch { accessed, expires } if loaded.is_some() => {
                let statement = if release_too {
                    &sql.touch_release
                } else {
                    &sql.touch_keep
                };
                let changed = conn
                    .prepare_cached(statement)
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            ns,
                            id,
                            token,
                            now,
                            accessed.as_millis(),
                            expires.as_millis(),
                            loaded_param,
                        ])
                    })
                    .map_err(sql_error)?;
                (changed > 0).then_some((Finished::Touched, None))
            }
            Finish::Touch { .. } => None,
            Finish::Delete if release_too => conn
                .prepare_cached(&sql.delete_release)
                .and_then(|mut stmt| {
                    stmt.query_row(params![ns, id, token, now], |row| row.get(0))
                        .optional()
                })
                .map_err(sql_error)?
                .map(|was_live| (Finished::Deleted { was_live }, None)),
            // Deleting but keeping the lock: the row stays as a placeholder
            // that carries it. SQLite's RETURNING shows new values only, so
            // whether a live record was there is read first (same
            // transaction, so nothing slips in between).
            Finish::Delete => match read_current(conn, sql, key)? {
                Some(c) if c.lock_token.as_deref() == Some(token) && c.is_locked(now) => {
                    conn.prepare_cached(&sql.make_placeholder)
                        .and_then(|mut stmt| stmt.execute(params![ns, id]))
                        .map_err(sql_error)?;
                    let was_live = c.live_version(now).is_some();
                    Some((Finished::Deleted { was_live }, None))
                }
                _ => None,
            },
            Finish::Nothing => match read_current(conn, sql, key)? {
                Some(c) if c.lock_token.as_deref() == Some(token) && c.is_locked(now) => {
                    if release_too {
                        release(conn, sql, key, token)?;
                    }
                    Some((Finished::Nothing, None))
                }
                _ => None,
            },
            Finish::Rotate { to, write } => {
                match rotate(conn, sql, key, token, now, loaded, to, &write, then)? {
                    Ok(done) => Some(done),
                    Err(e) => {
                        refused = e;
                        None
                    }
                }
            }
            other => {
                refused = Some(Error::Unsupported(format!(
                    "the sqlite store cannot finish with {other:?}"
                )));
                None
            }
        }
    };
    if let Some(outcome) = done {
        return Ok(outcome);
    }
    // Nothing was written. Within the same transaction and with the same
    // `now`, the row shows which check failed; whatever it was, the lock is
    // released if it is still ours.
    let current = read_current(conn, sql, key)?;
    let ours = current
        .as_ref()
        .filter(|c| c.lock_token.as_deref() == Some(token));
    if ours.is_some() {
        release(conn, sql, key, token)?;
    }
    if let Some(refused) = refused {
        return Err(refused);
    }
    Err(match ours {
        Some(c) if !lapsed && c.is_locked(now) => {
            match check_loaded_is_live(loaded.map(|l| l.version), c.live_version(now)) {
                Err(e) => e,
                Ok(()) if needs_record => Error::Gone,
                Ok(()) => Error::backend("a fenced sqlite write matched no row, yet every check holds"),
            }
        }
        _ => Error::LeaseLost,
    })
}

/// [`Finish::Rotate`], in the transaction of [`finish_in_tx`], so that it
/// is one atomic step: all checks come first and nothing is written unless
/// they all pass. `Ok(Err(None))` when the fence or the loaded record failed
/// (the caller reads the row again to say which), `Ok(Err(Some(e)))` for a
/// refusal of its own.
#[allow(clippy::too_many_arguments)]
fn rotate(
    conn: &Connection,
    sql: &Sql,
    key: &SessionKey,
    token: &str,
    now: i64,
    loaded: Option<Loaded>,
    to: SessionId,
    write: &RecordWrite,
    then: Then,
) -> Result<std::result::Result<FinishOutcome, Option<Error>>> {
    // A guard without a record has nothing to move.
    let Some(loaded) = loaded else {
        return Ok(Err(None));
    };
    let fenced = read_current(conn, sql, key)?.is_some_and(|c| {
        c.lock_token.as_deref() == Some(token)
            && c.is_locked(now)
            && c.live_version(now) == Some(loaded.version)
    });
    if !fenced {
        return Ok(Err(None));
    }
    let target = SessionKey::new(key.namespace.clone(), to);
    // An expired record (or a lock placeholder) under the target is
    // replaced, as `create` would; a lock someone holds there stays theirs.
    if let Some(found) = read_current(conn, sql, &target)?.and_then(|c| c.live_version(now)) {
        return Ok(Err(Some(Error::Conflict { expected: 0, found })));
    }
    write_row(
        conn,
        &sql.insert_or_replace_expired,
        &target,
        1,
        write.created,
        write,
    )?;
    // The old row is ours (checked above, in this transaction): dropped
    // with the lock, or kept as a placeholder that carries it.
    let statement = match then {
        Then::Release => &sql.delete_row,
        Then::Keep => &sql.make_placeholder,
    };
    conn.prepare_cached(statement)
        .and_then(|mut stmt| stmt.execute(params![key.namespace.as_str(), key.id.as_str()]))
        .map_err(sql_error)?;
    Ok(Ok((Finished::Rotated, None)))
}

/// A held lock of the [`SqliteStore`](crate::SqliteStore).
#[derive(Debug)]
pub struct SqliteLockGuard {
    database: Arc<Database>,
    held: HeldSession,
    /// Every later call fails with `LeaseLost` (after a release, or any
    /// failed finish).
    spent: bool,
    /// The row may still carry our lock: dropping the guard releases it.
    release_on_drop: bool,
}

impl SqliteLockGuard {
    /// Run one finish on the writer: one fenced statement in its batch,
    /// committed unless SQLite itself failed (a refusal commits the
    /// release it made).
    async fn run_finish(&mut self, op: Finish, then: Then) -> Result<FinishOutcome> {
        let lapsed = Instant::now() >= self.held.lease.deadline;
        let (key, token) = (self.held.key.clone(), self.held.lease.token.clone());
        let loaded = Loaded::of(self.held.record.as_ref());
        self.database
            .writer
            .run(move |conn, sql| finish_in_tx(conn, sql, &key, &token, lapsed, loaded, op, then))
            .await
    }
}

#[async_trait]
impl LockGuard for SqliteLockGuard {
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        if self.spent || Instant::now() >= self.held.lease.deadline {
            return Err(Error::LeaseLost);
        }
        let (key, token) = (self.held.key.clone(), self.held.lease.token.clone());
        let (renewed_at, changed) = self
            .database
            .write(move |sql, conn| {
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
        self.held.lease.deadline = renewed_at + lease;
        Ok(())
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.spent {
            return Err(Error::LeaseLost);
        }
        if let Finish::Save(write) | Finish::Rotate { write, .. } = &op {
            if let Err(e) = write.check_size(self.database.max_record_bytes) {
                // A failed finish releases the lock, this one included.
                let _ = self.finish(Finish::Nothing, Then::Release).await;
                return Err(e);
            }
        }
        let touched = match &op {
            Finish::Touch { accessed, expires } => Some((*accessed, *expires)),
            _ => None,
        };
        let out = self.run_finish(op, then).await;
        let failed = match &out {
            Err(e) => Some(is_sql_failure(e)),
            Ok(_) => None,
        };
        if then == Then::Release || failed.is_some() {
            self.spent = true;
            // After an SQL failure the row may still carry our lock: `Drop`
            // then tries the release once more.
            self.release_on_drop = failed == Some(true);
        }
        let (finished, written) = out?;
        match finished {
            Finished::Saved { .. } => self.held.record = written,
            Finished::Deleted { .. } | Finished::Rotated => self.held.record = None,
            Finished::Touched => {
                if let (Some(r), Some((accessed, expires))) = (self.held.record.as_mut(), touched) {
                    r.accessed = accessed;
                    r.expires = expires;
                }
            }
            _ => {}
        }
        Ok(finished)
    }
}

impl Drop for SqliteLockGuard {
    fn drop(&mut self) {
        if self.release_on_drop {
            let job = ReleaseJob::boxed(self.held.key.clone(), self.held.lease.token.clone());
            if self.database.writer.submit(job).is_err() {
                tracing::warn!(key = %self.held.key, "sqlite store could not release a dropped lock; its lease will");
            }
        }
    }
}
