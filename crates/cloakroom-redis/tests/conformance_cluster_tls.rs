//! The whole cloakroom conformance suite against a TLS-only Redis Cluster
//! (`CLOAKROOM_REDIS_CLUSTER_TLS_URL`, default
//! `rediss+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102?tls_ca=$CLOAKROOM_TLS_DIR/ca.pem`;
//! start it with `scripts/redis-cluster.sh start tls`). Every connection is
//! TLS: to the seeds, to the nodes the Cluster client learns of, and the
//! waiters' blocking ones.
#![cfg(feature = "tls")]

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_redis::RedisStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::RedisClusterTls, RedisStore::from_url).await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
