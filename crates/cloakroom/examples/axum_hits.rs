//! The axum hit counter of the README: each visitor's count, kept in their
//! session on SQLite. `cargo run -p cloakroom --example axum_hits --features
//! axum,sqlite`, then open <http://127.0.0.1:3000> in a few tabs.

use axum::{routing::get, Router};
use cloakroom::axum::{Session, SessionError, SessionLayer};
use cloakroom::{Manager, Namespace};

async fn hits(session: Session) -> Result<String, SessionError> {
    // The first access locks this visitor's session; the layer saves and
    // unlocks it once the response is ready, so no tab loses a hit.
    let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
    session.insert("hits", &hits).await?;
    Ok(format!("hits: {hits}\n"))
}

/// The app: one route behind the session layer.
pub fn app(manager: Manager) -> Router {
    Router::new()
        .route("/", get(hits))
        .layer(SessionLayer::new(manager))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = cloakroom::open("sqlite:hits.db").await?;
    let manager = Manager::new(store, Namespace::new("hits")?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("http://{}", listener.local_addr()?);
    axum::serve(listener, app(manager)).await?;
    Ok(())
}
