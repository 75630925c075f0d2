//! The memory store runs the whole contract, like every other backend.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, Unreachable};
use cloakroom_core::{MemoryStore, SessionStore};

async fn memory() -> Result<Arc<dyn SessionStore>, Unreachable> {
    Ok(Arc::new(MemoryStore::new()))
}

conformance_tests!(memory);
