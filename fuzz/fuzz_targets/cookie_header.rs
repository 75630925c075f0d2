//! Arbitrary Cookie header bytes through the real session layer: never a
//! panic, never a 5xx, and whatever the header holds, the handler gets a
//! session (a fresh one unless the header named a live session).
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request};
use axum::routing::get;
use axum::Router;
use cloakroom_core::{Manager, MemoryStore, Namespace};
use cloakroom_tower::{LazySession, SessionError, SessionLayer};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

async fn touch(session: LazySession) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0);
    session.insert("n", &(n + 1)).await?;
    Ok(n.to_string())
}

fn app() -> &'static (tokio::runtime::Runtime, Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let store = Arc::new(MemoryStore::new());
        let manager = Manager::new(store, Namespace::new("fuzz").expect("ns"));
        let router = Router::new().route("/", get(touch)).layer(SessionLayer::new(manager));
        (rt, router)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = header::HeaderValue::from_bytes(data) else { return };
    let (rt, router) = app();
    let request = Request::builder()
        .uri("/")
        .header(header::COOKIE, value.clone())
        .header(header::COOKIE, value)
        .body(Body::empty())
        .expect("request");
    let response = rt.block_on(router.clone().oneshot(request)).expect("infallible");
    assert!(!response.status().is_server_error(), "{:?} for cookie {data:?}", response.status());
});
