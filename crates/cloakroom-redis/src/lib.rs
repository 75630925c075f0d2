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
//! - **Expiry**: records are hashes expired by Redis itself, with
//!   `PEXPIREAT` at `expires + expired_grace` (an hour by default). Past
//!   `expires` a record counts as missing everywhere (load, lock, every
//!   script, listing, counting); within the grace a sweep finds it with
//!   `SCAN` (every master, on a Cluster) and deletes it, only if it is still
//!   expired and unlocked, in the same script that hands it back for expiry
//!   listeners. **`on_expire` fires on Redis when a sweeper finds the record
//!   within `expired_grace` of its expiry; after that Redis drops it
//!   unseen.** With `expired_grace=0s` Redis drops records at `expires`, a
//!   sweep deletes nothing and the capabilities say `expires_natively`.
//!   Keyspace notifications (`expired` events) were not used instead: they
//!   carry only the key name, not the data and principal a listener needs
//!   (the key is already gone when the event is sent), they must be turned
//!   on in the server's configuration, and they are fire-and-forget pub/sub,
//!   lost whenever no subscriber is connected (a deploy, a restart, a
//!   network blip), and sent by each Cluster node to its own subscribers only.
//! - **Principals**: a record's principal is a field of its hash; a set per
//!   `(namespace, principal)`, named by [`Principal::digest`](cloakroom_core::Principal::digest),
//!   holds a superset of the ids of its sessions, kept before and after each
//!   write (see the key layout in [`SessionKeys`]); `list_by_principal`
//!   checks each member against its record and drops stale ones.
//! - **Rotation**: on one node, a rotation is one script (check the old
//!   record, refuse a live target, create it, delete the old one, release or
//!   keep the lock). On a Cluster the two ids live in different slots, so the
//!   capabilities leave out atomic rotation and the lock engine rotates in
//!   two steps (delete, then create).
//! - **Cluster**: every key of a session carries the hash tag `{ns:id}`, so a
//!   script only ever touches one slot. Listing scans each master in turn.
//!
//! # URLs and options
//!
//! ```text
//! redis://[user[:password]@]host[:port][/db][?option=value&…]
//! redis+cluster://[user[:password]@]host:port[,host:port…][?option=value&…]
//! rediss://…  rediss+cluster://…          (the same over TLS, feature `tls`)
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `prefix` | `cloakroom:` | put before every key; no `{` or `}` |
//! | `max_record_bytes` | 4 MiB | larger records are refused with `TooLarge` |
//! | `connections` | 4 | multiplexed connections, 1 to 64 (waiters' blocking connections come on top) |
//! | `expired_grace` | `1h` | how long Redis keeps a record past its `expires` for sweepers (and expiry listeners) to find; `0s` to drop it at `expires`; at most `168h`; a duration such as `250ms`, `30s`, `15m`, `1h` |
//! | `cluster` | `false` | use the Cluster client for a `redis://` URL (as `redis+cluster://` does) |
//! | `protocol` | `resp2` | passed on to redis-rs (`resp2` or `resp3`) |
//! | `tls_ca` | webpki roots | `rediss://` only: PEM file of the CA(s) to trust instead of the built-in roots |
//!
//! Any other key is an error naming it. The same options can be set in code
//! with [`RedisOptions`].
//!
//! # TLS
//!
//! With the `tls` Cargo feature (rustls with the ring provider; nothing to
//! build with OpenSSL), `rediss://host:port` reaches one node and
//! `rediss+cluster://h1:p1,h2:p2` a Cluster over TLS, every connection
//! included (the waiters' blocking ones, and the Cluster nodes the client
//! learns of, which must serve TLS too: `tls-cluster yes`). The server's
//! certificate is verified against the built-in webpki (Mozilla) roots, or
//! against the CA file of `tls_ca=/path/ca.pem` instead, and must name the
//! host of the URL (a DNS name or an IP address). The CA file is read when
//! the store connects; one that cannot be read is an
//! [`Error::Config`](cloakroom_core::Error::Config) naming it, and a server
//! whose certificate does not verify makes the store
//! [`Unavailable`](cloakroom_core::Error::Unavailable) with the reason.
//! Without the feature, `rediss://` is
//! [`Error::Unsupported`](cloakroom_core::Error::Unsupported) naming it: a
//! TLS URL never connects in plain text.
//!
//! If the process has no default rustls `CryptoProvider` when the first
//! TLS connection is made, ring's is installed as the default (redis-rs
//! builds its TLS configuration with the default provider).
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
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod guard;
mod keys;
mod options;
mod owner;
mod principals;
mod reply;
mod scripts;
mod shared;
mod store;
mod tls;
mod wait;

use std::sync::Arc;

use cloakroom_core::{Opener, Result, SessionStore, StoreUrl};

pub use keys::{SessionKeys, DEFAULT_PREFIX};
pub use options::{RedisOptions, DEFAULT_CONNECTIONS, DEFAULT_EXPIRED_GRACE};
pub use store::RedisStore;

/// Opens `redis://`, `redis+cluster://`, and with the `tls` feature
/// `rediss://`, `rediss+cluster://` URLs (without it, those are refused as
/// unsupported) for a [`Registry`](cloakroom_core::Registry).
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
        // Expired records are kept an hour for sweepers by default.
        assert!(!store.capabilities().expires_natively);
        assert!(store.capabilities().rotates_atomically);
        let native = registry.open("redis://127.0.0.1:1/?expired_grace=0s").unwrap();
        assert!(native.capabilities().expires_natively);
        let cluster = registry.open("redis+cluster://127.0.0.1:1").unwrap();
        assert!(!cluster.capabilities().rotates_atomically, "two slots, two steps");
        assert!(registry.open("redis+cluster://127.0.0.1:1,127.0.0.1:2").is_ok());
        let tls = registry.open("rediss://127.0.0.1:1?tls_ca=/nowhere/ca.pem");
        if cfg!(feature = "tls") {
            // The CA is read on connect, not here.
            assert!(tls.is_ok());
        } else {
            assert!(matches!(tls, Err(Error::Unsupported(_))));
        }
        assert!(
            matches!(registry.open("redis://127.0.0.1?colour=red"), Err(Error::Config(m)) if m.contains("colour"))
        );
    }
}
