//! Taking a session's `SET NX PX` lock, and [`RedisLockGuard`]: the held
//! lock and the record loaded with it.

use std::time::{Duration, Instant};

use cloakroom_core::{
    async_trait, Acquired, Error, Finish, Finished, HeldSession, Lease, LockGuard, LockOptions, Principal,
    Record, RecordWrite, Result, SessionId, SessionKey, Then, Timestamp,
};
use redis::{ScriptInvocation, Value};

use crate::error::{map_redis, unexpected_reply};
use crate::keys::SessionKeys;
use crate::owner::{owner_is_gone, OWNER_TTL};
use crate::reply::{self, Done, LockReply, Status, RECORD_FIELDS};
use crate::scripts::SCRIPTS;
use crate::shared::SharedConn;
use crate::store::{principal_arg, until_arg, RedisStore};
use crate::wait::Woken;

/// Longest single wait on a wake list before re-checking the lock. Only a
/// fallback: a release wakes a waiter at once; this bounds the delay if a
/// wake-up is lost (a waiter killed right after collecting it).
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// How long an uncollected wake-up stays in a session's wake list.
const WAKE_TTL_MS: u64 = 2_000;

/// How long the `waiting` flag of a failed lock attempt stays up. A waiter
/// re-tries the lock (raising the flag again) at least every
/// [`MAX_BLOCK`], so while anyone waits the flag never drops.
const WAITING_TTL_MS: u64 = 2 * MAX_BLOCK.as_millis() as u64;

