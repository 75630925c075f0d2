//! The cloakroom conformance suite against mysql (`CLOAKROOM_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`). All cases share one table; each works in its own namespace.
#![cfg(feature = "mysql")]

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sql::MysqlStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::Mysql, MysqlStore::from_url).await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
