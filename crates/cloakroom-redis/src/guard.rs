//! [`RedisLockGuard`]: one held `SET NX PX` lock and the record loaded with it.

use std::time::{Duration, Instant};

use cloakroom_core::{
    async_trait, Error, Finish, Finished, Lease, LockGuard, Record, RecordWrite, Result, SessionKey, Then,
    Timestamp,
};
use redis::{ScriptInvocation, Value};

use crate::error::{map_redis, unexpected_reply};
use crate::keys::SessionKeys;
use crate::reply::{self, Status};
use crate::scripts::SCRIPTS;
use crate::store::{RedisStore, WAKE_TTL_MS};

/// A held lock of the [`RedisStore`]. Every write runs one token-checked
/// script that writes (if the token still holds the lock) and then releases
/// or keeps the lock in the same step; dropping the guard releases on a
/// spawned task.
#[derive(Debug)]
pub struct RedisLockGuard {
    store: RedisStore,
    key: SessionKey,
    keys: SessionKeys,
    lease: Lease,
    record: Option<Record>,
    /// The lock is released (or was never ours any more): the guard is spent.
    released: bool,
}

/// What the finish script writes: its `op` argument and the ones after.
#[derive(Clone, Copy)]
pub(crate) enum Op<'a> {
    Save(&'a RecordWrite),
    Touch { accessed: Timestamp, expires: Timestamp },
    Delete,
    Nothing,
}

/// The finish script (`lua/finish.lua`) for one session, ready to invoke.
/// `loaded` is the version the holder loaded under the lock, 0 for none.
pub(crate) fn finish_script(
    keys: &SessionKeys,
    token: &str,
    op: Op<'_>,
    then: Then,
    loaded: u64,
) -> ScriptInvocation<'static> {
    let (name, then) = (
        match op {
            Op::Save(_) => "save",
            Op::Touch { .. } => "touch",
            Op::Delete => "delete",
            Op::Nothing => "nothing",
        },
        match then {
            Then::Release => "release",
            Then::Keep => "keep",
        },
    );
    let mut invocation = SCRIPTS.finish.key(&keys.record);
    invocation
        .key(&keys.lock)
        .key(&keys.wake)
        .key(&keys.waiting)
        .arg(token)
        .arg(name)
        .arg(then)
        .arg(Timestamp::now().as_millis())
        .arg(loaded)
        .arg(WAKE_TTL_MS);
    match op {
        Op::Save(write) => {
            invocation
                .arg(&write.data)
                .arg(write.created.as_millis())
                .arg(write.accessed.as_millis())
                .arg(write.expires.as_millis());
        }
        Op::Touch { accessed, expires } => {
            invocation.arg(accessed.as_millis()).arg(expires.as_millis());
        }
        Op::Delete | Op::Nothing => {}
    }
    invocation
}

impl RedisLockGuard {
    pub(crate) fn new(
        store: RedisStore,
        key: SessionKey,
        keys: SessionKeys,
        lease: Lease,
        record: Option<Record>,
    ) -> Self {
        RedisLockGuard {
            store,
            key,
            keys,
            lease,
            record,
            released: false,
        }
    }

    /// Release without writing (token-checked), when a `finish` fails before
    /// its script: the caller's error is the answer, so a failed release is
    /// only logged (the lease frees the lock then).
    async fn release_before_writing(&mut self) {
        self.released = true;
        let reply: redis::RedisResult<Value> =
            finish_script(&self.keys, &self.lease.token, Op::Nothing, Then::Release, 0)
                .invoke_async(&mut self.store.conn())
                .await;
        if let Err(err) = reply {
            tracing::warn!(error = %err, "releasing a redis session lock failed; its lease will free it");
        }
    }

