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
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! let store = cloakroom_redis::RedisStore::from_url("redis://127.0.0.1:6379/?prefix=shop:").await?;
//! let cluster = cloakroom_redis::RedisStore::from_url("redis+cluster://127.0.0.1:7000,127.0.0.1:7001").await?;
//! # drop((store, cluster)); Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

mod config;
mod conn;
mod error;
mod guard;
mod keys;
mod reply;
mod scripts;
mod store;
mod wait;

pub use config::{RedisConfig, DEFAULT_CONNECTIONS, DEFAULT_MAX_RECORD_BYTES};
pub use guard::RedisLockGuard;
pub use keys::{SessionKeys, DEFAULT_PREFIX};
pub use store::RedisStore;
