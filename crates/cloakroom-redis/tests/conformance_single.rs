//! The cloakroom conformance suite against one Redis node
//! (`CLOAKROOM_REDIS_URL`, default `redis://127.0.0.1:6379`).

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_redis::RedisStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let url = std::env::var("CLOAKROOM_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    match RedisStore::from_url(&url).await {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(Unreachable::new(
            "redis",
            e.to_string(),
            "redis-server --daemonize yes",
        )),
    }
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
