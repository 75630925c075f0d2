//! Server-side web sessions with real per-session locking on every backend.
//!
//! This is the crate applications depend on, in one line:
//!
//! ```toml
//! cloakroom = { version = "0.1", features = ["sqlite", "axum"] }   # or "actix"
//! ```
//!
//! It re-exports the core API ([`Manager`], [`Session`], [`SessionStore`], …),
//! each backend behind a Cargo feature, and the web integrations
//! (modules `axum` and `actix`, each behind the feature of that name), and
//! opens a store from a URL with [`open`], so the backend can be
//! chosen per deployment.
//!
//! | scheme | feature | backend |
//! |---|---|---|
//! | `memory:` | (always) | [`MemoryStore`], one process only |
//! | `file:///dir` | `file` | one file per session, lease locks in lock files |
//! | `sqlite:///path.db` | `sqlite` | SQLite with lease rows (embedded default) |
//! | `postgres://…` | `postgres` | Postgres row locks |
//! | `mysql://…` | `mysql` | MariaDB (MySQL protocol) row locks |
//! | `redis://…` | `redis` | Redis `SET NX PX` token locks, Cluster-ready |
//!
//! | feature | module | what |
//! |---|---|---|
//! | `axum` | `cloakroom::axum` | tower `SessionLayer` and axum extractors `Session`, `SessionReader` |
//! | `actix` | `cloakroom::actix` | actix-web `SessionMiddleware` and extractors `Session`, `SessionReader` |
//! | `tls` | — | TLS to Postgres, MySQL and Redis (rustls, no OpenSSL) |
//! | `full` | — | every backend and `tls` |
//!
//! Outside a web framework, a session is opened, changed and committed by
//! hand (the web integrations do exactly this around each request):
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cloakroom::Result<()> {
//! let store = cloakroom::open("memory:").await?;
//! let manager = cloakroom::Manager::new(store, cloakroom::Namespace::new("shop")?);
//! let mut session = manager.open(None).await?;   // no id yet: a fresh session
//! session.insert("hits", &1u64)?;
//! let id = session.id().clone();                 // what the cookie carries
//! session.commit().await?;                       // save + unlock
//!
//! let mut again = manager.open(Some(&id)).await?; // locks this session until commit/drop
//! assert_eq!(again.get::<u64>("hits")?, Some(1));
//! again.insert("hits", &2u64)?;
//! again.commit().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::sync::Arc;

pub use cloakroom_core::*;

#[cfg(feature = "file")]
pub use cloakroom_file as file;
#[cfg(feature = "redis")]
pub use cloakroom_redis as redis;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub use cloakroom_sql as sql;
#[cfg(feature = "sqlite")]
pub use cloakroom_sqlite as sqlite;

/// Sessions in axum (and any tower stack): the [`cloakroom-tower`](https://docs.rs/cloakroom-tower)
/// crate. Put a [`SessionLayer`](axum::SessionLayer) on the router and take
/// a [`Session`](axum::Session) (locks on first use) or a
/// [`SessionReader`](axum::SessionReader) (never locks) in handlers.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use cloakroom::axum::{Session, SessionError, SessionLayer};
///
/// async fn hits(session: Session) -> Result<String, SessionError> {
///     let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
///     session.insert("hits", &hits).await?;
///     Ok(format!("{hits} hits"))
/// }
///
/// # fn app(manager: cloakroom::Manager) -> Router {
/// Router::new().route("/", get(hits)).layer(SessionLayer::new(manager))
/// # }
/// ```
#[cfg(feature = "axum")]
pub mod axum {
    #[doc(inline)]
    pub use cloakroom_tower::*;
}

/// Sessions in actix-web: the [`cloakroom-actix`](https://docs.rs/cloakroom-actix)
/// crate. Wrap the app in a [`SessionMiddleware`](actix::SessionMiddleware)
/// and take a [`Session`](actix::Session) (locks on first use) or a
/// [`SessionReader`](actix::SessionReader) (never locks) in handlers.
///
/// ```no_run
/// use actix_web::{web, App, HttpServer};
/// use cloakroom::actix::{Session, SessionError, SessionMiddleware};
///
/// async fn hits(session: Session) -> Result<String, SessionError> {
///     let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
///     session.insert("hits", &hits).await?;
///     Ok(format!("{hits} hits"))
/// }
///
/// # async fn run(manager: cloakroom::Manager) -> std::io::Result<()> {
/// HttpServer::new(move || {
///     App::new()
///         .wrap(SessionMiddleware::new(manager.clone()))
///         .route("/", web::get().to(hits))
/// })
/// .h1_allow_half_closed(false) // drop (and unlock) requests whose client went away
/// .bind("127.0.0.1:8080")?
/// .run()
/// .await
/// # }
/// ```
#[cfg(feature = "actix")]
pub mod actix {
    #[doc(inline)]
    pub use cloakroom_actix::*;
}

/// One line per backend: with its feature on, the backend's opener; with it
/// off, its schemes, so that opening one names the feature to turn on.
macro_rules! builtin {
    ($registry:ident, $feature:literal, $schemes:expr, $opener:path) => {
        #[cfg(feature = $feature)]
        $registry.register($opener);
        #[cfg(not(feature = $feature))]
        $registry.register_missing($schemes, $feature);
    };
}

/// Every backend compiled into this build, by URL scheme (table in the crate
/// docs). A third-party backend adds its own [`Opener`]:
///
/// ```
/// # fn open_mine(_: &cloakroom::StoreUrl) -> cloakroom::Result<std::sync::Arc<dyn cloakroom::SessionStore>> {
/// #     Ok(std::sync::Arc::new(cloakroom::MemoryStore::new()))
/// # }
/// const MINE: cloakroom::Opener = cloakroom::Opener { schemes: &["mine"], open: open_mine };
///
/// let registry = cloakroom::registry().with(MINE);
/// assert!(registry.schemes().contains(&"mine"));
/// ```
pub fn registry() -> Registry {
    let mut registry = Registry::new().with(cloakroom_core::registry::MEMORY);
    // One line per backend (braces keep rustfmt from folding them).
    builtin! { registry, "file", &["file"], cloakroom_file::OPENER }
    builtin! { registry, "sqlite", &["sqlite"], cloakroom_sqlite::OPENER }
    builtin! { registry, "postgres", &["postgres", "postgresql"], cloakroom_sql::postgres::OPENER }
    builtin! { registry, "mysql", &["mysql", "mariadb"], cloakroom_sql::mysql::OPENER }
    builtin! { registry, "redis", &["redis", "rediss", "redis+cluster", "rediss+cluster"], cloakroom_redis::OPENER }
    registry
}

/// Open the store a URL names with the built-in backends ([`registry()`]),
/// and create its schema if needed (see [`SessionStore::migrate`]).
///
/// A known scheme whose Cargo feature is off is [`Error::Unsupported`] naming
/// the feature; an unknown scheme, an unknown option or a malformed URL is
/// [`Error::Config`]; a server that does not answer is
/// [`Error::Unavailable`]. Credentials in the URL never appear in an error.
pub async fn open(url: &str) -> Result<Arc<dyn SessionStore>> {
    open_with(&registry(), url).await
}

/// [`open`] with the backends of `registry` (a third-party backend's scheme,
/// say).
pub async fn open_with(registry: &Registry, url: &str) -> Result<Arc<dyn SessionStore>> {
    let store = registry.open(url)?;
    store.migrate().await?;
    Ok(store)
}

/// The README's code blocks, compiled (and run, unless `no_run`) as
/// doctests: by `cargo test --workspace`, whose build has the features they
/// need, or `cargo test -p cloakroom --all-features --doc`.
#[cfg(all(doctest, feature = "axum", feature = "actix", feature = "sqlite"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_scheme_opens_a_working_store() {
        let store = open("memory:").await.unwrap();
        assert!(!store.capabilities().multi_process);
    }

    #[tokio::test]
    async fn unknown_scheme_and_missing_scheme_are_config_errors() {
        for url in ["ftp://x", "no-scheme-here", ""] {
            assert!(matches!(open(url).await, Err(Error::Config(_))), "{url}");
        }
    }

    #[tokio::test]
    async fn every_builtin_scheme_is_listed_or_names_its_feature() {
        let registry = registry();
        for scheme in [
            "memory",
            "file",
            "sqlite",
            "postgres",
            "postgresql",
            "mysql",
            "mariadb",
            "redis",
            "redis+cluster",
        ] {
            let outcome = registry.open(&format!("{scheme}://127.0.0.1:1/x"));
            assert!(
                !matches!(&outcome, Err(Error::Config(m)) if m.contains("unknown store scheme")),
                "{scheme}: {outcome:?}"
            );
        }
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_scheme_whose_feature_is_off_names_the_feature() {
        match open("redis://127.0.0.1:6379").await {
            Err(Error::Unsupported(msg)) => assert!(msg.contains("`redis` feature"), "{msg}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