/// Take the lock of `key`, waiting up to `options.wait` for its holder.
///
/// One attempt is one round trip: a pipeline of `SET lock NX PX` and
/// `HMGET` of the record (and `PTTL lock` when waiting). The read needs no
/// script to be consistent with the lock: if the `SET` won, nobody else
/// can write under the lock until we release it, and an unlocked writer
/// slipping in between is no different from one that wrote just before
/// the `SET` (the save is fenced by version either way). If the `SET`
/// lost, the record read is dropped.
///
/// After the first failed attempt every attempt first raises the
/// session's `waiting` flag, so that a release from then on pushes a
/// wake-up; the attempt right after raising it runs at once, so a release
/// that came between the first failure and the flag is not missed.
pub(crate) async fn try_lock(store: &RedisStore, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
    let give_up_at = Instant::now() + options.wait;
    let keys = store.keys().session(key);
    let token = store.owner().token()?;
    let lease_ms = millis(options.lease);
    let mut conn = store.conn().await?;
    let mut waiting = false;
    // When to next ask whether the holder is still running (see `owner`).
    let mut ask_about_holder_at = Instant::now();
    loop {
        let mut attempt = redis::pipe();
        if waiting {
            attempt
                .cmd("SET")
                .arg(&keys.waiting)
                .arg("1")
                .arg("PX")
                .arg(WAITING_TTL_MS)
                .ignore();
        }
        attempt
            .cmd("SET")
            .arg(&keys.lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(lease_ms)
            .cmd("HMGET")
            .arg(&keys.record)
            .arg(&RECORD_FIELDS);
        if waiting {
            // How long to block if this attempt fails too. The first
            // attempt does not ask: it is retried at once either way.
            attempt.cmd("PTTL").arg(&keys.lock);
        }
        // The lease starts on the server after this instant, so a deadline
        // counted from here never outlasts the server's.
        let sent = Instant::now();
        let mut in_flight = InFlight {
            store,
            keys: &keys,
            token: &token,
            armed: true,
        };
        let replies: Vec<Value> = attempt.query_async(&mut conn).await.map_err(map_redis)?;
        in_flight.armed = false;
        drop(in_flight);
        let pttl = match reply::lock_reply(replies, Timestamp::now()) {
            Ok(LockReply::Acquired(stored)) => {
                let (record, indexed_until) = match stored {
                    Some(stored) => (Some(stored.record), stored.indexed_until),
                    None => (None, None),
                };
                return Ok(Acquired::Locked(Box::new(RedisLockGuard {
                    store: store.clone(),
                    indexed_until,
                    held: HeldSession {
                        key: key.clone(),
                        record,
                        lease: Lease {
                            token,
                            deadline: sent + options.lease,
                        },
                    },
                    keys,
                    released: false,
                })));
            }
            Ok(LockReply::Held { pttl }) => {
                // Only if the lease would keep us waiting longer than a
                // stopped holder takes to be noticed, and then every quarter
                // of an owner's lifetime while we wait.
                if pttl > OWNER_TTL.as_millis() as i64 && Instant::now() >= ask_about_holder_at {
                    ask_about_holder_at = Instant::now() + OWNER_TTL / 4;
                    if take_over_if_stopped(store, &mut conn, &keys).await? {
                        continue;
                    }
                }
                pttl
            }
            Err(err) => {
                // We may hold the lock with a record we cannot read:
                // do not keep it.
                release_detached(store, keys, token);
                return Err(err);
            }
        };

        let now = Instant::now();
        if now >= give_up_at {
            return Ok(Acquired::BUSY);
        }
        if !waiting {
            waiting = true;
            continue;
        }
        // Wake on release, when the holder's lease runs out, or at our
        // deadline, whichever comes first.
        let mut block = (give_up_at - now).min(MAX_BLOCK);
        if pttl > OWNER_TTL.as_millis() as i64 {
            // Wake up to ask about the holder again.
            block = block.min(
                ask_about_holder_at
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
        match u64::try_from(pttl) {
            Ok(ms) => block = block.min(Duration::from_millis(ms)),
            // -2: the lock vanished since the SET NX; try again at once.
            Err(_) if pttl == -2 => continue,
            // -1: a lock without expiry that this crate never sets.
            Err(_) => {}
        }
        if block.is_zero() {
            continue;
        }
        match store.waiters().wait(&mut conn, &keys.wake, block).await? {
            Woken::Notified | Woken::TimedOut => {}
        }
    }
}

/// If the lock's holder has stopped saying it is alive (see `owner`),
/// delete its lock so the next attempt takes it. `true` if the lock is (or
/// was meanwhile) gone.
async fn take_over_if_stopped(store: &RedisStore, conn: &mut SharedConn, keys: &SessionKeys) -> Result<bool> {
    let holder: Option<String> = redis::cmd("GET")
        .arg(&keys.lock)
        .query_async(conn)
        .await
        .map_err(map_redis)?;
    let Some(holder) = holder else {
        return Ok(true);
    };
    let Some(owner_key) = store.owner().other_owner_key(store.keys(), &holder) else {
        return Ok(false);
    };
    if !owner_is_gone(conn, &owner_key).await? {
        return Ok(false);
    }
    let deleted: i64 = SCRIPTS
        .take_over
        .key(&keys.lock)
        .arg(&holder)
        .invoke_async(conn)
        .await
        .map_err(map_redis)?;
    if deleted == 1 {
        tracing::info!("took over the lock of a session whose holder stopped");
    }
    Ok(true)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Releases the lock if a `lock` call is dropped while its script is in
/// flight: the script may have taken the lock without anyone to hold it.
struct InFlight<'a> {
    store: &'a RedisStore,
    keys: &'a SessionKeys,
    token: &'a str,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            release_detached(self.store, self.keys.clone(), self.token.to_owned());
        }
    }
}

/// Release a lock from outside any guard (a dropped guard, a cancelled
/// `lock` call) on a spawned task, if there is a runtime to spawn on.
/// Token-checked, so it never frees someone else's lock; if it cannot
/// run, the lease frees the lock.
fn release_detached(store: &RedisStore, keys: SessionKeys, token: String) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let store = store.clone();
    handle.spawn(async move {
        if let Err(err) = release(&store, &keys, &token).await {
            tracing::warn!(error = %err, "releasing a dropped redis session lock failed; its lease will free it");
        }
    });
}

/// Release without writing, token-checked.
async fn release(store: &RedisStore, keys: &SessionKeys, token: &str) -> Result<()> {
    let mut conn = store.conn().await?;
    finish_script(store, keys, token, Op::Nothing, Then::Release, 0, None)
        .invoke_async::<Value>(&mut conn)
        .await
        .map_err(map_redis)
        .map(drop)
}

/// A held lock of the [`RedisStore`]. Every write runs one token-checked
/// script that writes (if the token still holds the lock) and then releases
/// or keeps the lock in the same step; dropping the guard releases on a
/// spawned task.
#[derive(Debug)]
pub(crate) struct RedisLockGuard {
    store: RedisStore,
    held: HeldSession,
    keys: SessionKeys,
    /// The `indexed_until` of the held record (see `principals`): whether a
    /// write needs the principal's set extended first.
    indexed_until: Option<i64>,
    /// The lock is released (or was never ours any more): the guard is spent.
    released: bool,
}

/// What the finish script writes: its `op` argument and the ones after.
#[derive(Clone, Copy)]
enum Op<'a> {
    Save(&'a RecordWrite),
    Touch {
        accessed: Timestamp,
        expires: Timestamp,
    },
    Delete,
    /// Single node only: the new id's record key is in another slot.
    Rotate {
        target: &'a SessionKeys,
        write: &'a RecordWrite,
    },
    Nothing,
}

