//! `/metrics` after a scripted run: the lock-wait histogram counts every
//! locked open and the timeout counter every open that gave up. A test
//! binary of its own, because the Prometheus recorder is process-global.

use std::sync::Arc;
use std::time::Duration;

use cloakroom::{Manager, Namespace, SessionId};
use cloakroom_demo::{app, lossy_manager, with_metrics, Sessions};

const TABS: usize = 6;
const LOADS: usize = 5;

/// The value of the sample `name{labels…}` whose labels include `namespace`.
fn sample(text: &str, name: &str, namespace: &str) -> Option<f64> {
    let wanted = format!("namespace=\"{namespace}\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&wanted))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_lock_waits_and_timeouts() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    cloakroom::telemetry::describe_metrics();

    let store = cloakroom::open("memory:").await.unwrap();
    let namespace = Namespace::new(&format!("metrics-{}", &SessionId::generate().as_str()[..12])).unwrap();
    // A short wait, so that a request behind /slow (300 ms) times out.
    let manager = Manager::builder(Arc::clone(&store), namespace.clone())
        .lock_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let sessions = Sessions::new(manager, lossy_manager(Arc::clone(&store)).unwrap()).secure(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, with_metrics(app(sessions), handle)).await });
    let base = format!("http://{addr}");
    let browser = reqwest::Client::builder().cookie_store(true).build().unwrap();

    // The first visit creates the session: no id yet, so no lock to wait for.
    assert!(browser
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    // Six tabs, five loads each: every one opens the session under its lock.
    let tabs = (0..TABS).map(|_| {
        let (browser, base) = (browser.clone(), base.clone());
        tokio::spawn(async move {
            for _ in 0..LOADS {
                let response = browser.get(format!("{base}/")).send().await.unwrap();
                assert!(response.status().is_success(), "{}", response.status());
            }
        })
    });
    for tab in tabs.collect::<Vec<_>>() {
        tab.await.unwrap();
    }
    // One slow page holds the lock for 300 ms; a load behind it gives up
    // after 100 ms with 503.
    let slow = tokio::spawn({
        let (browser, base) = (browser.clone(), base.clone());
        async move { browser.get(format!("{base}/slow")).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let behind = browser.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(behind.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    assert!(slow.await.unwrap().is_success());

    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ns = namespace.as_str();
    let locked_opens = (TABS * LOADS + 1) as f64; // the tabs, then /slow
    assert_eq!(
        sample(&text, "cloakroom_lock_wait_seconds_count", ns),
        Some(locked_opens),
        "lock-wait histogram count:\n{text}"
    );
    assert_eq!(
        sample(&text, "cloakroom_lock_timeouts_total", ns),
        Some(1.0),
        "timeouts:\n{text}"
    );
    assert!(
        text.contains("cloakroom_store_operation_seconds") && text.contains("backend=\"memory\""),
        "store operations are measured by backend:\n{text}"
    );
    assert_eq!(
        sample(&text, "cloakroom_leases_lost_total", ns),
        Some(0.0),
        "no lease was lost: the counter is there, at zero:\n{text}"
    );
}
