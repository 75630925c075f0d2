//! The cloakroom conformance suite against postgres (`CLOAKROOM_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). All cases share one table; each works in its own namespace.

use std::sync::Arc;

use cloakroom_conformance::{conformance_tests, two_instance_tests, StorePair, Unreachable};
use cloakroom_core::SessionStore;
use cloakroom_sql::PostgresStore;

async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
    let url = std::env::var("CLOAKROOM_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let unreachable = |e: cloakroom_core::Error| {
        Unreachable::new(
            "postgres",
            e.to_string(),
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
        )
    };
    let store = PostgresStore::from_url(&url).await.map_err(unreachable)?;
    store.migrate().await.map_err(unreachable)?;
    Ok(Arc::new(store))
}

/// Two instances, each with its own connections: two application processes.
async fn pair() -> Result<StorePair, Unreachable> {
    cloakroom_conformance::twice(store).await
}

conformance_tests!(store);
two_instance_tests!(pair);