/// The principal whose set the client added the id to before the script,
/// and until when it keeps the set.
type Indexed = Option<(Principal, i64)>;

/// The finish script (`lua/finish.lua`) for one session, ready to invoke.
/// `loaded` is the version the holder loaded under the lock, 0 for none.
fn finish_script(
    store: &RedisStore,
    keys: &SessionKeys,
    token: &str,
    op: Op<'_>,
    then: Then,
    loaded: u64,
    indexed: Option<&(Principal, i64)>,
) -> ScriptInvocation<'static> {
    let (name, then) = (
        match op {
            Op::Save(_) => "save",
            Op::Touch { .. } => "touch",
            Op::Delete => "delete",
            Op::Rotate { .. } => "rotate",
            Op::Nothing => "nothing",
        },
        match then {
            Then::Release => "release",
            Then::Keep => "keep",
        },
    );
    let mut invocation = SCRIPTS.finish.key(&keys.record);
    invocation.key(&keys.lock).key(&keys.wake).key(&keys.waiting);
    if let Op::Rotate { target, .. } = op {
        invocation.key(&target.record);
    }
    invocation
        .arg(token)
        .arg(name)
        .arg(then)
        .arg(Timestamp::now().as_millis())
        .arg(loaded)
        .arg(WAKE_TTL_MS);
    let until = until_arg(indexed.map(|(_, until)| *until));
    match op {
        Op::Save(write) | Op::Rotate { write, .. } => {
            invocation
                .arg(&write.data)
                .arg(write.created.as_millis())
                .arg(write.accessed.as_millis())
                .arg(write.expires.as_millis())
                .arg(store.key_expiry(write.expires).as_millis())
                .arg(principal_arg(write.principal.as_ref()))
                .arg(until);
        }
        Op::Touch { accessed, expires } => {
            invocation
                .arg(accessed.as_millis())
                .arg(expires.as_millis())
                .arg(store.key_expiry(expires).as_millis())
                .arg(principal_arg(indexed.map(|(p, _)| p)))
                .arg(until);
        }
        Op::Delete | Op::Nothing => {}
    }
    invocation
}

/// An index step left for after a write (see `RedisStore::after_write`).
struct AfterWrite {
    key: SessionKey,
    prev: Option<String>,
    prev_live: bool,
    new: Option<Principal>,
    until: Option<i64>,
}

impl RedisLockGuard {
    /// Release without writing (token-checked), when a `finish` fails before
    /// its script: the caller's error is the answer, so a failed release is
    /// only logged (the lease frees the lock then).
    async fn release_before_writing(&mut self) {
        self.released = true;
        if let Err(err) = release(&self.store, &self.keys, &self.held.lease.token).await {
            tracing::warn!(error = %err, "releasing a redis session lock failed; its lease will free it");
        }
    }

    /// The key of the new id of a rotation.
    fn target(&self, to: &SessionId) -> SessionKey {
        SessionKey::new(self.held.key.namespace.clone(), to.clone())
    }

    /// The principal's set step before a write, when the held record is not
    /// indexed for it yet (the script would refuse it): a save or rotation
    /// that gives the record a principal it did not have, or any write that
    /// moves the record's key expiry past what its set is kept for.
    async fn index_first(&self, op: &Finish) -> Result<Indexed> {
        let loaded = self.held.record.as_ref();
        let covers = |expires: Timestamp| {
            self.indexed_until
                .is_some_and(|until| until >= self.store.key_expiry(expires).as_millis())
        };
        let (key, principal, expires) = match op {
            Finish::Save(write) => match &write.principal {
                Some(p)
                    if loaded.is_some_and(|r| r.principal.as_ref() == Some(p)) && covers(write.expires) =>
                {
                    return Ok(None)
                }
                Some(p) => (self.held.key.clone(), p, write.expires),
                None => return Ok(None),
            },
            Finish::Touch { expires, .. } => match loaded.and_then(|r| r.principal.as_ref()) {
                Some(p) if !covers(*expires) => (self.held.key.clone(), p, *expires),
                _ => return Ok(None),
            },
            Finish::Rotate { to, write } => match &write.principal {
                Some(p) => (self.target(to), p, write.expires),
                None => return Ok(None),
            },
            _ => return Ok(None),
        };
        let until = self.store.index_before(&key, principal, expires).await?;
        Ok(Some((principal.clone(), until)))
    }

