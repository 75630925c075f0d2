//! `cloakroom bench`: the workload of `BENCHMARKS.md`.
//!
//! The modes are generic over [`Target`], the library under test, so the
//! anchor crate (`benches/anchor`) runs tower-sessions and raw Redis through
//! exactly the same code and prints the two side by side.

mod modes;
mod payload;
mod report;
mod sweep;
mod target;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cloakroom::{Namespace, Policy, SessionId};

pub use modes::{contention, create_sessions, processes, remove_sessions, run_claims, spread, worker};
pub use modes::{SpreadConfig, TaskStats};
pub use payload::{CartItem, Payload, CART, CSRF_TOKEN, FLASH, HITS, LOCALE, USER_ID};
pub use report::{comparison, concurrency_label, sweep_table, table, BenchResult, Samples, SweepResult};
pub use sweep::{sweep, SWEEP_BATCH};
pub use target::{backend_of, hits_of_encoded, policy_name, CloakroomTarget, CycleError, Target};

use crate::cli::{parse_duration, parse_namespace};

/// A benchmark mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// S sessions, C tasks picking sessions at random, for a fixed time.
    Spread,
    /// One session, many tasks in one process, a fixed number of cycles.
    Contention,
    /// One session, several OS processes of several tasks each.
    Processes,
    /// N expired sessions, then one streaming sweep; cloakroom only.
    Sweep,
}

/// A cloakroom policy on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// Lock for the whole cycle (the default; never loses an update).
    Serialized,
    /// No lock; compare-and-set save, retried on conflict.
    Optimistic,
    /// No lock, last writer wins.
    Lossy,
}

impl From<PolicyArg> for Policy {
    fn from(p: PolicyArg) -> Policy {
        match p {
            PolicyArg::Serialized => Policy::Serialized,
            PolicyArg::Optimistic => Policy::Optimistic,
            PolicyArg::Lossy => Policy::Lossy,
        }
    }
}

/// Sizes and lengths of a benchmark run, shared by `cloakroom bench` and the anchor.
#[derive(Debug, Clone, Args)]
pub struct Plan {
    /// Modes to run (`sweep` only when named).
    #[arg(
        long = "mode",
        value_enum,
        value_delimiter = ',',
        default_value = "spread,contention,processes"
    )]
    pub modes: Vec<Mode>,
    /// Task counts of the spread mode.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Measured time of each spread run (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each spread run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Sessions pre-created for the spread mode (S).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Cycles in all in the contention and processes modes.
    #[arg(long, default_value_t = 2_000)]
    pub cycles: u64,
    /// Tasks of the contention mode.
    #[arg(long, default_value_t = 32)]
    pub contention_tasks: usize,
    /// OS processes of the processes mode.
    #[arg(long, default_value_t = 4)]
    pub processes: usize,
    /// Tasks per process in the processes mode.
    #[arg(long, default_value_t = 8)]
    pub tasks_per_process: usize,
    /// Leave the benchmark sessions in the store instead of deleting them.
    #[arg(long)]
    pub keep: bool,
}

/// Run every mode of `plan` on one target. `worker_args` start a worker
/// process of the same target (processes mode); `None` skips that mode.
/// Each result is handed to `each` as soon as it is measured.
pub async fn run_plan<T: Target>(
    target: Arc<T>,
    plan: &Plan,
    worker_args: Option<&[String]>,
    mut each: impl FnMut(&BenchResult),
) -> Result<Vec<BenchResult>> {
    let mut out = Vec::new();
    let label = format!("{} {} {}", target.library(), target.backend(), target.policy());
    for mode in &plan.modes {
        match mode {
            Mode::Spread => {
                eprintln!("{label}: creating {} sessions", plan.sessions);
                let ids = Arc::new(create_sessions(target.as_ref(), plan.sessions).await?);
                let cfg = SpreadConfig {
                    duration: plan.duration,
                    warmup: plan.warmup,
                };
                for &c in &plan.concurrency {
                    eprintln!("{label}: spread, C = {c}");
                    let r = spread(&target, &ids, c, &cfg).await?;
                    each(&r);
                    out.push(r);
                }
                if !plan.keep {
                    remove_sessions(target.as_ref(), &ids).await?;
                }
            }
            Mode::Contention => {
                eprintln!("{label}: contention");
                let r = contention(&target, plan.contention_tasks, plan.cycles).await?;
                each(&r);
                out.push(r);
            }
            Mode::Processes => {
                let Some(args) = worker_args.filter(|_| target.multi_process()) else {
                    eprintln!("{label}: processes mode skipped (sessions are not shared between processes)");
                    continue;
                };
                eprintln!("{label}: processes");
                let r = processes(&target, args, plan.processes, plan.tasks_per_process, plan.cycles).await?;
                each(&r);
                out.push(r);
            }
            // It measures a store, not a request cycle: `cloakroom bench` runs it itself.
            Mode::Sweep => eprintln!("{label}: sweep mode skipped (cloakroom bench only)"),
        }
    }
    Ok(out)
}

