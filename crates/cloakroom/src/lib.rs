//! Server-side web sessions with real per-session locking on every backend.
//!
//! This is the crate applications depend on. It re-exports the core API
//! ([`Manager`], [`Session`], [`SessionStore`], …) and each backend behind a
//! Cargo feature, and opens a store from a URL with [`open`], so the backend
//! can be chosen per deployment.
//!
//! | scheme | feature | backend |
//! |---|---|---|
//! | `memory:` | (always) | [`MemoryStore`], one process only |
//! | `file:///dir` | `file` | one file per session, `flock` locks |
//! | `sqlite:///path.db` | `sqlite` | SQLite with lease rows (embedded default) |
//! | `postgres://…` | `postgres` | Postgres row locks |
//! | `mysql://…` | `mysql` | MySQL/MariaDB row locks |
//! | `redis://…` | `redis` | Redis `SET NX PX` token locks, Cluster-ready |
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> cloakroom::Result<()> {
//! let store = cloakroom::open("memory:").await?;
//! let manager = cloakroom::Manager::new(store, cloakroom::Namespace::new("shop")?)?;
//! let mut session = manager.open(None).await?;
//! session.insert("hits", &1u64)?;
//! session.commit().await?;
//! # Ok(()) }
//! ```

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

/// The URL schemes [`open`] knows, whether or not their feature is on.
pub const SCHEMES: &[&str] = &[
    "memory",
    "file",
    "sqlite",
    "postgres",
    "postgresql",
    "mysql",
    "mariadb",
    "redis",
    "redis+cluster",
];

/// Open the store a URL names, creating its schema if needed (see
/// [`SessionStore::migrate`]).
///
/// The scheme picks the backend (table in the crate docs). A known scheme
/// whose Cargo feature is off is [`Error::Unsupported`] naming the feature;
/// an unknown scheme or a malformed URL is [`Error::Config`]. Credentials in
/// the URL never appear in the error.
pub async fn open(url: &str) -> Result<Arc<dyn SessionStore>> {
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(Error::Config(format!(
            "a store URL starts with a scheme, one of: {}",
            SCHEMES.join(", ")
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    let store: Arc<dyn SessionStore> = match scheme.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        #[cfg(feature = "file")]
        "file" => Arc::new(cloakroom_file::FileStore::from_url(url)?),
        #[cfg(feature = "sqlite")]
        "sqlite" => Arc::new(cloakroom_sqlite::SqliteStore::from_url(url)?),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Arc::new(cloakroom_sql::PostgresStore::from_url(url).await?),
        #[cfg(feature = "mysql")]
        "mysql" | "mariadb" => Arc::new(cloakroom_sql::MysqlStore::from_url(url).await?),
        #[cfg(feature = "redis")]
        "redis" | "rediss" | "redis+cluster" => Arc::new(cloakroom_redis::RedisStore::from_url(url).await?),
        other => return Err(not_compiled_in(other)),
    };
    store.migrate().await?;
    Ok(store)
}

fn not_compiled_in(scheme: &str) -> Error {
    let feature = match scheme {
        "file" => "file",
        "sqlite" => "sqlite",
        "postgres" | "postgresql" => "postgres",
        "mysql" | "mariadb" => "mysql",
        "redis" | "rediss" | "redis+cluster" => "redis",
        _ => {
            return Error::Config(format!(
                "unknown store scheme {scheme:?}; expected one of: {}",
                SCHEMES.join(", ")
            ))
        }
    };
    Error::Unsupported(format!(
        "the {feature} backend is not compiled in; enable the `{feature}` feature of the cloakroom crate"
    ))
}

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

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_scheme_whose_feature_is_off_names_the_feature() {
        match open("redis://127.0.0.1:6379").await {
            Err(Error::Unsupported(msg)) => assert!(msg.contains("`redis` feature"), "{msg}"),
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }
}
