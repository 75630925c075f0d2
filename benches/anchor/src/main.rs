//! cloakroom beside tower-sessions (and raw Redis) on the workload of
//! `docs/BENCHMARKS.md`, measured in one run, with the ratio per backend and
//! mode.
//!
//! ```text
//! cargo run --release --manifest-path benches/anchor/Cargo.toml -- run \
//!     --memory --sqlite /tmp/anchor --postgres postgres://… --mysql mysql://… --redis redis://…
//! ```
//!
//! The modes and their options are `cloakroom bench`'s (`--mode`, by default
//! spread, burst, contention, processes). `--mode handoff` measures
//! cloakroom's lock hand-off only: tower-sessions has no lock to hand off.

mod raw_redis;
mod tower;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use cloakroom::Policy;
use cloakroom_cli::bench::{
    comparison, concurrency_label, fresh_namespace, run_plan, table, BenchResult, CloakroomTarget, Plan,
    WorkerRun,
};
use tower_sessions_sqlx_store::sqlx;

use crate::raw_redis::RawRedis;
use crate::tower::TowerTarget;

const ANCHOR: &str = "tower-sessions";
const RAW: &str = "redis-rs raw";
/// Pool size for the anchor's SQL stores: the same as cloakroom-sql's default.
const SQL_POOL: u32 = 40;
/// Clients in the anchor's fred pool.
const FRED_POOL: usize = 4;

#[derive(Debug, Parser)]
#[command(name = "cloakroom-bench-anchor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run cloakroom (Serialized) and the anchor on each backend given.
    Run(RunArgs),
    #[command(name = "__bench-worker", hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The memory stores (one process: the processes mode is skipped).
    #[arg(long)]
    memory: bool,
    /// SQLite, with its database files in this directory.
    #[arg(long, value_name = "DIR")]
    sqlite: Option<String>,
    /// Postgres URL.
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// MySQL or MariaDB URL.
    #[arg(long, value_name = "URL")]
    mysql: Option<String>,
    /// Redis URL (also runs the raw GET+SET baseline).
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    #[command(flatten)]
    plan: Plan,
    /// Print every result as a JSON line as it is measured.
    #[arg(long)]
    json: bool,
    /// Run everything this many times, alternating which library goes
    /// first, and end with the median of the per-round ratios. On a shared,
    /// noisy machine one round can be off by a third either way.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[arg(long)]
    kind: String,
    #[arg(long)]
    backend: String,
    #[arg(long)]
    url: String,
    #[arg(long)]
    namespace: String,
    #[command(flatten)]
    run: WorkerRun,
}

/// One library on one backend, as the worker processes rebuild it.
#[derive(Debug, Clone)]
struct Spec {
    kind: &'static str,
    backend: String,
    url: String,
    namespace: String,
}

impl Spec {
    fn worker_args(&self) -> Vec<String> {
        let mut args = vec!["__bench-worker".to_owned()];
        for (flag, value) in [
            ("--kind", self.kind),
            ("--backend", &self.backend),
            ("--url", &self.url),
            ("--namespace", &self.namespace),
        ] {
            args.push(format!("{flag}={value}"));
        }
        args
    }
}

async fn tower_store(backend: &str, url: &str) -> Result<TowerTarget> {
    use tower_sessions_redis_store::fred::prelude::{ClientLike, Config, Pool};
    Ok(match backend {
        "memory" => TowerTarget::new(tower_sessions::MemoryStore::default(), backend, false),
        "sqlite" => {
            // The same settings as cloakroom-sqlite's defaults, so the
            // comparison is of the libraries, not of the pragmas.
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(std::time::Duration::from_secs(5));
            let pool = sqlx::sqlite::SqlitePoolOptions::new().connect_with(opts).await?;
            let store = tower_sessions_sqlx_store::SqliteStore::new(pool);
            store.migrate().await?;
            TowerTarget::new(store, backend, true)
        }
        "postgres" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(SQL_POOL)
                .connect(url)
                .await?;
            let store = tower_sessions_sqlx_store::PostgresStore::new(pool);
            store.migrate().await?;
            TowerTarget::new(store, backend, true)
        }
        "mysql" => {
            let pool = sqlx::mysql::MySqlPoolOptions::new()
                .max_connections(SQL_POOL)
                .connect(url)
                .await?;
            let store = tower_sessions_sqlx_store::MySqlStore::new(pool);
            store.migrate().await?;
            TowerTarget::new(store, backend, true)
        }
        "redis" => {
            let pool = Pool::new(Config::from_url(url)?, None, None, None, FRED_POOL)?;
            pool.init().await?;
            TowerTarget::new(tower_sessions_redis_store::RedisStore::new(pool), backend, true)
        }
        other => bail!("unknown backend {other}"),
    })
}

async fn run_spec(spec: &Spec, plan: &Plan, json: bool) -> Result<Vec<BenchResult>> {
    let args = spec.worker_args();
    let print = |r: &BenchResult| {
        if json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        }
    };
    match spec.kind {
        "cloakroom" => {
            let ns = cloakroom::Namespace::new(&spec.namespace)?;
            let t = CloakroomTarget::open(&spec.url, ns, Policy::Serialized).await?;
            run_plan(Arc::new(t), plan, Some(&args), print).await
        }
        "tower" => {
            let t = tower_store(&spec.backend, &spec.url).await?;
            run_plan(Arc::new(t), plan, Some(&args), print).await
        }
        "raw-redis" => {
            let t = RawRedis::connect(&spec.url, &spec.namespace).await?;
            run_plan(Arc::new(t), plan, Some(&args), print).await
        }
        other => bail!("unknown library {other}"),
    }
}

