//! The shared HTTP suite (`cloakroom-http-suite`) against the tower layer
//! in an axum app: every case on every backend. This file is the axum
//! side of the suite's route table; `cloakroom-actix` has the same for
//! actix-web.

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use cloakroom_core::{Expiry, Principal};
use cloakroom_http_suite::{routes, Framework, Manager, Probe, Running, Setup};
use cloakroom_tower::{Session, SessionError, SessionLayer, SessionReader};
use tower_http::catch_panic::CatchPanicLayer;

/// The axum test app.
pub struct Axum;

async fn bump(session: Session, hold: Duration) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    session.insert("n", &n).await?;
    Ok(n.to_string())
}

async fn hang(session: Session) -> Result<String, SessionError> {
    session.insert("n", &1000u64).await?;
    tokio::time::sleep(routes::HANG_FOR).await;
    Ok("never".into())
}

async fn read(reader: SessionReader) -> Result<String, SessionError> {
    Ok(reader.get::<u64>("n").await?.unwrap_or(0).to_string())
}

async fn user(reader: SessionReader) -> Result<String, SessionError> {
    Ok(reader.get::<String>("user").await?.unwrap_or_default())
}

async fn fail(session: Session) -> (StatusCode, &'static str) {
    let _ = session.insert("n", &999u64).await;
    (StatusCode::INTERNAL_SERVER_ERROR, "handler failed")
}

async fn panics(session: Session) -> Result<String, SessionError> {
    session.insert("n", &999u64).await?;
    panic!("{} panics on purpose, holding the session", routes::PANIC);
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session.id().await?.as_str().to_owned())
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.cycle_id().await?;
    session.insert("user", "ann").await?;
    Ok("ok")
}

async fn logout(session: Session) -> Result<String, SessionError> {
    Ok(session.delete().await?.to_string())
}

async fn logout_flash(session: Session) -> Result<&'static str, SessionError> {
    session.delete().await?;
    session.insert("flash", "bye").await?;
    Ok("ok")
}

async fn remember(session: Session) -> Result<&'static str, SessionError> {
    session
        .set_expiry(Some(Expiry::OnInactivity(routes::REMEMBER_FOR)))
        .await?;
    session.set_principal(Some(Principal::new("ann")?)).await?;
    session.insert("user", "ann").await?;
    Ok("ok")
}

async fn browser_close(session: Session) -> Result<&'static str, SessionError> {
    session.set_expiry(Some(Expiry::OnBrowserClose)).await?;
    session.insert("user", "ann").await?;
    Ok("ok")
}

async fn about(session: Session) -> Result<String, SessionError> {
    let principal = session.principal().await?;
    Ok(routes::about(
        principal.as_ref(),
        session.expiry().await?,
        session.expires().await?,
    ))
}

async fn release(session: Session, probe: Probe) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", &n).await?;
    session.commit_now().await?;
    probe.released.open();
    probe.proceed.wait().await;
    let after: u64 = session.get("n").await?.unwrap_or(0);
    let late = session.insert("late", &1u8).await;
    Ok(format!(
        "{after} {}",
        routes::late_outcome(late.as_ref().map(|_| ()).map_err(SessionError::inner))
    ))
}

async fn rollback(session: Session, probe: Probe) -> Result<String, SessionError> {
    session.insert("n", &999u64).await?;
    session.rollback().await?;
    let after: u64 = session.get("n").await?.unwrap_or(0);
    probe.released.open();
    probe.proceed.wait().await;
    let late = session.insert("late", &1u8).await;
    Ok(format!(
        "{after} {}",
        routes::late_outcome(late.as_ref().map(|_| ()).map_err(SessionError::inner))
    ))
}

async fn flush(session: Session) -> Result<String, SessionError> {
    Ok(session.flush().await?.to_string())
}

async fn flush_keep(session: Session) -> Result<&'static str, SessionError> {
    session.flush().await?;
    session.insert("user", "guest").await?;
    Ok("ok")
}

async fn race(session: Session, manager: Manager, probe: Probe) -> Result<String, SessionError> {
    probe.race_run();
    let n: u64 = session.get("n").await?.unwrap_or(0);
    if !session.get::<bool>("raced").await?.unwrap_or(false) {
        routes::save_meanwhile(&manager, &session.id().await?).await?;
    }
    session.insert("n", &(n + 1)).await?;
    Ok((n + 1).to_string())
}

/// The routes; `manager` and `probe` are the app's, for the routes that
/// use them.
fn app(manager: Manager, probe: Probe) -> Router {
    let (p1, p2) = (probe.clone(), probe.clone());
    let race = move |s: Session| race(s, manager.clone(), probe.clone());
    Router::new()
        .route(routes::HEALTH, get(|| async { "ok" }))
        .route(routes::NOOP, get(|_: Session| async { "ok" }))
        .route(routes::INC, get(|s: Session| bump(s, Duration::ZERO)))
        .route(routes::SLOW, get(|s: Session| bump(s, routes::SLOW_FOR)))
        .route(routes::HOLD, get(|s: Session| bump(s, routes::HOLD_FOR)))
        .route(routes::HANG, get(hang))
        .route(routes::READ, get(read))
        .route(routes::USER, get(user))
        .route(routes::FAIL, get(fail))
        .route(routes::PANIC, get(panics))
        .route(routes::WHOAMI, get(whoami))
        .route(routes::LOGIN, post(login))
        .route(routes::LOGOUT, post(logout))
        .route(routes::LOGOUT_FLASH, post(logout_flash))
        .route(routes::REMEMBER, post(remember))
        .route(routes::BROWSER_CLOSE, post(browser_close))
        .route(routes::ABOUT, get(about))
        .route(routes::RELEASE, get(move |s: Session| release(s, p1.clone())))
        .route(routes::ROLLBACK, get(move |s: Session| rollback(s, p2.clone())))
        .route(routes::FLUSH, post(flush))
        .route(routes::FLUSH_KEEP, post(flush_keep))
        .route(routes::RACE, get(race.clone()).post(race))
}

async fn serve(app: Router) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Running::new(addr, move || task.abort())
}

impl Framework for Axum {
    async fn start(manager: Manager, setup: Setup) -> Running {
        let mut layer = SessionLayer::new(manager.clone()).http_config(setup.http);
        if setup.lock_timeout_429 {
            layer = layer.on_lock_timeout(|waited| {
                let body = format!("busy after {}ms", waited.as_millis());
                (StatusCode::TOO_MANY_REQUESTS, body).into_response()
            });
        }
        let app = app(manager, setup.probe);
        // The panic catcher sits outside the session layer, as in an app.
        match setup.retry_conflicts {
            0 => serve(app.layer(layer).layer(CatchPanicLayer::new())).await,
            n => serve(app.layer(layer.retry_conflicts(n)).layer(CatchPanicLayer::new())).await,
        }
    }

    async fn start_bare() -> Running {
        let store = std::sync::Arc::new(cloakroom_core::MemoryStore::new());
        let manager = Manager::builder(store, cloakroom_http_suite::fresh_namespace())
            .build()
            .unwrap();
        serve(app(manager, Probe::default()).layer(CatchPanicLayer::new())).await
    }
}

cloakroom_http_suite::http_suite!(crate::Axum);

/// The handle's earlier name still compiles (deprecated), as the same type.
#[test]
#[allow(deprecated)]
fn lazy_session_is_the_old_name_of_session() {
    fn same(session: cloakroom_tower::LazySession) -> Session {
        session
    }
    let _ = same;
}