/// Arguments of `cloakroom bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Store URL.
    #[arg(
        long = "store",
        env = "CLOAKROOM_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    url: String,
    /// Namespace for the benchmark sessions (default: a fresh random one).
    #[arg(long, value_parser = parse_namespace)]
    namespace: Option<Namespace>,
    /// Policies to measure.
    #[arg(
        long = "policy",
        value_enum,
        value_delimiter = ',',
        default_value = "serialized"
    )]
    policies: Vec<PolicyArg>,
    #[command(flatten)]
    plan: Plan,
    /// Expired sessions the sweep mode creates and sweeps (in its own fresh namespace).
    #[arg(long, default_value_t = 1_000_000)]
    sweep_sessions: usize,
    /// One JSON object per result line instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of the hidden worker subcommand.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[arg(long = "store")]
    url: String,
    #[arg(long, value_parser = parse_namespace)]
    namespace: Namespace,
    #[arg(long, value_enum)]
    policy: PolicyArg,
    #[command(flatten)]
    run: WorkerRun,
}

/// What a worker process is asked to do (appended by [`processes`]).
#[derive(Debug, Clone, Args)]
pub struct WorkerRun {
    /// The session to hammer.
    #[arg(long)]
    pub id: String,
    /// Tasks in this process.
    #[arg(long)]
    pub tasks: usize,
    /// Cycles this process runs in all.
    #[arg(long)]
    pub cycles: u64,
}

/// A fresh namespace, so a benchmark never touches real sessions.
pub fn fresh_namespace(prefix: &str) -> Result<Namespace> {
    let id = SessionId::generate();
    Ok(Namespace::new(&format!("{prefix}-{}", &id.as_str()[..12]))?)
}

pub(crate) async fn run_cli(args: BenchArgs) -> Result<()> {
    let namespace = match args.namespace {
        Some(ns) => ns,
        None => fresh_namespace("bench")?,
    };
    // The sweep mode is not a request cycle and ignores the policy: run once, below.
    let mut plan = args.plan.clone();
    plan.modes.retain(|m| *m != Mode::Sweep);
    let mut results = Vec::new();
    for policy in args.policies.iter().filter(|_| !plan.modes.is_empty()) {
        let target = CloakroomTarget::open(&args.url, namespace.clone(), (*policy).into())
            .await
            .context("opening the store")?;
        let worker_args: Vec<String> = [
            "__bench-worker",
            "--store",
            &args.url,
            "--namespace",
            namespace.as_str(),
            "--policy",
            policy_name((*policy).into()),
        ]
        .map(String::from)
        .to_vec();
        let json = args.json;
        let r = run_plan(Arc::new(target), &plan, Some(&worker_args), |r| {
            if json {
                println!("{}", serde_json::to_string(r).unwrap_or_default());
            }
        })
        .await?;
        results.extend(r);
    }
    if !args.json && !results.is_empty() {
        print!("{}", table(&results));
    }
    if args.plan.modes.contains(&Mode::Sweep) {
        let store = cloakroom::open(&args.url).await.context("opening the store")?;
        // Always a fresh namespace: the sweep deletes every expired session it finds.
        let ns = fresh_namespace("sweep")?;
        let r = sweep(store, &backend_of(&args.url), &ns, args.sweep_sessions).await?;
        if args.json {
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
        } else {
            print!("{}", sweep_table(std::slice::from_ref(&r)));
        }
    }
    Ok(())
}

pub(crate) async fn run_cli_worker(args: WorkerArgs) -> Result<()> {
    let target = CloakroomTarget::open(&args.url, args.namespace, args.policy.into()).await?;
    worker(Arc::new(target), &args.run.id, args.run.tasks, args.run.cycles).await
}
