//! The whole contract suite on a SQLite store in a fresh temporary database.

use std::sync::Arc;

use cloakroom_conformance::support::{InTempDir, TempDir};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::{Result, SessionStore};
use cloakroom_sqlite::{SqliteOptions, SqliteStore};

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    store_in(&temp_dir()?).await
}

/// Two stores on one database file: nothing shared but the file.
async fn pair() -> Result<StorePair, Unreachable> {
    let dir = temp_dir()?;
    Ok((store_in(&dir).await?, store_in(&dir).await?))
}

fn unreachable(e: impl ToString) -> Unreachable {
    Unreachable::new("sqlite", e.to_string(), "a writable temp dir")
}

fn temp_dir() -> Result<Arc<TempDir>, Unreachable> {
    TempDir::new("sqlite-conformance")
        .map(Arc::new)
        .map_err(unreachable)
}

async fn store_in(dir: &Arc<TempDir>) -> Result<Arc<dyn SessionStore>, Unreachable> {
    let store = SqliteStore::new(SqliteOptions::new(dir.path().join("sessions.db"))).map_err(unreachable)?;
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(InTempDir::new(store, dir.clone())))
}

conformance_tests!(store);
two_instance_tests!(pair);
