//! Postgres and MySQL/MariaDB session stores for
//! [cloakroom](https://docs.rs/cloakroom), locking sessions with database row
//! locks (sqlx 0.8).
//!
//! - [`PostgresStore`] (feature `postgres`) and [`MysqlStore`] (feature
//!   `mysql`, MySQL 8 or MariaDB 10.6+) are the same [`RowLockStore`] over
//!   two [`Backend`]s; all statements are in one place (`sql.rs`), written
//!   once for both.
//! - `Serialized` sessions are locked with `SELECT … FOR UPDATE` inside a
//!   transaction owned by the lock guard: the database queues waiters and
//!   wakes the next one the moment the holder commits, and frees the lock if
//!   the holder's connection dies. A session that does not exist yet is
//!   locked through a placeholder row (`version = 0`) inserted by the locking
//!   transaction; it is invisible to every other operation and vanishes with
//!   a rollback.
//! - Lease: a holder's transaction ends at its lease deadline (Postgres:
//!   `idle_in_transaction_session_timeout`; MySQL: a watchdog task), and the
//!   holder's later save fails with `LeaseLost`.
//! - A row lock cannot outlive a `COMMIT`, so a
//!   [`finish`](cloakroom_core::LockGuard::finish) with
//!   [`Then::Keep`](cloakroom_core::Then::Keep) writes into the locking
//!   transaction without committing: other connections keep seeing the last
//!   committed version, and the kept writes become durable at the release
//!   that commits them (`Capabilities::durable_while_locked` is false). A
//!   failed finish, a lease that runs out and a guard dropped unreleased roll
//!   them back.
//! - Unlocked saves are compare-and-set `UPDATE`s of live rows only; they
//!   never insert, so a deleted or expired session is never brought back.
//!   Note that on these backends an unlocked write to a session whose lock
//!   is held waits for the holder (a row lock blocks every writer), at most
//!   until the holder's lease runs out.
//!
//! # Connections and the pool
//!
//! Each in-flight locked request holds **one pooled connection** from `lock`
//! until it releases or drops its guard (through a whole chain of
//! `Then::Keep` hand-offs), because the lock is that connection's open
//! transaction. Size [`StoreConfig::max_connections`]
//! (default 40) for the number of sessions you expect to be locked at once,
//! and keep it below the server's `max_connections`. When the pool is
//! exhausted:
//! - `lock` waits for a connection no longer than its own wait timeout and
//!   then fails with [`Error::LockTimeout`](cloakroom_core::Error::LockTimeout)
//!   (a connection the pool can give at once, idle or new, is taken even by
//!   a lock with no wait, within `acquire_timeout`);
//! - every other call waits up to [`StoreConfig::acquire_timeout`] (default
//!   5 s) and then fails with
//!   [`Error::Unavailable`](cloakroom_core::Error::Unavailable).
//!
//! Nothing waits without a deadline.
//!
//! # Connecting
//!
//! [`RowLockStore::from_url`] accepts `postgres://` / `postgresql://` and
//! `mysql://` / `mariadb://` URLs with an optional `?table=name`. Stores
//! connect **lazily**: constructing one never fails because the server is
//! down; the first call that needs the server reports
//! [`Error::Unavailable`](cloakroom_core::Error::Unavailable), and later calls
//! reconnect by themselves once the server is back. Call
//! [`migrate`](cloakroom_core::SessionStore::migrate) at start-up to create
//! the table (idempotent) and to learn early whether the server is reachable.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> cloakroom_core::Result<()> {
//! use cloakroom_core::SessionStore;
//! let store = cloakroom_sql::PostgresStore::from_url("postgres://postgres@127.0.0.1/test").await?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

mod backend;
mod config;
mod driver;
mod error;
mod guard;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(feature = "postgres")]
mod postgres;
mod sql;
mod store;
mod tx;

pub use backend::Backend;
pub use config::{StoreConfig, TableName, DEFAULT_TABLE};
pub use guard::RowLockGuard;
#[cfg(feature = "mysql")]
pub use mysql::{Mysql, MysqlLockGuard, MysqlStore};
#[cfg(feature = "postgres")]
pub use postgres::{Postgres, PostgresLockGuard, PostgresStore};
pub use store::RowLockStore;
