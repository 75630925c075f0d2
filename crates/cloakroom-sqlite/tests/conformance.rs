//! The whole contract suite on a SQLite store in a fresh temporary database.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sqlite::SqliteStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    store_at(&temp_db()?).await
}

/// Two stores on one database file: nothing shared but the file.
async fn pair() -> Result<StorePair, Unreachable> {
    let path = temp_db()?;
    Ok((store_at(&path).await?, store_at(&path).await?))
}

fn unreachable(e: impl ToString) -> Unreachable {
    Unreachable::new("sqlite", e.to_string(), "a writable temp dir")
}

fn temp_db() -> Result<PathBuf, Unreachable> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(unreachable)?;
    // Kept for the whole run, under the build directory (cargo clean removes it).
    Ok(dir.keep().join("sessions.db"))
}

async fn store_at(path: &Path) -> Result<Arc<dyn SessionStore>, Unreachable> {
    let store = SqliteStore::open(path).map_err(unreachable)?;
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(store))
}

conformance_tests!(store);
two_instance_tests!(pair);
