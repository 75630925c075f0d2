//! Postgres and MySQL/MariaDB session stores for
//! [cloakroom](https://docs.rs/cloakroom), locking sessions with database row
//! locks (sqlx 0.8).
//!
//! - [`PostgresStore`] (feature `postgres`) and [`MysqlStore`] (feature
//!   `mysql`, MySQL 8 or MariaDB 10.6+) are one row-lock store over two
//!   backends (`postgres.rs`, `mysql.rs`); all statements are in one place
//!   (`statements.rs`), written once for both.
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
//! - Rotation ([`Finish::Rotate`](cloakroom_core::Finish::Rotate), what
//!   `cycle_id` does at login) runs inside the locking transaction, so it is
//!   atomic (`Capabilities::rotates_atomically`): the old row is deleted if
//!   it is still the live record at the version the holder knows, the new
//!   id's row is written unless a live record holds that id, and both
//!   become visible at one commit, or neither.
//!
//! # Schema
//!
//! [`migrate`](cloakroom_core::SessionStore::migrate) creates one table
//! (`table` option, default `cloakroom_sessions`):
//!
//! | column | Postgres | MySQL / MariaDB |
//! |---|---|---|
//! | `namespace` | `TEXT COLLATE "C"` | `VARCHAR(64)` utf8mb4, `utf8mb4_bin` |
//! | `id` | `TEXT COLLATE "C"` | `VARCHAR(64)` utf8mb4, `utf8mb4_bin` |
//! | `data` | `BYTEA` | `LONGBLOB` |
//! | `version`, `created`, `accessed`, `expires` | `BIGINT` (times in ms since the epoch) | `BIGINT` |
//! | `principal` | `TEXT COLLATE "C"`, nullable | `VARBINARY(256)`, nullable |
//!
//! with the primary key `(namespace, id)`, an index `<table>_expires` on
//! `(namespace, expires)` for sweeps, and an index `<table>_principal` on
//! `(namespace, principal)` for
//! [`list_by_principal`](cloakroom_core::SessionStore::list_by_principal)
//! (partial on Postgres, `WHERE principal IS NOT NULL`, since most sessions
//! belong to nobody). A row with `version = 0` is a lock placeholder, never
//! a record.
//!
//! A table made by an earlier version of this crate, without `principal`,
//! is upgraded in place by `migrate`, which stays idempotent and safe to run
//! from several processes at once: it adds the nullable column (a catalog
//! change, no rewrite) and builds the index; old records read with no
//! principal. Adding the column waits for the session locks held at that
//! moment (at most their leases) and holds up new ones meanwhile, once; on
//! Postgres the index build also holds up writes for one scan of the table.
//! Run the first `migrate` of an upgrade at deployment time rather than
//! under peak load, and before the new version serves requests: its
//! statements read and write `principal`, so on a table not yet upgraded
//! they fail. Once done, `migrate` only reads the catalog.
//!
//! # Connections and the pool
//!
//! Each in-flight locked request holds **one pooled connection** from `lock`
//! until it releases or drops its guard (through a whole chain of
//! `Then::Keep` hand-offs), because the lock is that connection's open
//! transaction. Size [`SqlOptions::max_connections`]
//! (default 40) for the number of sessions you expect to be locked at once,
//! and keep it below the server's `max_connections`. When the pool is
//! exhausted:
//! - `lock` waits for a connection no longer than its own wait timeout and
//!   then fails with [`Error::LockTimeout`](cloakroom_core::Error::LockTimeout)
//!   (a connection the pool can give at once, idle or new, is taken even by
//!   a lock with no wait, within `acquire_timeout`);
//! - every other call waits up to [`SqlOptions::acquire_timeout`] (default
//!   5 s) and then fails with
//!   [`Error::Unavailable`](cloakroom_core::Error::Unavailable).
//!
//! Nothing waits without a deadline.
//!
//! # Connecting
//!
//! ```text
//! postgres://[user[:password]@]host[:port]/database[?option=value&…]
//! mysql://[user[:password]@]host[:port]/database[?option=value&…]
//! ```
//!
//! `postgresql://` and `mariadb://` are the same as `postgres://` and
//! `mysql://`. The store's options ([`SqlOptions`]) and the driver's own
//! share the query; any other key is an
//! [`Error::Config`](cloakroom_core::Error::Config) naming it.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table` | `cloakroom_sessions` | table holding the sessions, `[A-Za-z_][A-Za-z0-9_]{0,62}` |
//! | `max_connections` | `40` | most pooled connections (at least 1) |
//! | `acquire_timeout` | `5s` | longest wait for a connection outside of `lock` |
//! | `idle_timeout` | `30s` | an idle connection is closed after this long |
//! | `max_record_bytes` | 4 MiB | largest encoded record |
//!
//! Durations are written `250ms`, `5s`, `2m` or `1h`. The driver's options
//! (sqlx 0.8) are passed on untouched:
//! - Postgres: `sslmode`, `sslrootcert`, `sslcert`, `sslkey` (also spelled
//!   `ssl-mode`, `ssl-root-cert`/`ssl-ca`, `ssl-cert`, `ssl-key`),
//!   `application_name`, `options` and `options[setting]`,
//!   `statement-cache-capacity`, `host`, `hostaddr`, `port`, `dbname`,
//!   `user`, `password`;
//! - MySQL: `ssl-mode`, `ssl-ca`, `ssl-cert`, `ssl-key` (also spelled
//!   `sslmode`, `sslca`, `sslcert`, `sslkey`), `charset`, `collation`,
//!   `statement-cache-capacity`, `socket`, `timezone` (or `time-zone`).
//!
//! # TLS
//!
//! With the `tls` Cargo feature (sqlx's rustls with the ring provider and
//! the webpki (Mozilla) roots; nothing to build with OpenSSL), the driver's
//! own TLS options work as users of `psql` and `mysql` know them:
//!
//! | server | option | values |
//! |---|---|---|
//! | Postgres | `sslmode` | `disable`, `prefer` (sqlx's default), `require`, `verify-ca`, `verify-full` |
//! | Postgres | `sslrootcert` | PEM file of the CA(s) to trust besides the webpki roots |
//! | MySQL | `ssl-mode` | `DISABLED`, `PREFERRED` (sqlx's default), `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY` |
//! | MySQL | `ssl-ca` | PEM file of the CA(s) to trust besides the webpki roots |
//!
//! ```text
//! postgres://app@db.internal/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem
//! mysql://app@db.internal/app?ssl-mode=VERIFY_IDENTITY&ssl-ca=/etc/ssl/db-ca.pem
//! ```
//!
//! Only `verify-full` / `VERIFY_IDENTITY` check both the certificate chain
//! and that the certificate names the host of the URL; `verify-ca` /
//! `VERIFY_CA` check the chain only, and `require` / `REQUIRED` encrypt
//! without checking who answers. `prefer` / `PREFERRED`, the default,
//! encrypt when the server offers TLS, without checking either. The files
//! are read when a connection is made; one that cannot be read then is an
//! [`Error::Config`](cloakroom_core::Error::Config) naming it, and a server
//! whose certificate does not verify makes the store
//! [`Unavailable`](cloakroom_core::Error::Unavailable) with the reason.
//! Client certificates (`sslcert`/`sslkey`, `ssl-cert`/`ssl-key`) are
//! passed on as well.
//!
//! Without the feature, a mode that insists on TLS (`require` and the
//! `verify-*` modes, `REQUIRED` and `VERIFY_*`, from the URL or from
//! `PGSSLMODE`) is an
//! [`Error::Unsupported`](cloakroom_core::Error::Unsupported) naming the
//! feature when the store is built, never a plain-text connection;
//! `prefer` / `PREFERRED` then connect in plain text.
//!
//! [`PostgresStore::from_url`] and [`MysqlStore::from_url`] read such a URL;
//! [`PostgresStore::new`] and [`MysqlStore::new`] take [`SqlOptions`] built
//! in code. Both are synchronous and do no I/O: stores connect **lazily**,
//! so constructing one never fails because the server is down; the first
//! call that needs the server reports
//! [`Error::Unavailable`](cloakroom_core::Error::Unavailable), and later calls
//! reconnect by themselves once the server is back. The connection pool is
//! created by that first call, so a store can be built before the Tokio
//! runtime starts. Call [`migrate`](cloakroom_core::SessionStore::migrate) at
//! start-up to create the table (idempotent) and to learn early whether the
//! server is reachable. [`postgres::OPENER`] and [`mysql::OPENER`] open the
//! same URLs for a [`cloakroom_core::Registry`].
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> cloakroom_core::Result<()> {
//! use cloakroom_core::SessionStore;
//! let store = cloakroom_sql::PostgresStore::from_url("postgres://postgres@127.0.0.1/test?table=sessions")?;
//! store.migrate().await?;
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Without a server feature the shared row-lock code has no user.
#![cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    allow(dead_code, unused_imports, unused_macros)
)]

mod backend;
mod connection;
mod error;
mod guard;
#[cfg(feature = "mysql")]
pub mod mysql;
mod options;
#[cfg(feature = "postgres")]
pub mod postgres;
mod statements;
mod store;

#[cfg(feature = "mysql")]
pub use mysql::{MysqlLockGuard, MysqlStore};
pub use options::{SqlOptions, TableName, DEFAULT_TABLE};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresLockGuard, PostgresStore};
