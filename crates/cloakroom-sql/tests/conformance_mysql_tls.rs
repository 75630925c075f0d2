//! The whole cloakroom conformance suite against mysql over TLS, the
//! certificate verified against the test CA and the host name checked
//! (`CLOAKROOM_MYSQL_TLS_URL`, default
//! `mysql://root@localhost:3306/test?ssl-mode=VERIFY_IDENTITY&ssl-ca=$CLOAKROOM_TLS_DIR/ca.pem`;
//! start it with `scripts/tls-servers.sh start`). All cases share one table;
//! each works in its own namespace.
#![cfg(all(feature = "mysql", feature = "tls"))]

use std::sync::Arc;

use cloakroom_conformance::support::{connect, Server};
use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sql::MysqlStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    connect(Server::MysqlTls, MysqlStore::from_url).await
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
