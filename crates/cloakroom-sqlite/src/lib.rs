//! SQLite store for [cloakroom](https://docs.rs/cloakroom), the embedded
//! default: one database file, safe across threads and OS processes on one
//! host.
//!
//! - WAL journal, `synchronous=NORMAL` by default ([`Synchronous`]), a busy
//!   timeout, and `BEGIN IMMEDIATE` for every read-then-write.
//! - The WAL file stays bounded under steady concurrent traffic: past
//!   [`SqliteOptions::max_wal_bytes`] the store pauses its own readers
//!   for a moment and truncates it, because SQLite's automatic checkpoint
//!   alone is starved by overlapping readers and lets it grow without end.
//! - Per-session locks are lease columns in the session's row, claimed and
//!   released by one statement each and fenced by the holder's token (see
//!   [`SqliteLockGuard`]), never a transaction held across a request:
//!   SQLite's write lock is database-wide.
//! - A session's principal is a column with a partial index on
//!   `(namespace, principal)`, so
//!   [`list_by_principal`](SessionStore::list_by_principal) reads only that
//!   principal's rows. A table made by a version before principals is
//!   upgraded in place (the column and the index added) by
//!   [`migrate`](SessionStore::migrate) and by any connection that opens
//!   it; rows already there belong to nobody.
//! - Rotating a session to a new id
//!   ([`Finish::Rotate`](cloakroom_core::Finish::Rotate)) is one
//!   transaction: the store declares
//!   [`atomic_rotation`](cloakroom_core::Capabilities::atomic_rotation).
//! - A sweep deletes and returns the expired rows in one
//!   `DELETE … RETURNING`, so expiry listeners get each record's data and
//!   principal.
//! - All writes of a store go through one writer connection on a thread of
//!   its own, which commits the queued writes of different sessions together
//!   in one transaction; so within a process no connection ever waits for
//!   SQLite's write lock. Reads without a lock use a few reader connections
//!   on threads of their own. SQLite never runs on the async workers.
//! - Building a store touches no file: the database is created or opened,
//!   and the threads started, on first use ([`SessionStore::migrate`]
//!   is the natural first call).
//! - A database file the store creates is readable by its owner only
//!   (0600), and so are its `-wal` and `-shm` files: sessions are
//!   credentials. An existing file keeps its mode; one open to other users
//!   is logged as a warning.
//! - Only bound parameters; the one identifier in SQL text, the table name,
//!   is validated ([`validate_table_name`]).
//!
//! # URL
//!
//! `sqlite:///absolute/path.db` or `sqlite:relative/path.db` (no host, no
//! `:memory:`: an in-memory database is per connection), with options as
//! query parameters, for example
//! `sqlite:///var/lib/app/sessions.db?synchronous=full&busy_timeout=250ms`:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table` | `cloakroom_sessions` | the sessions table (a plain identifier) |
//! | `synchronous` | `normal` | `off`, `normal`, `full` or `extra` ([`Synchronous`]) |
//! | `busy_timeout` | `5s` | how long a statement waits for another process's write lock (`250ms`, `5s`, `2m`, `1h`) |
//! | `max_connections` | `4` | one writer and the rest readers (at least one), 1 to 1024 |
//! | `max_record_bytes` | 4 MiB | largest encoded record accepted |
//! | `max_wal_bytes` | 64 MiB | `-wal` size past which the store truncates it |
//!
//! The same options in code are [`SqliteOptions`].
//!
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, Namespace, SessionStore};
//! use cloakroom_sqlite::SqliteStore;
//!
//! let store = SqliteStore::from_url("sqlite:sessions.db")?;
//! store.migrate().await?;
//! let manager = Manager::new(Arc::new(store), Namespace::new("shop")?);
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

use std::sync::Arc;

use cloakroom_core::{Opener, Result, SessionStore, StoreUrl};

mod checkpoint;
mod database;
mod error;
mod guard;
mod options;
mod readers;
mod row;
mod schema;
mod store;
mod writer;

pub use guard::SqliteLockGuard;
pub use options::{validate_table_name, SqliteOptions, Synchronous, DEFAULT_MAX_WAL_BYTES, DEFAULT_TABLE};
pub use store::SqliteStore;

/// Opens `sqlite:` URLs (see the crate docs), for a
/// [`Registry`](cloakroom_core::Registry). Touches no file.
pub const OPENER: Opener = Opener {
    schemes: &["sqlite"],
    open: open_url,
};

fn open_url(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    Ok(Arc::new(SqliteStore::from_store_url(url)?))
}
