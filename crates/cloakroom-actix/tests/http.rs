//! The shared HTTP suite (`cloakroom-http-suite`) against the actix-web
//! middleware: every case on every backend. This file is the actix-web
//! side of the suite's route table; `cloakroom-tower` has the same for
//! axum.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpResponse, HttpServer};
use cloakroom::{Expiry, Principal};
use cloakroom_actix::{Session, SessionError, SessionMiddleware, SessionReader};
use cloakroom_http_suite::{routes, Backend, Framework, Manager, Probe, Running, Setup};
use futures::FutureExt;

/// The actix-web test app.
pub struct Actix;

async fn bump(session: Session, hold: Duration) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    session.insert("n", &n).await?;
    Ok(n.to_string())
}

async fn inc(session: Session) -> Result<String, SessionError> {
    bump(session, Duration::ZERO).await
}

async fn slow(session: Session) -> Result<String, SessionError> {
    bump(session, routes::SLOW_FOR).await
}

async fn hold(session: Session) -> Result<String, SessionError> {
    bump(session, routes::HOLD_FOR).await
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

async fn fail(session: Session) -> HttpResponse {
    let _ = session.insert("n", &999u64).await;
    HttpResponse::InternalServerError().body("handler failed")
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

async fn release(session: Session, probe: web::Data<Probe>) -> Result<String, SessionError> {
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

async fn rollback(session: Session, probe: web::Data<Probe>) -> Result<String, SessionError> {
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

async fn race(
    session: Session,
    manager: web::Data<Manager>,
    probe: web::Data<Probe>,
) -> Result<String, SessionError> {
    probe.race_run();
    let n: u64 = session.get("n").await?.unwrap_or(0);
    if !session.get::<bool>("raced").await?.unwrap_or(false) {
        routes::save_meanwhile(&manager, &session.id().await?).await?;
    }
    session.insert("n", &(n + 1)).await?;
    Ok((n + 1).to_string())
}

/// The routes; the app data holds the app's `Manager` and `Probe` for the
/// routes that use them.
fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route(routes::HEALTH, web::get().to(|| async { "ok" }))
        .route(routes::NOOP, web::get().to(|_: Session| async { "ok" }))
        .route(routes::INC, web::get().to(inc))
        .route(routes::SLOW, web::get().to(slow))
        .route(routes::HOLD, web::get().to(hold))
        .route(routes::HANG, web::get().to(hang))
        .route(routes::READ, web::get().to(read))
        .route(routes::USER, web::get().to(user))
        .route(routes::FAIL, web::get().to(fail))
        .route(routes::PANIC, web::get().to(panics))
        .route(routes::WHOAMI, web::get().to(whoami))
        .route(routes::LOGIN, web::post().to(login))
        .route(routes::LOGOUT, web::post().to(logout))
        .route(routes::LOGOUT_FLASH, web::post().to(logout_flash))
        .route(routes::REMEMBER, web::post().to(remember))
        .route(routes::BROWSER_CLOSE, web::post().to(browser_close))
        .route(routes::ABOUT, web::get().to(about))
        .route(routes::RELEASE, web::get().to(release))
        .route(routes::ROLLBACK, web::get().to(rollback))
        .route(routes::FLUSH, web::post().to(flush))
        .route(routes::FLUSH_KEEP, web::post().to(flush_keep))
        .route(routes::RACE, web::get().to(race))
        .route(routes::RACE, web::post().to(race));
}

fn middleware(manager: Manager, setup: Setup) -> SessionMiddleware {
    let mut middleware = SessionMiddleware::new(manager)
        .http_config(setup.http)
        .retry_conflicts(setup.retry_conflicts);
    if setup.lock_timeout_429 {
        middleware = middleware.on_lock_timeout(|waited| {
            HttpResponse::build(StatusCode::TOO_MANY_REQUESTS)
                .body(format!("busy after {}ms", waited.as_millis()))
        });
    }
    middleware
}

/// Serve on a thread of its own (actix-web runs its own runtimes), with
/// or without the session middleware, and with or without a panic catcher
/// outside it. Client disconnects drop the request
/// (`h1_allow_half_closed(false)`, as the crate docs advise).
fn serve(sessions: Option<(Manager, Setup)>, catch_panics: bool) -> Running {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                let (manager, probe) = match &sessions {
                    Some((manager, setup)) => (manager.clone(), setup.probe.clone()),
                    None => (bare_manager(), Probe::default()),
                };
                let sessions = sessions
                    .clone()
                    .map(|(manager, setup)| middleware(manager, setup));
                App::new()
                    .app_data(web::Data::new(manager))
                    .app_data(web::Data::new(probe))
                    .configure(configure)
                    .wrap(actix_web::middleware::Condition::new(
                        sessions.is_some(),
                        sessions.unwrap_or_else(bare_middleware),
                    ))
                    .wrap_fn(move |req, srv| {
                        let call = srv.call(req);
                        async move {
                            if !catch_panics {
                                return call.await;
                            }
                            match AssertUnwindSafe(call).catch_unwind().await {
                                Ok(response) => response,
                                Err(_) => Err(actix_web::error::ErrorInternalServerError("handler panicked")),
                            }
                        }
                    })
            })
            .workers(2)
            .disable_signals()
            .h1_allow_half_closed(false)
            .listen(listener)
            .unwrap()
            .run();
            tx.send(server.handle()).unwrap();
            server.await.unwrap();
        });
    });
    let handle = rx.recv().unwrap();
    Running::new(addr, move || drop(handle.stop(false)))
}

/// A manager for the bare app, which has no session middleware.
fn bare_manager() -> Manager {
    let store = std::sync::Arc::new(cloakroom::MemoryStore::new());
    Manager::builder(store, cloakroom_http_suite::fresh_namespace())
        .build()
        .unwrap()
}

/// A middleware for the bare app's type only; `Condition` never runs it.
fn bare_middleware() -> SessionMiddleware {
    SessionMiddleware::new(bare_manager())
}

impl Framework for Actix {
    async fn start(manager: Manager, setup: Setup) -> Running {
        serve(Some((manager, setup)), true)
    }

    async fn start_bare() -> Running {
        serve(None, true)
    }
}

cloakroom_http_suite::http_suite!(crate::Actix);

/// Without a panic catcher actix-web unwinds the connection's task: the
/// client sees the connection close, and the session is dropped unfinished,
/// released at once (the lease is 60 s) with nothing written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_panic_releases_the_lock() {
    let (store, _) = Backend::Memory.open().await.unwrap();
    let manager = Manager::builder(store, cloakroom_http_suite::fresh_namespace())
        .lease(Duration::from_secs(60))
        .lock_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let running = serve(Some((manager, Setup::default())), false);
    let url = |path: &str| format!("http://{}{path}", running.addr);
    let c = cloakroom_http_suite::client();
    let r = c.get(url(routes::INC)).send().await.unwrap();
    let cookie = cloakroom_http_suite::set_cookie(&r).unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let panicked = c.get(url(routes::PANIC)).header("cookie", &cookie).send().await;
    assert!(panicked.is_err() || panicked.unwrap().status().is_server_error());
    let t = Instant::now();
    let r = c
        .get(url(routes::INC))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "waited {:?}", t.elapsed());
    assert_eq!(r.text().await.unwrap(), "2");
}
