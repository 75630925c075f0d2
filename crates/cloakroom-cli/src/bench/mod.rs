//! `cloakroom bench`: the workload described in the repository's
//! `docs/BENCHMARKS.md` (the request cycle, its modes, the targets).
//!
//! The modes are generic over [`Target`], the library under test, so the
//! anchor crate (`benches/anchor`) runs tower-sessions and raw Redis through
//! exactly the same code and prints the two side by side.

mod handoff;
mod modes;
mod payload;
mod report;
mod sweep;
mod target;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use cloakroom::{Namespace, Policy, Registry, SessionId};

pub use handoff::{handoff, handoff_processes, HandoffConfig};
pub use modes::{burst, contention, create_sessions, processes, remove_sessions, run_claims, spread, worker};
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
    /// S sessions, C virtual users each firing B concurrent cycles (browser
    /// tabs) at one random session, waiting for all B, and again.
    Burst,
    /// One session, many tasks in one process, a fixed number of cycles.
    Contention,
    /// One session, several OS processes of several tasks each.
    Processes,
    /// N expired sessions, then one streaming sweep; cloakroom only.
    Sweep,
    /// Lock hand-off latency, holder's commit to waiter's open; cloakroom
    /// Serialized only, in one process and (shared stores) across two.
    Handoff,
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
    /// Modes to run (`sweep` and `handoff` only when named).
    #[arg(
        long = "mode",
        value_enum,
        value_delimiter = ',',
        default_value = "spread,burst,contention,processes"
    )]
    pub modes: Vec<Mode>,
    /// Task counts of the spread mode; virtual users of the burst mode.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Measured time of each spread and burst run (e.g. `5s`, `500ms`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before each spread and burst run.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Sessions pre-created for the spread and burst modes (S).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: usize,
    /// Concurrent cycles each virtual user of the burst mode fires at one
    /// session (B: browser tabs).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..))]
    pub burst: u32,
    /// Hand-offs measured by the handoff mode (per variant).
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub handoffs: u64,
    /// How long a holder keeps the lock in the handoff mode before it
    /// commits, so that the other side is surely waiting.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub handoff_hold: Duration,
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
    // Created on first use, shared by the spread and burst modes (each run
    // counts lost updates by the growth of `hits`, so sharing is harmless),
    // and removed after the last of them, before the other modes run.
    let mut sessions: Option<Arc<Vec<T::Id>>> = None;
    let last_spread = plan
        .modes
        .iter()
        .rposition(|m| matches!(m, Mode::Spread | Mode::Burst));
    for (i, mode) in plan.modes.iter().enumerate() {
        match mode {
            Mode::Spread | Mode::Burst => {
                let ids = match &sessions {
                    Some(ids) => Arc::clone(ids),
                    None => {
                        eprintln!("{label}: creating {} sessions", plan.sessions);
                        let ids = Arc::new(create_sessions(target.as_ref(), plan.sessions).await?);
                        sessions = Some(Arc::clone(&ids));
                        ids
                    }
                };
                let cfg = SpreadConfig {
                    duration: plan.duration,
                    warmup: plan.warmup,
                };
                for &c in &plan.concurrency {
                    let r = if *mode == Mode::Spread {
                        eprintln!("{label}: spread, C = {c}");
                        spread(&target, &ids, c, &cfg).await?
                    } else {
                        eprintln!("{label}: burst, C = {c}, B = {}", plan.burst);
                        burst(&target, &ids, c, plan.burst as usize, &cfg).await?
                    };
                    each(&r);
                    out.push(r);
                }
                if Some(i) == last_spread && !plan.keep {
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
            Mode::Handoff => {
                let Some(c) = target.cloakroom().filter(|c| c.is_serialized()) else {
                    eprintln!("{label}: handoff mode skipped (no session lock to hand off)");
                    continue;
                };
                let c = Arc::new(c.clone());
                let cfg = HandoffConfig {
                    handoffs: plan.handoffs,
                    hold: plan.handoff_hold,
                };
                eprintln!("{label}: handoff, one process");
                let r = handoff(&c, &cfg).await?;
                each(&r);
                out.push(r);
                let Some(args) = worker_args.filter(|_| target.multi_process()) else {
                    eprintln!(
                        "{label}: cross-process handoff skipped (sessions are not shared between processes)"
                    );
                    continue;
                };
                eprintln!("{label}: handoff, two processes");
                let r = handoff_processes(&c, args, &cfg).await?;
                each(&r);
                out.push(r);
            }
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
    /// Run the handoff mode's loop (one task; `cycles` commits), holding
    /// the lock this long before each commit, instead of the processes mode's.
    #[arg(long, value_parser = parse_duration)]
    pub handoff_hold: Option<Duration>,
}

/// A fresh namespace, so a benchmark never touches real sessions.
pub fn fresh_namespace(prefix: &str) -> Result<Namespace> {
    let id = SessionId::generate();
    Ok(Namespace::new(&format!("{prefix}-{}", &id.as_str()[..12]))?)
}

pub(crate) async fn run_cli(args: BenchArgs, registry: &Registry) -> Result<()> {
    let namespace = match args.namespace {
        Some(ns) => ns,
        None => fresh_namespace("bench")?,
    };
    // The sweep mode is not a request cycle and ignores the policy: run once, below.
    let mut plan = args.plan.clone();
    plan.modes.retain(|m| *m != Mode::Sweep);
    let mut results = Vec::new();
    for policy in args.policies.iter().filter(|_| !plan.modes.is_empty()) {
        let target = CloakroomTarget::open_with(registry, &args.url, namespace.clone(), (*policy).into())
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
        let store = cloakroom::open_with(registry, &args.url)
            .await
            .context("opening the store")?;
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

pub(crate) async fn run_cli_worker(args: WorkerArgs, registry: &Registry) -> Result<()> {
    let target = CloakroomTarget::open_with(registry, &args.url, args.namespace, args.policy.into()).await?;
    worker(Arc::new(target), &args.run).await
}
