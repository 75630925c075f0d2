//! The actix-web hit counter of the README: each visitor's count, kept in
//! their session on SQLite. `cargo run -p cloakroom --example actix_hits
//! --features actix,sqlite`, then open <http://127.0.0.1:3000> in a few tabs.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};
use cloakroom::actix::{Session, SessionError, SessionMiddleware};
use cloakroom::{Manager, Namespace};

async fn hits(session: Session) -> Result<String, SessionError> {
    // The first access locks this visitor's session; the middleware saves
    // and unlocks it once the response is ready, so no tab loses a hit.
    let hits: u64 = session.get("hits").await?.unwrap_or(0) + 1;
    session.insert("hits", &hits).await?;
    Ok(format!("hits: {hits}\n"))
}

/// The app: one route behind the session middleware, served on `listener`.
pub fn server(manager: Manager, listener: TcpListener) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .wrap(SessionMiddleware::new(manager.clone()))
            .route("/", web::get().to(hits))
    })
    // A client that goes away gets its request dropped, and its session
    // unlocked at once, instead of run to the end.
    .h1_allow_half_closed(false)
    .listen(listener)?
    .run();
    Ok(server)
}

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = cloakroom::open("sqlite:hits.db").await?;
    let manager = Manager::new(store, Namespace::new("hits")?);
    let listener = TcpListener::bind("127.0.0.1:3000")?;
    println!("http://{}", listener.local_addr()?);
    server(manager, listener)?.await?;
    Ok(())
}
