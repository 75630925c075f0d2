//! The conformance cases, one public async function per contract clause.
//!
//! Each takes a [`Fixture`](crate::Fixture) and panics with the clause it
//! checks when the store breaks it. They are public so a backend can also
//! call one directly while debugging.

mod crud;
mod handoff;
mod hostile;
mod locking;
mod policies;
mod shared;
mod sweep;

pub use crud::*;
pub use handoff::*;
pub use hostile::*;
pub use locking::*;
pub use policies::*;
pub use shared::*;
pub use sweep::*;

use std::fmt::Debug;
use std::time::Duration;

/// Unwrap `result`, or fail naming what was being done.
#[track_caller]
pub(crate) fn must<T, E: Debug>(result: Result<T, E>, doing: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{doing}: unexpected error {e:?}"),
    }
}

/// Lock options with a lease and a wait.
pub(crate) fn opts(lease_ms: u64, wait_ms: u64) -> cloakroom_core::LockOptions {
    cloakroom_core::LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

/// Slack for timing bounds on a loaded 2-core CI machine running cases in parallel.
pub(crate) const SLACK: Duration = Duration::from_millis(2500);
