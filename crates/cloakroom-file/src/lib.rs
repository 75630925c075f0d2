//! File store for [cloakroom](https://docs.rs/cloakroom): one file per
//! session under a directory, safe across threads and OS processes on one
//! host.
//!
//! - Records live at `<root>/<namespace>/<shard>/<id>`, `<shard>` being the
//!   first two characters of the id, and are only ever replaced whole: temp
//!   file, fsync, rename, fsync of the directory when
//!   [`FileOptions::durable`] is on (the default). A reader never sees a
//!   partial file, and a damaged one is [`Error::Corrupt`], never a panic.
//!   A record file holds the session's principal too (format 2; files of
//!   format 1, from before principals, still read, without one).
//! - Sessions are listed by principal
//!   ([`SessionStore::list_by_principal`]) from an index directory per
//!   principal, `<root>/<namespace>/principals/<digest>/`, named by
//!   [`Principal::digest`](cloakroom_core::Principal::digest) (never by the
//!   principal's text) and holding one empty marker file per stored id. A
//!   marker is made before the record write that gives the record its
//!   principal and removed after the write or delete that takes it away, so
//!   a crash leaves at worst a stale marker, never a missing one; a listing
//!   checks each marker against its record and removes the stale ones.
//! - Per-session locks are leases written in a separate `<id>.lock` file:
//!   the holder's token and the end of its lease, set and checked under a
//!   short per-shard `flock` that is never held across a request. A holder
//!   that freezes (a stopped process or VM) loses the session when its lease
//!   runs out, and its later writes fail with `LeaseLost`; a holder that is
//!   killed is taken over at once, because its store's owner file in
//!   `<root>-owners/` is no longer locked (see
//!   [`cloakroom_core::liveness`]).
//! - All file work runs on tokio's blocking pool, never on the async workers.
//! - A session id rotation is two steps (the lock engine deletes the old
//!   record, then creates the new one): a record and its successor are two
//!   files, which no single rename replaces, so the store does not claim
//!   [`Capabilities::rotates_atomically`](cloakroom_core::Capabilities::rotates_atomically).
//!
//! ```no_run
//! # async fn demo() -> cloakroom_core::Result<()> {
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, Namespace, SessionStore};
//! use cloakroom_file::FileStore;
//!
//! let store = FileStore::from_url("file:///var/lib/myapp/sessions")?;
//! store.migrate().await?;
//! let manager = Manager::new(Arc::new(store), Namespace::new("shop")?);
//! # Ok(()) }
//! ```
//!
//! # URL
//!
//! `file:///absolute/dir[?option=value&…]`, or `file://localhost/absolute/dir`.
//! The directory must be absolute and not `/`; no other host is accepted.
//!
//! | option             | default | meaning                                             |
//! |--------------------|---------|-----------------------------------------------------|
//! | `durable`          | `true`  | fsync files and directories before a write returns |
//! | `max_record_bytes` | 4 MiB   | largest encoded record accepted                     |
//!
//! The same settings in code: [`FileOptions::new`] and its setters, given to
//! [`FileStore::new`].
//!
//! The file system must be local and case-sensitive (`flock` over NFS is not
//! reliable, and ids differing only in case are distinct sessions). The
//! directory holding the root must be writable too, for `<root>-owners/`;
//! without it the store works, but a killed holder's lock waits for its
//! lease. Lease ends are wall-clock milliseconds: processes sharing a store
//! share the host's clock.
//!
//! [`Error::Corrupt`]: cloakroom_core::Error::Corrupt
#![warn(clippy::unwrap_used)]

mod error;
mod format;
mod guard;
mod index;
mod layout;
mod lease;
mod options;
mod record_file;
mod scan;
mod store;

use std::sync::Arc;

use cloakroom_core::{Opener, Result, SessionStore, StoreUrl};

pub use guard::FileLockGuard;
pub use options::FileOptions;
pub use store::FileStore;

/// Opens `file:` URLs, for a [`cloakroom_core::Registry`].
pub const OPENER: Opener = Opener {
    schemes: &["file"],
    open,
};

fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    Ok(Arc::new(FileStore::new(FileOptions::from_url(url)?)?))
}