    /// The guard after a script that answered `status`: the outcome, and the
    /// record as written.
    fn apply(&mut self, op: Finish, status: Status) -> Result<Finished> {
        let loaded = self.record.as_ref().map(|r| (r.version, r.created));
        let n = match status {
            Status::Ok(n) => n,
            Status::Lost => return Err(Error::LeaseLost),
            Status::Gone => return Err(Error::Gone),
            Status::Conflict(found) => {
                return Err(Error::Conflict {
                    expected: loaded.map_or(0, |(version, _)| version),
                    found,
                })
            }
        };
        match op {
            Finish::Save(write) => {
                let version = u64::try_from(n).map_err(|_| unexpected_reply("finish", &Value::Int(n)))?;
                // An existing record keeps its `created` (the script does not
                // write it); a new one takes the write's.
                let created = loaded.map_or(write.created, |(_, created)| created);
                self.record = Some(Record {
                    created,
                    ..write.into_record(version)
                });
                Ok(Finished::Saved { version })
            }
            Finish::Touch { accessed, expires } => {
                if let Some(record) = self.record.as_mut() {
                    record.accessed = accessed;
                    record.expires = expires;
                }
                Ok(Finished::Touched)
            }
            Finish::Delete => {
                self.record = None;
                Ok(Finished::Deleted { was_live: n == 1 })
            }
            _ => Ok(Finished::Nothing),
        }
    }
}

#[async_trait]
impl LockGuard for RedisLockGuard {
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
        if self.released || Instant::now() >= self.lease.deadline {
            return Err(Error::LeaseLost);
        }
        let sent = Instant::now();
        let renewed: i64 = SCRIPTS
            .renew
            .key(&self.keys.lock)
            .arg(&self.lease.token)
            .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1))
            .invoke_async(&mut self.store.conn())
            .await
            .map_err(map_redis)?;
        if renewed != 1 {
            return Err(Error::LeaseLost);
        }
        self.lease.deadline = sent + lease.max(Duration::from_millis(1));
        Ok(())
    }

    /// One `EVALSHA` of the finish script. If our own clock says the lease is
    /// over, nothing is written (the server may not have noticed yet, by a
    /// few milliseconds): the lock is only released, token-checked.
    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.released {
            return Err(Error::LeaseLost);
        }
        let script_op = match &op {
            Finish::Save(write) => {
                if let Err(too_large) = self.store.check_size(write) {
                    self.release_before_writing().await;
                    return Err(too_large);
                }
                Op::Save(write)
            }
            Finish::Touch { accessed, expires } => Op::Touch {
                accessed: *accessed,
                expires: *expires,
            },
            Finish::Delete => Op::Delete,
            Finish::Nothing => Op::Nothing,
            _ => {
                self.release_before_writing().await;
                return Err(Error::backend(
                    "redis: a kind of finish this backend does not know",
                ));
            }
        };
        if Instant::now() >= self.lease.deadline {
            self.release_before_writing().await;
            return Err(Error::LeaseLost);
        }
        let loaded = self.record.as_ref().map_or(0, |r| r.version);
        let invocation = finish_script(&self.keys, &self.lease.token, script_op, then, loaded);
        // `released` stays false while the script is in flight: if this call
        // is cancelled, dropping the guard releases (token-checked, so a
        // no-op if the script did release).
        let reply = invocation
            .invoke_async::<Value>(&mut self.store.conn())
            .await
            .map_err(map_redis)
            .and_then(|reply| reply::status("finish", &reply));
        let status = match reply {
            Ok(status) => status,
            Err(err) => {
                // The script may or may not have run (and kept the lock):
                // release in the background, token-checked.
                self.released = true;
                self.store
                    .release_detached(self.keys.clone(), self.lease.token.clone());
                return Err(err);
            }
        };
        let wrote = matches!(status, Status::Ok(_));
        let outcome = self.apply(op, status);
        self.released = then == Then::Release || outcome.is_err();
        if then == Then::Keep && wrote && outcome.is_err() {
            // The script kept the lock, but its answer makes no sense: do not
            // keep a lock the caller is told it lost.
            self.store
                .release_detached(self.keys.clone(), self.lease.token.clone());
        }
        outcome
    }
}

impl Drop for RedisLockGuard {
    fn drop(&mut self) {
        if !self.released {
            self.store
                .release_detached(self.keys.clone(), self.lease.token.clone());
        }
    }
}
