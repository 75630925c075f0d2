//! `cloakroom-demo [--listen ADDR] [--store URL] [--insecure-cookie]`
//!
//! Starts the hit-counter app (see the library docs for its routes) on
//! `127.0.0.1:3000` with sessions in the store the URL names.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cloakroom_demo::{app, lossy_manager, manager, with_metrics, Sessions, DEFAULT_STORE};

const USAGE: &str = "usage: cloakroom-demo [--listen ADDR] [--store URL] [--insecure-cookie]

  --listen ADDR       address to serve on (default 127.0.0.1:3000)
  --store URL         session store, e.g. memory:, sqlite:cloakroom-demo.db,
                      postgres://…, mysql://…, redis://… (default: see below)
  --insecure-cookie   drop the cookie's Secure flag, for plain HTTP on a host
                      other than localhost/127.0.0.1";

struct Args {
    listen: SocketAddr,
    store: String,
    secure_cookie: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        store: DEFAULT_STORE.to_owned(),
        secure_cookie: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--listen" => {
                let value = it.next().ok_or("--listen needs an address")?;
                args.listen = value.parse().map_err(|e| format!("--listen {value}: {e}"))?;
            }
            "--store" => args.store = it.next().ok_or("--store needs a URL")?,
            "--insecure-cookie" => args.secure_cookie = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            if !msg.is_empty() {
                eprintln!("cloakroom-demo: {msg}\n");
            }
            eprintln!("{USAGE}\n  default store: {DEFAULT_STORE}");
            return if msg.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("cloakroom-demo: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| format!("installing the metrics recorder: {e}"))?;
    cloakroom::telemetry::describe_metrics();
    // The URL may carry a password: name only its scheme in messages.
    let scheme = args.store.split(':').next().unwrap_or("?").to_owned();
    let store = cloakroom::open(&args.store)
        .await
        .map_err(|e| format!("opening the {scheme} store: {e}"))?;
    let manager = manager(std::sync::Arc::clone(&store)).map_err(|e| e.to_string())?;
    // The experiment's unlocked counter: same store, its own namespace.
    let lossy = lossy_manager(store).map_err(|e| e.to_string())?;
    // Expired sessions are never served, but their rows stay until swept.
    let sweepers = [
        manager.spawn_sweeper(Duration::from_secs(600)),
        lossy.spawn_sweeper(Duration::from_secs(600)),
    ];

    let sessions = Sessions::new(manager, lossy).secure(args.secure_cookie);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("binding {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    tracing::info!(store = %scheme, "cloakroom demo on http://{addr}/");
    let served = axum::serve(listener, with_metrics(app(sessions), metrics))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string());
    for sweeper in sweepers {
        sweeper.shutdown().await;
    }
    served
}
