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
//! - Per-session locks are lease columns in the session's row (see [`lock`]),
//!   never a transaction held across a request: SQLite's write lock is
//!   database-wide.
//! - All writes of a store go through one writer connection on a thread of
//!   its own, which commits the queued writes of different sessions together
//!   in one transaction; so within a process no connection ever waits for
//!   SQLite's write lock. Reads without a lock use a few reader connections
//!   on threads of their own. SQLite never runs on the async workers.
//! - Only bound parameters; the one identifier in SQL text, the table name,
//!   is validated ([`validate_table_name`]).
//!
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, Namespace, SessionStore};
//! use cloakroom_sqlite::SqliteStore;
//!
//! let store = SqliteStore::from_url("sqlite:sessions.db")?;
//! store.migrate().await?;
//! let manager = Manager::new(Arc::new(store), Namespace::new("shop")?)?;
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

mod checkpoint;
mod config;
pub mod lock;
mod pool;
mod schema;
mod store;
mod writer;

pub use config::{
    validate_table_name, SqliteOptions, Synchronous, DEFAULT_MAX_RECORD_BYTES, DEFAULT_MAX_WAL_BYTES,
    DEFAULT_TABLE,
};
pub use lock::SqliteLockGuard;
pub use store::SqliteStore;
