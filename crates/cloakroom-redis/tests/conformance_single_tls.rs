//! The whole cloakroom conformance suite against one TLS-only Redis node,
//! the certificate verified against the test CA and the host name checked
//! (`CLOAKROOM_REDIS_TLS_URL`, default
//! `rediss://localhost:6380?tls_ca=$CLOAKROOM_TLS_DIR/ca.pem`; start it with
//! `scripts/tls-servers.sh start`). Waiters block on TLS connections too.
#![cfg(feature = "tls")]

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_redis::RedisStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::RedisTls, RedisStore::from_url).await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
