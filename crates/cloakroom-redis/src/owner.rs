//! Whether the process that holds a lock is still running, so that the lock
//! of a killed (or frozen) process is taken over within a second
//! instead of when its lease runs out (30 s by default).
//!
//! Every store has an owner name and keeps the key `<prefix>owner:<name>`
//! alive: written with a [`OWNER_TTL`] expiry before the store's first lock,
//! and written again every [`HEARTBEAT`] by a background task for as long
//! as the store exists. Its lock tokens start with `<name>.`. A waiter that
//! finds a lock whose owner key is gone knows that process has stopped
//! writing it — killed, frozen, or cut off — and deletes the lock if it
//! still holds that token, then takes it. A wrong guess (a process alive but
//! stalled for a whole second) stays safe: every write of the old holder is
//! fenced by its token and fails with `LeaseLost`.

use std::sync::Weak;
use std::time::Duration;

use cloakroom_core::{Error, Result};

use crate::error::map_redis;

use crate::keys::KeyLayout;
use crate::shared::SharedConn;

/// How often a store says it is alive.
pub(crate) const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long one "alive" lasts: several heartbeats, so one late write does
/// not make a live process look dead.
pub(crate) const OWNER_TTL: Duration = Duration::from_millis(800);

/// This store's owner name and key.
#[derive(Debug)]
pub(crate) struct Owner {
    name: String,
    key: String,
}

impl Owner {
    pub(crate) fn new(keys: &KeyLayout) -> Result<Self> {
        let name = random_hex(8)?;
        Ok(Owner {
            key: owner_key(keys, &name),
            name,
        })
    }

    /// A new lock token of this store: `<owner>.<random>`.
    pub(crate) fn token(&self) -> Result<String> {
        Ok(format!("{}.{}", self.name, random_hex(16)?))
    }

    /// Say this store is alive, for [`OWNER_TTL`].
    pub(crate) async fn beat(&self, conn: &mut SharedConn) -> Result<()> {
        let ttl = OWNER_TTL.as_millis() as u64;
        redis::cmd("SET")
            .arg(&self.key)
            .arg(1)
            .arg("PX")
            .arg(ttl)
            .query_async::<()>(conn)
            .await
            .map_err(map_redis)
    }

    /// Keep saying it every [`HEARTBEAT`] while `alive` can be upgraded
    /// (the store exists). A failed beat is retried at the next one.
    pub(crate) fn keep_beating<T: Send + Sync + 'static>(
        self: std::sync::Arc<Self>,
        mut conn: SharedConn,
        alive: Weak<T>,
    ) {
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                if alive.upgrade().is_none() {
                    // The store is gone: let the key lapse, and with it any
                    // lock a leaked guard might still name.
                    break;
                }
                if let Err(e) = self.beat(&mut conn).await {
                    tracing::debug!(error = %e, "redis owner heartbeat failed; retrying");
                }
            }
        });
    }

    /// The owner key of the store that wrote `token`, unless it is ours or
    /// not a token of this crate.
    pub(crate) fn other_owner_key(&self, keys: &KeyLayout, token: &str) -> Option<String> {
        let (name, _) = token.split_once('.')?;
        let valid = name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit());
        (valid && name != self.name).then(|| owner_key(keys, name))
    }
}

fn owner_key(keys: &KeyLayout, name: &str) -> String {
    format!("{}owner:{name}", keys.prefix())
}

/// Whether the owner key `key` is gone: its store has stopped beating.
pub(crate) async fn owner_is_gone(conn: &mut SharedConn, key: &str) -> Result<bool> {
    let count: i64 = redis::cmd("EXISTS")
        .arg(key)
        .query_async(conn)
        .await
        .map_err(map_redis)?;
    Ok(count == 0)
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    getrandom::fill(&mut raw).map_err(|e| Error::backend(format!("no randomness for a lock token: {e}")))?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    Ok(raw
        .iter()
        .flat_map(|b| {
            [
                char::from(HEX[usize::from(b >> 4)]),
                char::from(HEX[usize::from(b & 0xf)]),
            ]
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_owner_and_only_other_owners_are_asked_about() {
        let keys = KeyLayout::new("app:").unwrap();
        let (ours, theirs) = (Owner::new(&keys).unwrap(), Owner::new(&keys).unwrap());
        let (a, b) = (ours.token().unwrap(), ours.token().unwrap());
        assert_ne!(a, b);
        let (name, random) = a.split_once('.').unwrap();
        assert_eq!((name.len(), random.len()), (16, 32));
        assert!(a.bytes().all(|c| c == b'.' || c.is_ascii_hexdigit()), "{a}");
        assert_eq!(ours.other_owner_key(&keys, &a), None, "never ask about ourselves");
        assert_eq!(
            ours.other_owner_key(&keys, &theirs.token().unwrap()),
            Some(theirs.key.clone())
        );
        assert!(theirs.key.starts_with("app:owner:"));
        for foreign in [
            "",
            "no-dot",
            "zzzzzzzzzzzzzzzz.x",
            "0123.x",
            "0123456789abcdef0.x",
        ] {
            assert_eq!(ours.other_owner_key(&keys, foreign), None, "{foreign}");
        }
    }
}
