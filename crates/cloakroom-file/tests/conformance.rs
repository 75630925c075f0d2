//! The whole contract suite on a file store in a fresh temporary directory.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_file::{FileOptions, FileStore};

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| Unreachable::new("file", e.to_string(), "a writable temp dir"))?;
    // Kept for the whole run, under the build directory (cargo clean removes it).
    let root = dir.keep();
    // Durability off: fsync costs only time here, and atomicity (what the
    // suite checks) does not depend on it.
    let store = FileStore::with_options(FileOptions::new(root).durable(false));
    store
        .migrate()
        .await
        .map_err(|e| Unreachable::new("file", e.to_string(), "a writable temp dir"))?;
    Ok(Arc::new(store))
}

conformance_tests!(store);
