//! The README's hit counters, `examples/axum_hits.rs` and
//! `examples/actix_hits.rs`: each example's own app, on SQLite, served on
//! an ephemeral port, counts one visitor's hits with exact answers; and the
//! README shows each example's code exactly as it is.

use std::sync::Arc;
use std::time::Duration;

use cloakroom::{Manager, Namespace, SessionId};

#[allow(dead_code)]
#[path = "../examples/axum_hits.rs"]
mod axum_hits;

#[allow(dead_code)]
#[path = "../examples/actix_hits.rs"]
mod actix_hits;

/// A manager on a fresh SQLite file, as the examples' `main` makes one.
async fn manager() -> (Manager, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "cloakroom-examples-{}",
        &SessionId::generate().as_str()[..12]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = cloakroom::open(&format!("sqlite://{}", dir.join("hits.db").display()))
        .await
        .unwrap();
    let manager = Manager::builder(Arc::clone(&store), Namespace::new("hits").unwrap())
        .build()
        .unwrap();
    (manager, dir)
}

/// Three visits of one browser, then a new visitor: exact bodies, and the
/// cookie carried the whole way.
async fn visit(base: &str) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let r = client.get(base).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("id="), "{cookie}");
    assert_eq!(r.text().await.unwrap(), "hits: 1\n");
    for want in ["hits: 2\n", "hits: 3\n"] {
        let r = client.get(base).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.text().await.unwrap(), want);
    }
    let r = client.get(base).send().await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "hits: 1\n",
        "a new visitor starts at one"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_counts_hits() {
    let (manager, dir) = manager().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, axum_hits::app(manager)).await });
    visit(&base).await;
    server.abort();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actix_example_counts_hits() {
    let (manager, dir) = manager().await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = actix_hits::server(manager, listener).unwrap();
            tx.send(server.handle()).unwrap();
            server.await
        })
    });
    let handle = rx.recv().unwrap();
    visit(&base).await;
    handle.stop(false).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The body of an example: everything after its header comment.
fn body(example: &str) -> &str {
    example.split_once("\n\n").unwrap().1
}

#[test]
fn the_readme_shows_each_example_as_it_is() {
    let readme = include_str!("../README.md");
    for (name, source) in [
        ("axum_hits", include_str!("../examples/axum_hits.rs")),
        ("actix_hits", include_str!("../examples/actix_hits.rs")),
    ] {
        assert!(
            readme.contains(&format!("```rust,no_run\n{}```", body(source))),
            "README.md does not show examples/{name}.rs as it is (its code after the header comment)"
        );
    }
}
