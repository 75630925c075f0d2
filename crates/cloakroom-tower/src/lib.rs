//! Tower layer and axum extractor for [cloakroom](https://docs.rs/cloakroom)
//! sessions.
//!
//! - [`SessionLayer`] puts a lazily opened session into every request and
//!   finishes it when the response is ready: save if changed, touch if due,
//!   always unlock — also on error, panic or a dropped connection.
//! - [`LazySession`] is the handler's handle: the first access opens the
//!   session and, under the default `Serialized` policy, takes its lock for
//!   the rest of the request, so five or six tabs of one visitor never lose
//!   each other's updates. A handler that never touches it costs no store
//!   call and takes no lock.
//! - [`SessionReader`] reads without ever locking, for pages that only show.
//!
//! The id travels in a cookie (secure defaults: `HttpOnly`, `Secure`,
//! `SameSite=Lax`, `Path=/`; see [`CookieConfig`]) or in a header
//! ([`SessionLayer::id_header`]). An id that is malformed — too long, wrong
//! alphabet, a path — never reaches the store; the request simply gets a
//! fresh session if it uses one. An unknown id gets a fresh session with a
//! new id, never the one offered.
//!
//! Session ids are bearer credentials: this crate logs at most a prefix.
#![warn(clippy::unwrap_used)]

mod config;
mod error;
mod extract;
mod id_carrier;
mod layer;

pub use config::{
    default_lock_timeout_response, CookieConfig, CookieLifetime, IdCarrier, LockTimeoutResponder,
};
pub use cookie::SameSite;
pub use error::{MissingSessionLayer, SessionError};
pub use extract::{LazySession, SessionReader};
pub use layer::{SessionLayer, SessionService};
