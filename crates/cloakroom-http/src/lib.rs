//! What [cloakroom](https://docs.rs/cloakroom)'s web integrations share, with
//! no web framework in it: [`cloakroom-tower`](https://docs.rs/cloakroom-tower)
//! (tower, axum) and [`cloakroom-actix`](https://docs.rs/cloakroom-actix)
//! (actix-web) are thin adapters over this crate, so they behave the same by
//! construction. Applications use those; this crate is for writing another.
//!
//! - [`Offered::from_request`]: the id a request offers, from a cookie or a
//!   header ([`HttpConfig`]); a malformed id never reaches the store.
//! - [`Scope`]: one request's lazily opened session. [`Scope::session`] is
//!   what the handler's extractors hold ([`RequestSession`]); nothing touches
//!   the store until one of them is used. [`Scope::finish`] applies the
//!   commit rules once the response's status is known and says which
//!   headers to add ([`Finish`]); dropping a scope unfinished (panic, client
//!   gone) releases the lock and writes nothing.
//! - Early release: [`RequestSession::commit_now`] commits the session in
//!   the middle of the handler and releases its lock (PHP's
//!   `session_write_close`), [`RequestSession::rollback`] releases it
//!   writing nothing; afterwards reads see the committed (or stored) data,
//!   changes fail with [`Error::Released`](cloakroom_core::Error::Released),
//!   and [`Scope::finish`] writes nothing more but still sends the id of a
//!   session the early commit created.
//! - The cookie follows the session's stored expiry: `Max-Age` is that
//!   expiry minus now, from the manager's timeouts or the session's own
//!   [`Expiry`](cloakroom_core::Expiry) ("remember me"); a session set to
//!   `Expiry::OnBrowserClose` gets no `Max-Age` (see [`CookieLifetime`]).
//! - [`Reply`]: the status a session error answers with (`503` +
//!   `Retry-After` for a lock timeout or an unavailable store, `409` for an
//!   optimistic conflict, `500` otherwise).
//! - [`Finish::conflict`] and [`replayable`]: what an integration needs to
//!   run a safe, body-less request again when its commit conflicts.
//! - [`session_methods!`], [`reader_methods!`], [`cookie_setters!`]: the
//!   handler-facing API, so every integration has the same methods.
//!
//! An integration over plain `http` types, in full:
//!
//! ```
//! use std::sync::Arc;
//! use cloakroom_core::{Manager, MemoryStore, Namespace};
//! use cloakroom_http::{HttpConfig, Scope};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = Manager::builder(Arc::new(MemoryStore::new()), Namespace::new("doc")?).build()?;
//! let config = HttpConfig::default();
//!
//! // Before the handler: parse the offered id (no store call).
//! let request = http::Request::new(());
//! let scope = Scope::new(manager, &config, request.headers());
//!
//! // The handler: the first access opens and locks the session.
//! let session = scope.session();
//! let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
//! session.insert("hits", &hits).await?;
//!
//! // After the handler: commit (or roll back on a 5xx), then set the cookie.
//! let mut response = http::Response::new(());
//! let finish = scope.finish(response.status(), &config).await;
//! assert!(finish.replace.is_none());
//! for header in finish.headers {
//!     header.apply(response.headers_mut());
//! }
//! assert!(response.headers()["set-cookie"].to_str()?.starts_with("id="));
//! # Ok(()) }
//! ```
//!
//! Session ids are bearer credentials: this crate logs at most a prefix.
#![warn(clippy::unwrap_used)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod config;
mod id;
mod macros;
mod reply;
mod request;

pub use config::{CookieConfig, CookieLifetime, HttpConfig, IdCarrier};
pub use cookie::SameSite;
/// The `http` crate whose types this crate's API uses (version 1).
pub use http;
pub use id::{HeaderWrite, Offered, RequestHeaders};
pub use reply::Reply;
pub use request::{replayable, Finish, RequestSession, Scope};

/// What the macros need, under paths that do not depend on the caller's
/// dependencies.
#[doc(hidden)]
pub mod __private {
    pub use cloakroom_core::{Expiry, Principal, SessionId, Timestamp};
    pub use serde::de::DeserializeOwned;
    pub use serde::Serialize;
}
