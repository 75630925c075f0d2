//! The cloakroom conformance suite against a Redis Cluster
//! (`CLOAKROOM_REDIS_CLUSTER_URL`, default `redis+cluster://127.0.0.1:7000`;
//! start one with `scripts/redis-cluster.sh start`). A plain `redis://` URL
//! of a Cluster node works too: the store is opened with the Cluster client
//! either way.

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::{SessionStore, StoreUrl};
use cloakroom_redis::{RedisOptions, RedisStore};

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::RedisCluster, |url| {
        RedisStore::new(RedisOptions::from_url(&StoreUrl::parse(url)?)?.cluster(true))
    })
    .await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
