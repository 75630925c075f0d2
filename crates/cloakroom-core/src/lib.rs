//! Core of [cloakroom](https://docs.rs/cloakroom): server-side web sessions
//! with real per-session locking.
//!
//! - [`SessionId`], [`Namespace`], [`SessionKey`]: strictly parsed, so they
//!   are safe as file names, keys and query parameters.
//! - [`SessionData`]: typed values (serde) stored with rmp-serde behind a
//!   format-version header.
//! - [`SessionStore`] and [`LockGuard`]: the backend contract, checked by the
//!   `cloakroom-conformance` suite.
//! - [`Manager`] and [`Session`]: what an application uses, under a
//!   [`Policy`].
//! - [`MemoryStore`]: the in-process store.
//! - [`Keyring`] and [`Key`]: opt-in encryption at rest of session data
//!   (AES-256-GCM, bound to the namespace and stored id), with key rotation.
//!
//! ```
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, MemoryStore, Namespace};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cloakroom_core::Result<()> {
//! let manager = Manager::new(Arc::new(MemoryStore::new()), Namespace::new("shop")?);
//! let mut session = manager.open(None).await?;          // a new session
//! session.insert("hits", &1u64)?;
//! let id = session.id().clone();
//! session.commit().await?;
//!
//! let mut session = manager.open(Some(&id)).await?;     // locked until commit
//! let hits: u64 = session.get("hits")?.unwrap_or(0);
//! session.insert("hits", &(hits + 1))?;
//! session.commit().await?;
//! # Ok(()) }
//! ```
#![warn(clippy::unwrap_used)]

mod codec;
mod engine;
mod error;
mod id;
pub mod liveness;
mod manager;
mod memory;
mod record;
pub mod registry;
mod seal;
mod session;
mod store;
pub mod store_url;
mod sweeper;
pub mod telemetry;

pub use codec::{Expiry, SessionData, FORMAT_VERSION};
pub use error::{BoxError, Error, Result};
pub use id::{
    Namespace, Principal, SessionId, SessionKey, NAMESPACE_MAX_LEN, PRINCIPAL_MAX_LEN, SESSION_ID_LEN,
};
pub use manager::{
    list_ids, sweep_batches, sweep_expired, EndedSession, Manager, ManagerBuilder, Policy, SessionConfig,
    SessionListener, SweepReport,
};
pub use memory::{MemoryLockGuard, MemoryStore};
pub use record::{check_loaded_is_live, Record, RecordWrite, Timestamp};
pub use registry::{Opener, Registry};
pub use seal::{Key, Keyring};
pub use session::{Committed, ReadOnlySession, Session};
pub use store::wait_for_lock;
pub use store::{
    Acquired, Capabilities, Cursor, Finish, Finished, HeldSession, IdPage, Lease, LockGuard, LockKind,
    LockOptions, SessionStore, SessionSummary, SweepBatch, SweptRecord, Then, DEFAULT_MAX_RECORD_BYTES,
};
pub use store_url::StoreUrl;
pub use sweeper::{Sweeper, SweeperStats};

/// Re-exported so backends implement the traits with the same macro version.
pub use async_trait::async_trait;
