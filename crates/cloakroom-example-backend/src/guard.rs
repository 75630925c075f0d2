//! [`LeaseMapGuard`]: one held lease, and the fenced writes made under it.

use std::time::{Duration, Instant};

use cloakroom_core::{
    async_trait, check_loaded_is_live, Error, Finish, Finished, HeldSession, Lease, LockGuard, Record,
    Result, SessionKey, Then, Timestamp,
};

use crate::store::{Held, LeaseMapStore};

/// The lock [`LeaseMapStore::try_lock`](cloakroom_core::SessionStore::try_lock)
/// hands out. Dropping it releases the lease at once.
#[derive(Debug)]
pub(crate) struct LeaseMapGuard {
    store: LeaseMapStore,
    held: HeldSession,
    token: u64,
    /// Released (or refused): every later call is `LeaseLost`.
    spent: bool,
}

impl LeaseMapGuard {
    pub(crate) fn new(store: LeaseMapStore, key: SessionKey, lease: Held, record: Option<Record>) -> Self {
        LeaseMapGuard {
            store,
            held: HeldSession {
                key,
                record,
                lease: Lease {
                    token: lease.token.to_string(),
                    deadline: lease.deadline,
                },
            },
            token: lease.token,
            spent: false,
        }
    }

    /// Give the lease back, if it is still ours: a lease that lapsed and
    /// was taken by someone else is theirs now.
    fn release(&mut self) {
        if !std::mem::replace(&mut self.spent, true) {
            let token = self.token;
            self.store.map.with_entry(&self.held.key, |entry| {
                if entry.lease.is_some_and(|held| held.token == token) {
                    entry.lease = None;
                }
            });
        }
    }

    /// `op` applied to the entry, if this guard still holds its lease and
    /// the record it loaded is still the live one.
    fn write(&self, op: Finish) -> Result<(Finished, Option<Record>)> {
        if let Finish::Save(write) = &op {
            write.check_size(self.store.options().max_record_bytes)?;
        }
        let (token, loaded) = (self.token, self.held.record.as_ref());
        self.store.map.with_entry(&self.held.key, |entry| {
            // The fence: a lapsed lease was dropped by `with_entry`, and a
            // newer holder has another token.
            if entry.lease.is_none_or(|held| held.token != token) {
                return Err(Error::LeaseLost);
            }
            let live = entry.live(Timestamp::now()).map(|r| r.version);
            match op {
                Finish::Save(write) => {
                    check_loaded_is_live(loaded.map(|r| r.version), live)?;
                    let (version, created) =
                        loaded.map_or((1, write.created), |r| (r.version + 1, r.created));
                    let record = Record {
                        created,
                        ..write.into_record(version)
                    };
                    entry.record = Some(record.clone());
                    Ok((Finished::Saved { version }, Some(record)))
                }
                Finish::Touch { accessed, expires } => {
                    let loaded = loaded.ok_or(Error::Gone)?;
                    check_loaded_is_live(Some(loaded.version), live)?;
                    let record = Record {
                        accessed,
                        expires,
                        ..loaded.clone()
                    };
                    entry.record = Some(record.clone());
                    Ok((Finished::Touched, Some(record)))
                }
                Finish::Delete => {
                    entry.record = None;
                    Ok((
                        Finished::Deleted {
                            was_live: live.is_some(),
                        },
                        None,
                    ))
                }
                Finish::Nothing => Ok((Finished::Nothing, loaded.cloned())),
                // `Finish` is non-exhaustive: an operation added to core
                // later is refused until this store learns it.
                other => Err(Error::Unsupported(format!("example store: {other:?}"))),
            }
        })
    }
}

#[async_trait]
impl LockGuard for LeaseMapGuard {
    fn held(&self) -> &HeldSession {
        &self.held
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        let token = self.token;
        let renewed = !self.spent
            && self
                .store
                .map
                .with_entry(&self.held.key, |entry| match &mut entry.lease {
                    Some(ours) if ours.token == token => {
                        ours.deadline = Instant::now() + lease;
                        self.held.lease.deadline = ours.deadline;
                        true
                    }
                    _ => false,
                });
        if renewed {
            Ok(())
        } else {
            Err(Error::LeaseLost)
        }
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        if self.spent {
            return Err(Error::LeaseLost);
        }
        let outcome = self.write(op);
        if then == Then::Release || outcome.is_err() {
            self.release();
        }
        let (finished, record) = outcome?;
        self.held.record = record;
        Ok(finished)
    }
}

impl Drop for LeaseMapGuard {
    fn drop(&mut self) {
        self.release();
    }
}