async fn worker(args: WorkerArgs) -> Result<()> {
    let run = &args.run;
    match args.kind.as_str() {
        "cloakroom" => {
            let ns = cloakroom::Namespace::new(&args.namespace)?;
            let t = CloakroomTarget::open(&args.url, ns, Policy::Serialized).await?;
            cloakroom_cli::bench::worker(Arc::new(t), run).await
        }
        "tower" => {
            let t = tower_store(&args.backend, &args.url).await?;
            cloakroom_cli::bench::worker(Arc::new(t), run).await
        }
        "raw-redis" => {
            let t = RawRedis::connect(&args.url, &args.namespace).await?;
            cloakroom_cli::bench::worker(Arc::new(t), run).await
        }
        other => bail!("unknown library {other}"),
    }
}

fn specs(args: &RunArgs) -> Result<Vec<Spec>> {
    let namespace = fresh_namespace("anchor")?.as_str().to_owned();
    let spec = |kind, backend: &str, url: String| Spec {
        kind,
        backend: backend.into(),
        url,
        namespace: namespace.clone(),
    };
    let mut out = Vec::new();
    if args.memory {
        out.push(spec("cloakroom", "memory", "memory:".into()));
        out.push(spec("tower", "memory", String::new()));
    }
    if let Some(dir) = &args.sqlite {
        let dir = std::path::absolute(dir)?;
        std::fs::create_dir_all(&dir)?;
        out.push(spec(
            "cloakroom",
            "sqlite",
            format!("sqlite://{}", dir.join("cloakroom.db").display()),
        ));
        out.push(spec(
            "tower",
            "sqlite",
            format!("sqlite://{}", dir.join("tower.db").display()),
        ));
    }
    for (backend, url) in [
        ("postgres", &args.postgres),
        ("mysql", &args.mysql),
        ("redis", &args.redis),
    ] {
        if let Some(url) = url {
            out.push(spec("cloakroom", backend, url.clone()));
            out.push(spec("tower", backend, url.clone()));
            if backend == "redis" {
                out.push(spec("raw-redis", backend, url.clone()));
            }
        }
    }
    if out.is_empty() {
        bail!("name at least one backend: --memory, --sqlite DIR, --postgres URL, --mysql URL, --redis URL");
    }
    Ok(out)
}

async fn run(args: RunArgs) -> Result<()> {
    let mut rounds = Vec::new();
    for round in 0..args.rounds {
        let mut specs = specs(&args)?;
        // Drift (another tenant, thermal limits) favours whoever runs in the
        // quieter half, so the order swaps every round.
        if round % 2 == 1 {
            specs.reverse();
        }
        let mut results = Vec::new();
        for spec in specs {
            let r = run_spec(&spec, &args.plan, args.json)
                .await
                .with_context(|| format!("{} on {}", spec.kind, spec.backend))?;
            results.extend(r);
        }
        if args.rounds > 1 {
            println!("\nround {} of {}", round + 1, args.rounds);
        }
        println!("\n{}", table(&results));
        println!("{}", comparison(&results, ANCHOR, RAW));
        rounds.push(results);
    }
    if rounds.len() > 1 {
        println!("{}", median_ratios(&rounds));
    }
    Ok(())
}

/// Per backend, mode and concurrency: the median over rounds of cloakroom's
/// and the anchor's cycles/s, and the median, lowest and highest of the
/// ratios taken within each round.
fn median_ratios(rounds: &[Vec<BenchResult>]) -> String {
    use std::collections::BTreeMap;
    type Key = (String, String, usize, usize);
    let mut by_key: BTreeMap<Key, (String, Vec<(f64, f64)>)> = BTreeMap::new();
    for results in rounds {
        let rate = |lib: &str, like: &BenchResult| {
            results
                .iter()
                .find(|r| {
                    r.library == lib
                        && r.backend == like.backend
                        && r.mode == like.mode
                        && r.processes == like.processes
                        && r.concurrency == like.concurrency
                })
                .map(|r| r.cycles_per_sec)
        };
        for ours in results.iter().filter(|r| r.library == "cloakroom") {
            if let Some(theirs) = rate(ANCHOR, ours).filter(|t| *t > 0.0) {
                let key = (
                    ours.backend.clone(),
                    ours.mode.clone(),
                    ours.processes,
                    ours.concurrency,
                );
                let (_, pairs) = by_key
                    .entry(key)
                    .or_insert_with(|| (concurrency_label(ours), Vec::new()));
                pairs.push((ours.cycles_per_sec, theirs));
            }
        }
    }
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let mut out = format!(
        "median of {} rounds\n\n| backend | mode | C | cloakroom/s | {ANCHOR}/s | ratio (median) | ratio (min–max) |\n|---|---|---|---|---|---|---|\n",
        rounds.len()
    );
    for ((backend, mode, _, _), (c, pairs)) in by_key {
        let ratios: Vec<f64> = pairs.iter().map(|(o, t)| o / t).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "| {backend} | {mode} | {c} | {:.0} | {:.0} | {:.2} | {lo:.2}–{hi:.2} |\n",
            median(pairs.iter().map(|p| p.0).collect()),
            median(pairs.iter().map(|p| p.1).collect()),
            median(ratios),
        ));
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = rt.block_on(async {
        match cli.command {
            Command::Run(a) => run(a).await,
            Command::Worker(a) => worker(a).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
