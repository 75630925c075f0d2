//! File store for [cloakroom](https://docs.rs/cloakroom): one file per
//! session under a directory, safe across threads and OS processes on one
//! host.
//!
//! - Records live at `<root>/<namespace>/<shard>/<id>` (see [`layout`]) and
//!   are only ever replaced whole: temp file, fsync, rename, fsync of the
//!   directory when [`FileOptions::durable`] is on (the default). A reader
//!   never sees a partial file, and a damaged one is [`Error::Corrupt`],
//!   never a panic.
//! - Per-session locks are `flock`s on a separate lock file, with a lease
//!   enforced by the guard (see [`lock`]); a SIGKILLed holder's lock is free
//!   at once.
//! - All file work runs on tokio's blocking pool, never on the async workers.
//!
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, Namespace, SessionStore};
//! use cloakroom_file::FileStore;
//!
//! let store = FileStore::from_url("file:///var/lib/myapp/sessions")?;
//! store.migrate().await?;
//! let manager = Manager::new(Arc::new(store), Namespace::new("shop")?)?;
//! # Ok(()) }
//! ```
//!
//! The file system must be local and case-sensitive (`flock` over NFS is not
//! reliable, and ids differing only in case are distinct sessions).
//!
//! [`Error::Corrupt`]: cloakroom_core::Error::Corrupt
#![warn(clippy::unwrap_used)]

mod config;
mod disk;
mod format;
pub mod layout;
pub mod lock;
mod store;

pub use config::{FileOptions, DEFAULT_MAX_RECORD_BYTES};
pub use lock::FileLockGuard;
pub use store::FileStore;
