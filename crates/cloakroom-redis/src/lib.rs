//! Redis and Redis Cluster backend of [cloakroom](https://docs.rs/cloakroom).
//!
//! - **Lock**: `SET <prefix>{ns:id}:lock <random token> NX PX <lease>`. Every
//!   save, renewal and release checks the token inside the same Lua script
//!   that writes, so a holder whose lease ran out gets
//!   [`LeaseLost`](cloakroom_core::Error::LeaseLost) and changes nothing.
//! - **One round trip each way**: lock-and-load is one pipeline (`SET NX PX`,
//!   `HMGET`, `PTTL`; no script, since `SET NX` is atomic by itself), and
//!   every write of a holder (save, touch, delete or nothing, then release
//!   or keep the lock) is one `EVALSHA` of one script (scripts are loaded on
//!   first `NOSCRIPT`). A kept write is durable when it returns and leaves
//!   the lock key, and its lease, as they were.
//! - **Wake-ups**: after a failed lock attempt, the waiter raises a
//!   short-lived `waiting` flag and tries once more; a release that finds the
//!   flag pushes to a
//!   per-session wake list, and waiters `BLPOP` on it (on dedicated
//!   connections), bounded by their deadline and by the holder's remaining
//!   lease. No fixed sleeps, and no wake-up traffic when nobody waits.
//! - **Expiry**: records are hashes expired by Redis itself (`PEXPIREAT`);
//!   a sweep has nothing to delete.
//! - **Cluster**: every key of a session carries the hash tag `{ns:id}`, so a
//!   script only ever touches one slot. Listing scans each master in turn.
//!
//! # URLs and options
//!
//! ```text
//! redis://[user[:password]@]host[:port][/db][?option=value&…]
//! redis+cluster://[user[:password]@]host:port[,host:port…][?option=value&…]
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `cloakroom:` | put before every key; no `{` or `}` |
//! | `max_record_bytes` | 4 MiB | larger records are refused with `TooLarge` |
//! | `connections` | 4 | multiplexed connections, 1 to 64 (waiters' blocking connections come on top) |
//! | `cluster` | `false` | use the Cluster client for a `redis://` URL (as `redis+cluster://` does) |
//! | `protocol` | `resp2` | passed on to redis-rs (`resp2` or `resp3`) |
//!
//! Any other key is an error naming it. `rediss://` and `rediss+cluster://`
//! are refused as unsupported: TLS is not compiled in. The same options can
//! be set in code with [`RedisOptions`].
//!
//! Opening a store does no I/O: the first operation connects, and
//! [`migrate`](cloakroom_core::SessionStore::migrate) is how to check that
//! the server answers.
//!
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! use cloakroom_core::SessionStore;
//! use cloakroom_redis::{RedisOptions, RedisStore};
//!
//! let store = RedisStore::from_url("redis://127.0.0.1:6379/?prefix=shop:")?;
//! store.migrate().await?; // connects
//! let cluster = RedisStore::from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")?;
//! let built = RedisStore::new(RedisOptions::new("redis://127.0.0.1:7000").cluster(true).connections(8))?;
//! # drop((cluster, built)); Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

mod error;
mod guard;
mod keys;
mod options;
mod reply;
mod scripts;
mod shared;
mod store;
mod wait;

use std::sync::Arc;

use cloakroom_core::{Opener, Result, SessionStore, StoreUrl};

pub use keys::{SessionKeys, DEFAULT_PREFIX};
pub use options::{RedisOptions, DEFAULT_CONNECTIONS};
pub use store::RedisStore;

/// Opens `redis://`, `redis+cluster://` (and refuses `rediss://`,
/// `rediss+cluster://` as unsupported) URLs for a
/// [`Registry`](cloakroom_core::Registry).
pub const OPENER: Opener = Opener {
    schemes: &["redis", "redis+cluster", "rediss", "rediss+cluster"],
    open,
};

fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    Ok(Arc::new(RedisStore::new(RedisOptions::from_url(url)?)?))
}

#[cfg(test)]
mod tests {
    use cloakroom_core::{Error, Registry};

    use super::*;

    #[test]
    fn the_opener_builds_without_connecting() {
        let registry = Registry::new().with(OPENER);
        // Nothing listens on port 1: opening must not notice.
        let store = registry
            .open("redis://127.0.0.1:1/?prefix=p:&max_record_bytes=9")
            .unwrap();
        assert_eq!(store.capabilities().max_record_bytes, 9);
        assert!(store.capabilities().expires_natively);
        assert!(registry.open("redis+cluster://127.0.0.1:1,127.0.0.1:2").is_ok());
        assert!(matches!(
            registry.open("rediss://127.0.0.1"),
            Err(Error::Unsupported(_))
        ));
        assert!(
            matches!(registry.open("redis://127.0.0.1?colour=red"), Err(Error::Config(m)) if m.contains("colour"))
        );
    }
}
