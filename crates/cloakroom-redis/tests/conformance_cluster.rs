//! The cloakroom conformance suite against a Redis Cluster
//! (`CLOAKROOM_REDIS_CLUSTER_URL`, default `redis://127.0.0.1:7000`; start
//! one with `scripts/redis-cluster.sh start`).

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_redis::{RedisConfig, RedisStore};

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let url =
        std::env::var("CLOAKROOM_REDIS_CLUSTER_URL").unwrap_or_else(|_| "redis://127.0.0.1:7000".into());
    let connected = match RedisConfig::from_url(&url) {
        Ok(config) => RedisStore::connect(config.into_cluster()).await,
        Err(e) => Err(e),
    };
    match connected {
        Ok(store) => Ok(Arc::new(store)),
        Err(e) => Err(Unreachable::new(
            "redis cluster",
            e.to_string(),
            "scripts/redis-cluster.sh start",
        )),
    }
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
