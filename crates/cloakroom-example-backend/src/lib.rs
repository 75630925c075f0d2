//! The smallest complete cloakroom backend, kept as the worked example of
//! "Adding a backend" in CONTRIBUTING.md.
//!
//! [`LeaseMapStore`] keeps records and leases in one map in this process.
//! A lock is a lease with a token; every write under the lock checks the
//! token and the lease's deadline first, so a holder whose lease ran out
//! changes nothing. It has the files every backend crate has
//! (`options.rs`, `store.rs`, `guard.rs`, this `lib.rs` with its
//! [`OPENER`]) and passes the whole conformance suite
//! (`tests/conformance.rs`). For real in-process sessions use the memory
//! store (`memory:`), whose lock queue hands the lock over without polling.
//!
//! # URL
//!
//! ```text
//! example:[?max_record_bytes=N]
//! ```
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `max_record_bytes` | 4194304 (4 MiB) | largest encoded record accepted; at least 1 |
//!
//! ```
//! use cloakroom_core::Registry;
//!
//! let registry = Registry::new().with(cloakroom_example_backend::OPENER);
//! let store = registry.open("example:?max_record_bytes=65536")?;
//! assert_eq!(store.capabilities().max_record_bytes, 65536);
//! # Ok::<(), cloakroom_core::Error>(())
//! ```
#![warn(clippy::unwrap_used)]

mod guard;
mod options;
mod store;

use std::sync::Arc;

use cloakroom_core::Opener;

pub use options::ExampleOptions;
pub use store::LeaseMapStore;

/// The `example:` scheme, for [`cloakroom_core::Registry::with`].
pub const OPENER: Opener = Opener {
    schemes: &["example"],
    open: |url| Ok(Arc::new(LeaseMapStore::new(ExampleOptions::from_url(url)?)?)),
};
