//! The cloakroom conformance suite against one Redis node
//! (`CLOAKROOM_REDIS_URL`, default `redis://127.0.0.1:6379`).

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_redis::RedisStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::Redis, RedisStore::from_url).await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
