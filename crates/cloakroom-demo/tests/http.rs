//! The demo over HTTP with a real client, once per backend. Each backend
//! module runs the whole suite; server backends are skipped when unreachable
//! (with the command that starts them) unless `CLOAKROOM_REQUIRE_BACKENDS=1`.
//!
//! `cargo test -p cloakroom-demo --test http -- --nocapture six_tabs` prints
//! the six-tab transcript.

mod suite;
mod support;

macro_rules! backend_suite {
    ($backend:ident, $url:expr) => {
        mod $backend {
            backend_suite!(@case $url; six_tabs, lookers_leave_no_rows, unused_session_costs_nothing,
                panic_releases_the_lock, cookie_attributes, malformed_cookies_get_a_fresh_session,
                login_cycles_the_id, logout_clears_the_cookie, experiment_counters);
        }
    };
    (@case $url:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let url: Option<String> = $url;
                if let Some(url) = url {
                    crate::suite::$case(&url).await;
                }
            }
        )*
    };
}

backend_suite!(memory, Some("memory:".to_owned()));

backend_suite!(file, Some(crate::support::file_store_url()));
#[cfg(feature = "sqlite")]
backend_suite!(sqlite, Some(crate::support::sqlite_store_url()));
#[cfg(feature = "postgres")]
backend_suite!(
    postgres,
    crate::support::server_url(cloakroom_conformance::support::Server::Postgres).await
);
#[cfg(feature = "mysql")]
backend_suite!(
    mysql,
    crate::support::server_url(cloakroom_conformance::support::Server::Mysql).await
);
backend_suite!(
    redis,
    crate::support::server_url(cloakroom_conformance::support::Server::Redis).await
);
backend_suite!(
    redis_cluster,
    crate::support::server_url(cloakroom_conformance::support::Server::RedisCluster).await
);

/// The control: the same tabs without a lock lose hits, so `six_tabs`
/// passing means the lock works, not that the test cannot fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lock_tabs_lose_hits() {
    let lost = suite::tabs_without_lock("memory:").await;
    assert!(
        lost > 0,
        "the unlocked control lost no hit: the six-tab test could not tell"
    );
}

/// The page's experiment has something to show: on the stores a visitor of
/// the demo starts with, the unlocked counter loses updates under the same
/// load that the locked one counts exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_without_the_lock_loses_updates_in_memory() {
    let lost = suite::experiment_counters("memory:").await;
    assert!(
        lost > 0,
        "the lossy counter lost nothing: the experiment shows no difference"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experiment_without_the_lock_loses_updates_on_sqlite() {
    let lost = suite::experiment_counters(&support::sqlite_store_url()).await;
    assert!(
        lost > 0,
        "the lossy counter lost nothing: the experiment shows no difference"
    );
}