    /// The guard after a script that answered `status`: the outcome, the
    /// record as written, and the index steps left to take.
    fn apply(&mut self, op: Finish, status: Status, indexed: Indexed) -> Result<(Finished, Vec<AfterWrite>)> {
        let loaded = self.held.record.as_ref().map(|r| (r.version, r.created));
        let done: Done = match status {
            Status::Ok(done) => done,
            Status::Lost => return Err(Error::LeaseLost),
            Status::Gone => return Err(Error::Gone),
            Status::Conflict(found) => {
                return Err(Error::Conflict {
                    expected: loaded.map_or(0, |(version, _)| version),
                    found,
                })
            }
            Status::Taken(found) => return Err(Error::Conflict { expected: 0, found }),
            Status::Index(_) => {
                return Err(Error::backend(
                    "redis: a finish asked twice for its principal's set",
                ))
            }
        };
        let until = indexed.as_ref().map(|(_, until)| *until);
        match op {
            Finish::Save(write) => {
                let version =
                    u64::try_from(done.n).map_err(|_| unexpected_reply("finish", &Value::Int(done.n)))?;
                // An existing record keeps its `created` (the script does not
                // write it); a new one takes the write's.
                let created = loaded.map_or(write.created, |(_, created)| created);
                let after = AfterWrite {
                    key: self.held.key.clone(),
                    prev: done.prev,
                    prev_live: loaded.is_some(),
                    new: write.principal.clone(),
                    until,
                };
                self.indexed_until = match &write.principal {
                    Some(_) => until.or(self.indexed_until),
                    None => None,
                };
                self.held.record = Some(Record {
                    created,
                    ..write.into_record(version)
                });
                Ok((Finished::Saved { version }, vec![after]))
            }
            Finish::Touch { accessed, expires } => {
                if let Some(record) = self.held.record.as_mut() {
                    record.accessed = accessed;
                    record.expires = expires;
                }
                self.indexed_until = until.or(self.indexed_until);
                Ok((Finished::Touched, Vec::new()))
            }
            Finish::Delete => {
                self.held.record = None;
                self.indexed_until = None;
                let after = AfterWrite {
                    key: self.held.key.clone(),
                    prev: done.prev,
                    prev_live: false,
                    new: None,
                    until: None,
                };
                Ok((
                    Finished::Deleted {
                        was_live: done.n == 1,
                    },
                    vec![after],
                ))
            }
            Finish::Rotate { to, write } => {
                self.held.record = None;
                self.indexed_until = None;
                let old = AfterWrite {
                    key: self.held.key.clone(),
                    prev: done.prev,
                    prev_live: true,
                    new: None,
                    until: None,
                };
                let new = AfterWrite {
                    key: self.target(&to),
                    prev: done.target_prev,
                    prev_live: false,
                    new: write.principal,
                    until,
                };
                Ok((Finished::Rotated, vec![old, new]))
            }
            _ => Ok((Finished::Nothing, Vec::new())),
        }
    }
}

