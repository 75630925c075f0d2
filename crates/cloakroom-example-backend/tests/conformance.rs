//! The whole contract suite, run against the example store.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_example_backend::LeaseMapStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    Ok(Arc::new(
        LeaseMapStore::from_url("example:").expect("a valid URL"),
    ))
}

// Two clones share the map, which is all the storage this store has, and
// nothing else: no wake-up list or cache that could hide a broken lock.
async fn pair() -> Result<StorePair, Unreachable> {
    let store = LeaseMapStore::from_url("example:").expect("a valid URL");
    Ok((Arc::new(store.clone()), Arc::new(store)))
}

conformance_tests!(store);
two_instance_tests!(pair);
