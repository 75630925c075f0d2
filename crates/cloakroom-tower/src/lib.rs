//! Tower layer and axum extractors for [cloakroom](https://docs.rs/cloakroom)
//! sessions. With the `cloakroom` crate's `axum` feature this crate is
//! `cloakroom::axum`.
//!
//! - [`SessionLayer`] puts a lazily opened session into every request and
//!   finishes it when the response is ready: save if changed, touch if due,
//!   always unlock — also on error, panic or a dropped connection.
//! - [`Session`] is the handler's handle: the first access opens the
//!   session and, under the default `Serialized` policy, takes its lock for
//!   the rest of the request, so five or six tabs of one visitor never lose
//!   each other's updates. A handler that never touches it costs no store
//!   call and takes no lock. [`Session::cycle_id`] on login,
//!   [`Session::delete`] on logout.
//! - [`SessionReader`] reads without ever locking, for pages that only show.
//!
//! Beyond `get`/`insert`/`remove`, the handle has:
//!
//! - [`Session::set_expiry`]: an expiry of this session's own, stored with
//!   it — `Expiry::OnInactivity(30 days)` for "remember me" (the cookie's
//!   `Max-Age` becomes 30 days and stays so on later requests),
//!   `Expiry::OnBrowserClose` for a cookie without `Max-Age`, `None` for the
//!   manager's default. [`Session::expiry`], [`Session::created`],
//!   [`Session::accessed`] and [`Session::expires`] read the times.
//! - [`Session::set_principal`] on login, so the manager can list a user's
//!   sessions and end them all ([`Session::principal`] reads it).
//! - [`Session::flush`]: delete the session and go on with a fresh, empty
//!   one in the same request ("log out, keep the cart").
//! - [`Session::commit_now`]: commit now and release the lock before a long
//!   operation (PHP's `session_write_close`), so the visitor's other
//!   requests are not kept waiting; reads still work afterwards, changes
//!   fail with `Error::Released`. [`Session::rollback`] releases early
//!   without writing.
//!
//! ```no_run
//! use axum::{routing::{get, post}, Router};
//! use cloakroom_tower::{Session, SessionError, SessionLayer, SessionReader};
//!
//! async fn count(session: Session) -> Result<String, SessionError> {
//!     let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
//!     session.insert("hits", &hits).await?;
//!     Ok(format!("{hits} hits"))
//! }
//!
//! async fn show(reader: SessionReader) -> Result<String, SessionError> {
//!     Ok(format!("{} hits so far", reader.get::<u64>("hits").await?.unwrap_or(0)))
//! }
//!
//! async fn login(session: Session) -> Result<&'static str, SessionError> {
//!     session.cycle_id().await?; // a new id for new privileges
//!     session.insert("user", "ann").await?;
//!     Ok("welcome")
//! }
//!
//! async fn logout(session: Session) -> Result<&'static str, SessionError> {
//!     session.delete().await?; // the response clears the cookie
//!     Ok("bye")
//! }
//!
//! # fn app(manager: cloakroom_core::Manager) -> Router {
//! Router::new()
//!     .route("/", get(count))
//!     .route("/peek", get(show))
//!     .route("/login", post(login))
//!     .route("/logout", post(logout))
//!     .layer(SessionLayer::new(manager))
//! # }
//! ```
//!
//! The id travels in a cookie (secure defaults: `HttpOnly`, `Secure`,
//! `SameSite=Lax`, `Path=/`; see [`CookieConfig`]) or in a header
//! ([`SessionLayer::id_header`]). An id that is malformed — too long, wrong
//! alphabet, a path — never reaches the store; the request simply gets a
//! fresh session if it uses one. An unknown id gets a fresh session with a
//! new id, never the one offered.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::post, Router};
//! use cloakroom_core::{Expiry, Principal};
//! use cloakroom_tower::{Session, SessionError, SessionLayer};
//!
//! async fn login(session: Session) -> Result<&'static str, SessionError> {
//!     session.cycle_id().await?;
//!     session.set_principal(Some(Principal::new("ann")?)).await?;
//!     // "Remember me": this session lasts 30 days unused, cookie included.
//!     session
//!         .set_expiry(Some(Expiry::OnInactivity(Duration::from_secs(30 * 86_400))))
//!         .await?;
//!     Ok("welcome")
//! }
//!
//! async fn report(session: Session) -> Result<String, SessionError> {
//!     let user: Option<String> = session.get("user").await?;
//!     session.insert("report", "started").await?;
//!     // Saved and unlocked now: the visitor's other tabs go on meanwhile.
//!     session.commit_now().await?;
//!     let report = format!("a long report for {user:?}"); // slow work here
//!     Ok(report)
//! }
//!
//! # fn app(manager: cloakroom_core::Manager) -> Router {
//! Router::new()
//!     .route("/login", post(login))
//!     .route("/report", post(report))
//!     .layer(SessionLayer::new(manager))
//! # }
//! ```
//!
//! Under `Policy::Optimistic` a request whose session another request saved
//! first answers `409 Conflict`; [`SessionLayer::retry_conflicts`] runs
//! safe, body-less requests (`GET`, `HEAD`, `OPTIONS`) again instead.
//!
//! The rules — id parsing, cookie attributes, when to commit or roll back,
//! which status an error answers with — live in
//! [`cloakroom-http`](cloakroom_http), shared with `cloakroom-actix`.
//!
//! Session ids are bearer credentials: this crate logs at most a prefix.
#![warn(clippy::unwrap_used)]

mod config;
mod error;
mod extract;
mod layer;

pub use cloakroom_http::{CookieConfig, CookieLifetime, IdCarrier, SameSite};
pub use config::{default_lock_timeout_response, LockTimeoutResponder};
pub use error::{MissingSessionLayer, SessionError};
#[allow(deprecated)]
pub use extract::LazySession;
pub use extract::{Session, SessionReader};
pub use layer::{RetryingSessionLayer, RetryingSessionService, SessionLayer, SessionService};
