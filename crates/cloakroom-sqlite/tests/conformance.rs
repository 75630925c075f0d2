//! The whole contract suite on a SQLite store in a fresh temporary database.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sqlite::SqliteStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let unreachable = |e: String| Unreachable::new("sqlite", e, "a writable temp dir");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(|e| unreachable(e.to_string()))?;
    // Kept for the whole run, under the build directory (cargo clean removes it).
    let path = dir.keep().join("sessions.db");
    let store = SqliteStore::open(path).map_err(|e| unreachable(e.to_string()))?;
    store.migrate().await.map_err(|e| unreachable(e.to_string()))?;
    Ok(Arc::new(store))
}

conformance_tests!(store);
