//! [`RedisLockGuard`]: one held `SET NX PX` lock and the record loaded with it.

use std::time::{Duration, Instant};

use cloakroom_core::{
    async_trait, Error, Lease, LockGuard, Record, RecordWrite, Result, SessionKey, Timestamp,
};
use redis::Value;

use crate::error::{map_redis, unexpected_reply};
use crate::keys::SessionKeys;
use crate::reply::{self, Status};
use crate::scripts::SCRIPTS;
use crate::store::{RedisStore, WAKE_TTL_MS};

/// A held lock of the [`RedisStore`]. Every exit runs one token-checked
/// script that writes (if the token still holds the lock) and releases in the
/// same step; dropping the guard releases on a spawned task.
#[derive(Debug)]
pub struct RedisLockGuard {
    store: RedisStore,
    key: SessionKey,
    keys: SessionKeys,
    lease: Lease,
    record: Option<Record>,
    released: bool,
}

/// What one exit writes.
enum Exit<'a> {
    Save(&'a RecordWrite),
    Touch { accessed: Timestamp, expires: Timestamp },
    Delete,
    Unlock,
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

    /// Run the finish script for `exit`. If our own clock says the lease is
    /// over, write nothing (the server may not have noticed yet, by a few
    /// milliseconds) and only release, token-checked.
    async fn finish(&mut self, exit: Exit<'_>) -> Result<Status> {
        self.released = true;
        let lease_over = Instant::now() >= self.lease.deadline;
        let exit = if lease_over { Exit::Unlock } else { exit };
        let op = match exit {
            Exit::Save(_) => "save",
            Exit::Touch { .. } => "touch",
            Exit::Delete => "delete",
            Exit::Unlock => "unlock",
        };
        let mut invocation = SCRIPTS.finish.key(&self.keys.record);
        invocation
            .key(&self.keys.lock)
            .key(&self.keys.wake)
            .key(&self.keys.waiting)
            .arg(&self.lease.token)
            .arg(op)
            .arg(Timestamp::now().as_millis())
            .arg(self.record.as_ref().map_or(0, |r| r.version))
            .arg(WAKE_TTL_MS);
        match exit {
            Exit::Save(write) => {
                invocation
                    .arg(&write.data)
                    .arg(write.created.as_millis())
                    .arg(write.accessed.as_millis())
                    .arg(write.expires.as_millis());
            }
            Exit::Touch { accessed, expires } => {
                invocation.arg(accessed.as_millis()).arg(expires.as_millis());
            }
            Exit::Delete | Exit::Unlock => {}
        }
        let reply: Value = invocation
            .invoke_async(&mut self.store.conn())
            .await
            .map_err(map_redis)?;
        let status = reply::status("finish", &reply)?;
        if lease_over {
            return Ok(Status::Lost);
        }
        Ok(status)
    }
}

fn fenced(status: Status, loaded: Option<&Record>) -> Result<i64> {
    match status {
        Status::Ok(n) => Ok(n),
        Status::Lost => Err(Error::LeaseLost),
        Status::Gone => Err(Error::Gone),
        Status::Conflict(found) => Err(Error::Conflict {
            expected: loaded.map_or(0, |r| r.version),
            found,
        }),
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
        if Instant::now() >= self.lease.deadline {
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

    async fn save_and_unlock(mut self: Box<Self>, write: RecordWrite) -> Result<u64> {
        if let Err(too_large) = self.store.check_size(&write) {
            self.finish(Exit::Unlock).await?;
            return Err(too_large);
        }
        let status = self.finish(Exit::Save(&write)).await?;
        let version = fenced(status, self.record.as_ref())?;
        u64::try_from(version).map_err(|_| unexpected_reply("save", &Value::Int(version)))
    }

    async fn touch_and_unlock(mut self: Box<Self>, accessed: Timestamp, expires: Timestamp) -> Result<()> {
        let status = self.finish(Exit::Touch { accessed, expires }).await?;
        fenced(status, self.record.as_ref()).map(drop)
    }

    async fn delete_and_unlock(mut self: Box<Self>) -> Result<bool> {
        let status = self.finish(Exit::Delete).await?;
        fenced(status, self.record.as_ref()).map(|deleted| deleted == 1)
    }

    async fn unlock(mut self: Box<Self>) -> Result<()> {
        // A lost lease on unlock is not an error: there is nothing to undo.
        self.finish(Exit::Unlock).await.map(drop)
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
