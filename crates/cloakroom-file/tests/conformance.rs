//! The whole contract suite on a file store in a fresh temporary directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_file::{FileOptions, FileStore};

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    store_in(&temp_root()?).await
}

/// Two stores on one directory: nothing shared but the files.
async fn pair() -> Result<StorePair, Unreachable> {
    let root = temp_root()?;
    Ok((store_in(&root).await?, store_in(&root).await?))
}

fn unreachable(e: impl ToString) -> Unreachable {
    Unreachable::new("file", e.to_string(), "a writable temp dir")
}

fn temp_root() -> Result<PathBuf, Unreachable> {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).map_err(unreachable)?;
    // Kept for the whole run, under the build directory (cargo clean removes it).
    Ok(dir.keep())
}

async fn store_in(root: &Path) -> Result<Arc<dyn SessionStore>, Unreachable> {
    // Durability off: fsync costs only time here, and atomicity (what the
    // suite checks) does not depend on it.
    let store = FileStore::with_options(FileOptions::new(root).durable(false));
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(store))
}

conformance_tests!(store);
two_instance_tests!(pair);
