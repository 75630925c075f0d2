//! The cloakroom conformance suite against mysql (`CLOAKROOM_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306/test`). All cases share one table; each works in its own namespace.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sql::MysqlStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let url =
        std::env::var("CLOAKROOM_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into());
    let unreachable = |e: cloakroom_core::Error| {
        Unreachable::new(
            "mysql",
            e.to_string(),
            "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
        )
    };
    let store = MysqlStore::from_url(&url).await.map_err(unreachable)?;
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(store))
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
