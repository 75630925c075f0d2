//! The whole conformance suite on a file store in a fresh temporary directory.

use std::sync::Arc;

use cloakroom_conformance::support::{InTempDir, TempDir};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::{Result, SessionStore};
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

fn temp_root() -> Result<Arc<TempDir>, Unreachable> {
    TempDir::new("file-conformance")
        .map(Arc::new)
        .map_err(unreachable)
}

async fn store_in(root: &Arc<TempDir>) -> Result<Arc<dyn SessionStore>, Unreachable> {
    // Durability off: fsync costs only time here, and atomicity (what the
    // suite checks) does not depend on it. One level down, so that the
    // owner files beside the root (`<root>-owners/`) are in the temp dir.
    let store =
        FileStore::new(FileOptions::new(root.path().join("sessions")).durable(false)).map_err(unreachable)?;
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(InTempDir::new(store, root.clone())))
}

conformance_tests!(store);
two_instance_tests!(pair);