#[async_trait]
impl LockGuard for RedisLockGuard {
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        if self.released || Instant::now() >= self.held.lease.deadline {
            return Err(Error::LeaseLost);
        }
        let sent = Instant::now();
        let renewed: i64 = SCRIPTS
            .renew
            .key(&self.keys.lock)
            .arg(&self.held.lease.token)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut self.store.conn().await?)
            .await
            .map_err(map_redis)?;
        if renewed != 1 {
            return Err(Error::LeaseLost);
        }
        self.held.lease.deadline = sent + lease.max(Duration::from_millis(1));
        Ok(())
    }

    /// One `EVALSHA` of the finish script, preceded by an index step only
    /// when the write gives the record a principal's set it is not in yet
    /// (see `principals`). If our own clock says the lease is over, nothing
    /// is written (the server may not have noticed yet, by a few
    /// milliseconds): the lock is only released, token-checked.
    ///
    /// A rotation is one script on a single node; on a Cluster the two ids
    /// are in different slots, the capabilities do not claim atomic
    /// rotation, and a rotation is refused as unsupported (the lock engine
    /// rotates in two steps there).
    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.released {
            return Err(Error::LeaseLost);
        }
        match &op {
            Finish::Save(write) | Finish::Rotate { write, .. } => {
                if let Err(too_large) = self.store.check_size(write) {
                    self.release_before_writing().await;
                    return Err(too_large);
                }
            }
            Finish::Touch { .. } | Finish::Delete | Finish::Nothing => {}
            _ => {
                self.release_before_writing().await;
                return Err(Error::backend(
                    "redis: a kind of finish this backend does not know",
                ));
            }
        }
        if matches!(op, Finish::Rotate { .. }) && self.store.is_cluster() {
            self.release_before_writing().await;
            return Err(Error::Unsupported(
                "redis cluster: the old and the new id of a rotation are in different slots, so no \
                 script can move a session in one step; rotate by delete, then create"
                    .into(),
            ));
        }
        if Instant::now() >= self.held.lease.deadline {
            self.release_before_writing().await;
            return Err(Error::LeaseLost);
        }
        let mut indexed = match self.index_first(&op).await {
            Ok(indexed) => indexed,
            Err(err) => {
                self.release_before_writing().await;
                return Err(err);
            }
        };
        let target = match &op {
            Finish::Rotate { to, .. } => Some(self.store.keys().session(&self.target(to))),
            _ => None,
        };
        let loaded = self.held.record.as_ref().map_or(0, |r| r.version);
        let mut asked = false;
        let status = loop {
            let script_op = match (&op, &target) {
                (Finish::Save(write), _) => Op::Save(write),
                (Finish::Touch { accessed, expires }, _) => Op::Touch {
                    accessed: *accessed,
                    expires: *expires,
                },
                (Finish::Delete, _) => Op::Delete,
                (Finish::Rotate { write, .. }, Some(target)) => Op::Rotate { target, write },
                _ => Op::Nothing,
            };
            let invocation = finish_script(
                &self.store,
                &self.keys,
                &self.held.lease.token,
                script_op,
                then,
                loaded,
                indexed.as_ref(),
            );
            // `released` stays false while the script is in flight: if this
            // call is cancelled, dropping the guard releases (token-checked,
            // so a no-op if the script did release).
            let reply = match self.store.conn().await {
                Ok(mut conn) => invocation
                    .invoke_async::<Value>(&mut conn)
                    .await
                    .map_err(map_redis)
                    .and_then(|reply| reply::status("finish", &reply)),
                Err(err) => Err(err),
            };
            match reply {
                // The script wrote nothing and kept the lock: the record is
                // not indexed as the guard thought. Only possible if it
                // changed under the lock, which the version check would have
                // caught; add the id once and try again all the same.
                Ok(Status::Index(stored)) if !asked => {
                    asked = true;
                    let step = match (&op, stored) {
                        (Finish::Save(write), _) | (Finish::Rotate { write, .. }, _) => {
                            write.principal.clone().map(|p| (p, write.expires))
                        }
                        (Finish::Touch { expires, .. }, Some(stored)) => {
                            Principal::new(&stored).ok().map(|p| (p, *expires))
                        }
                        _ => None,
                    };
                    let key = match &op {
                        Finish::Rotate { to, .. } => self.target(to),
                        _ => self.held.key.clone(),
                    };
                    let added = match step {
                        Some((principal, expires)) => self
                            .store
                            .index_before(&key, &principal, expires)
                            .await
                            .map(|until| Some((principal, until))),
                        None => Err(Error::backend(
                            "redis: a finish asked for a principal's set it has no principal for",
                        )),
                    };
                    match added {
                        Ok(added) if Instant::now() < self.held.lease.deadline => indexed = added,
                        Ok(_) => {
                            self.release_before_writing().await;
                            return Err(Error::LeaseLost);
                        }
                        Err(err) => {
                            self.release_before_writing().await;
                            return Err(err);
                        }
                    }
                }
                Ok(Status::Index(_)) => {
                    self.release_before_writing().await;
                    return Err(Error::backend(
                        "redis: a finish asked twice for its principal's set",
                    ));
                }
                Ok(status) => break status,
                Err(err) => {
                    // The script may or may not have run (and kept the lock):
                    // release in the background, token-checked.
                    self.released = true;
                    release_detached(&self.store, self.keys.clone(), self.held.lease.token.clone());
                    return Err(err);
                }
            }
        };
        let wrote = matches!(status, Status::Ok(_));
        let outcome = self.apply(op, status, indexed);
        self.released = then == Then::Release || outcome.is_err();
        if then == Then::Keep && wrote && outcome.is_err() {
            // The script kept the lock, but its answer makes no sense: do not
            // keep a lock the caller is told it lost.
            release_detached(&self.store, self.keys.clone(), self.held.lease.token.clone());
        }
        let (finished, after) = outcome?;
        for step in after {
            self.store
                .after_write(
                    &step.key,
                    step.prev.as_deref(),
                    step.prev_live,
                    step.new.as_ref(),
                    step.until,
                )
                .await;
        }
        Ok(finished)
    }
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        if !self.released {
            release_detached(&self.store, self.keys.clone(), self.held.lease.token.clone());
        }
    }
}
