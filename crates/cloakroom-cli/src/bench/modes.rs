//! The request-cycle modes described in this crate's README (spread,
//! contention, processes)
//! and the burst mode, generic over the library under test (the sweep and
//! handoff modes, cloakroom only, are in `sweep.rs` and `handoff.rs`).

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::handoff::handoff_worker;
use super::report::{BenchResult, Samples};
use super::target::{CycleError, Target};
use super::WorkerRun;

/// Requests in flight while creating, reading or deleting sessions around a run.
pub(crate) const SETUP_PARALLEL: usize = 32;
/// A cycle refused this many times in a row stops the run: something is
/// wrong beyond contention.
const MAX_CONSECUTIVE_RETRIES: u32 = 10_000;

/// What one or more tasks measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TaskStats {
    /// Whole-cycle latencies inside the measured window.
    pub latency: Samples,
    /// Open (lock wait + load) latencies inside the measured window.
    pub wait: Samples,
    /// Successful cycles inside the measured window.
    pub measured: u64,
    /// Successful cycles in all, warm-up included.
    pub committed: u64,
    /// Attempts refused with a retryable error.
    pub retries: u64,
    /// Lock hand-offs, holder's commit start to waiter's open return (handoff mode).
    #[serde(default)]
    pub handoff: Samples,
}

impl TaskStats {
    pub(crate) fn merge(&mut self, other: TaskStats) {
        self.latency.extend(other.latency);
        self.wait.extend(other.wait);
        self.handoff.extend(other.handoff);
        self.measured += other.measured;
        self.committed += other.committed;
        self.retries += other.retries;
    }
}

/// Run one cycle on `id`, retrying refusals; records into `stats` if `measure`.
/// The latency recorded is that of the successful attempt, or, given `since`,
/// the time from `since` to its end (a request's whole time, retries included).
async fn cycle_until_done<T: Target>(
    target: &T,
    id: &T::Id,
    stats: &mut TaskStats,
    measure: bool,
    since: Option<Instant>,
) -> Result<()> {
    let mut refused = 0u32;
    loop {
        let started = Instant::now();
        match target.cycle(id).await {
            Ok(waited) => {
                stats.committed += 1;
                if measure {
                    stats.latency.push(since.unwrap_or(started).elapsed());
                    stats.wait.push(waited);
                    stats.measured += 1;
                }
                return Ok(());
            }
            Err(CycleError::Retry) => {
                stats.retries += 1;
                refused += 1;
                if refused >= MAX_CONSECUTIVE_RETRIES {
                    bail!("a cycle was refused {refused} times in a row");
                }
            }
            Err(CycleError::Fatal(e)) => return Err(e),
        }
    }
}

/// Create `n` benchmark sessions.
pub async fn create_sessions<T: Target>(target: &T, n: usize) -> Result<Vec<T::Id>> {
    futures::stream::iter(0..n)
        .map(|_| target.create())
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect()
        .await
}

/// Delete benchmark sessions.
pub async fn remove_sessions<T: Target>(target: &T, ids: &[T::Id]) -> Result<()> {
    futures::stream::iter(ids)
        .map(|id| target.remove(id))
        .buffer_unordered(SETUP_PARALLEL)
        .try_collect::<()>()
        .await
}

pub(crate) async fn sum_hits<T: Target>(target: &T, ids: &[T::Id]) -> Result<u64> {
    futures::stream::iter(ids)
        .map(|id| target.hits(id))
        .buffer_unordered(SETUP_PARALLEL)
        .try_fold(0u64, |sum, h| async move { Ok(sum + h) })
        .await
}

/// Parameters of the spread mode.
#[derive(Clone, Debug)]
pub struct SpreadConfig {
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured run before it.
    pub warmup: Duration,
}

pub(crate) fn result<T: Target>(target: &T, mode: &str, concurrency: usize, processes: usize) -> BenchResult {
    BenchResult {
        library: target.library(),
        backend: target.backend(),
        mode: mode.into(),
        policy: target.policy(),
        concurrency,
        processes,
        burst: 0,
        sessions: 1,
        cycles: 0,
        seconds: 0.0,
        cycles_per_sec: 0.0,
        p50_us: 0,
        p99_us: 0,
        cycle_p50_us: 0,
        cycle_p99_us: 0,
        wait_p50_us: 0,
        wait_p99_us: 0,
        retries: 0,
        lost_updates: 0,
    }
}

/// Which latency a result's headline p50/p99 are.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Headline {
    /// The whole cycle (spread, burst).
    Cycle,
    /// The open: lock wait + load (contention, processes).
    Wait,
    /// The lock hand-off (handoff).
    Handoff,
}

pub(crate) fn fill(r: &mut BenchResult, mut stats: TaskStats, seconds: f64, headline: Headline) {
    r.cycles = stats.measured;
    r.seconds = seconds;
    r.cycles_per_sec = stats.measured as f64 / seconds.max(1e-9);
    r.cycle_p50_us = stats.latency.quantile(0.50);
    r.cycle_p99_us = stats.latency.quantile(0.99);
    r.wait_p50_us = stats.wait.quantile(0.50);
    r.wait_p99_us = stats.wait.quantile(0.99);
    (r.p50_us, r.p99_us) = match headline {
        Headline::Cycle => (r.cycle_p50_us, r.cycle_p99_us),
        Headline::Wait => (r.wait_p50_us, r.wait_p99_us),
        Headline::Handoff => (stats.handoff.quantile(0.50), stats.handoff.quantile(0.99)),
    };
    r.retries = stats.retries;
}

/// Await every task of a mode and merge what they measured.
pub(crate) async fn join_stats(tasks: Vec<tokio::task::JoinHandle<Result<TaskStats>>>) -> Result<TaskStats> {
    let mut stats = TaskStats::default();
    for task in tasks {
        stats.merge(task.await.context("a benchmark task panicked")??);
    }
    Ok(stats)
}

/// What a virtual user does with the random session it picked.
#[derive(Clone, Copy, Debug)]
enum Visit {
    /// One cycle (spread mode).
    One,
    /// This many concurrent cycles, each on a task of its own (burst mode).
    Burst(usize),
}

impl Visit {
    /// Do it on `id`, recording into `stats` if `measure`; `now` is when
    /// this visit started.
    async fn run<T: Target>(
        self,
        target: &Arc<T>,
        id: &T::Id,
        stats: &mut TaskStats,
        measure: bool,
        now: Instant,
    ) -> Result<()> {
        let tabs = match self {
            Visit::One => return cycle_until_done(target.as_ref(), id, stats, measure, None).await,
            Visit::Burst(tabs) => tabs,
        };
        let fired: Vec<_> = (0..tabs)
            .map(|_| {
                let (target, id) = (Arc::clone(target), id.clone());
                tokio::spawn(async move {
                    let mut stats = TaskStats::default();
                    cycle_until_done(target.as_ref(), &id, &mut stats, measure, Some(now)).await?;
                    Ok::<_, anyhow::Error>(stats)
                })
            })
            .collect();
        // All of them before any error: no tab outlives its burst.
        for tab in futures::future::join_all(fired).await {
            stats.merge(tab.context("a benchmark task panicked")??);
        }
        Ok(())
    }
}

/// `concurrency` virtual users each loop: pick a random session of `ids`,
/// `visit` it; for warm-up + duration. A visit that starts inside the
/// measured window is measured. Lost updates are counted: the sum of all
/// `hits` must grow by exactly the number of committed cycles.
async fn random_visits<T: Target>(
    target: &Arc<T>,
    ids: &Arc<Vec<T::Id>>,
    concurrency: usize,
    cfg: &SpreadConfig,
    mode: &str,
    visit: Visit,
) -> Result<BenchResult> {
    if ids.is_empty() {
        bail!("{mode} mode needs at least one session");
    }
    let before = sum_hits(target.as_ref(), ids)
        .await
        .context("reading hits before the run")?;
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let users: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, ids) = (Arc::clone(target), Arc::clone(ids));
            tokio::spawn(async move {
                let mut stats = TaskStats::default();
                let mut rng = fastrand::Rng::new();
                loop {
                    let now = Instant::now();
                    if now >= end {
                        return Ok::<_, anyhow::Error>(stats);
                    }
                    let id = &ids[rng.usize(..ids.len())];
                    visit
                        .run(&target, id, &mut stats, now >= measure_from, now)
                        .await?;
                }
            })
        })
        .collect();
    let stats = join_stats(users).await?;
    let after = sum_hits(target.as_ref(), ids)
        .await
        .context("reading hits after the run")?;
    let mut r = result(target.as_ref(), mode, concurrency, 1);
    r.sessions = ids.len();
    r.lost_updates = stats.committed.saturating_sub(after.saturating_sub(before));
    fill(&mut r, stats, cfg.duration.as_secs_f64(), Headline::Cycle);
    Ok(r)
}

/// Spread mode: `concurrency` tasks each run cycles on random sessions of
/// `ids` for warm-up + duration. Lost updates are counted too: the sum of
/// all `hits` must grow by exactly the number of committed cycles.
pub async fn spread<T: Target>(
    target: &Arc<T>,
    ids: &Arc<Vec<T::Id>>,
    concurrency: usize,
    cfg: &SpreadConfig,
) -> Result<BenchResult> {
    random_visits(target, ids, concurrency, cfg, "spread", Visit::One).await
}

/// Burst mode: `concurrency` virtual users, each picking a random session of
/// `ids`, firing `tabs` concurrent cycles at it (browser tabs, each a task of
/// its own as a server would run them), waiting for all of them, and again,
/// for warm-up + duration. A burst that starts inside the measured window is
/// measured; a cycle's latency runs from the burst's start to its commit,
/// retries included. Lost updates are counted as in [`spread`].
pub async fn burst<T: Target>(
    target: &Arc<T>,
    ids: &Arc<Vec<T::Id>>,
    concurrency: usize,
    tabs: usize,
    cfg: &SpreadConfig,
) -> Result<BenchResult> {
    let tabs = tabs.max(1);
    let mut r = random_visits(target, ids, concurrency, cfg, "burst", Visit::Burst(tabs)).await?;
    r.burst = tabs;
    Ok(r)
}

/// `tasks` tasks sharing `cycles` cycles on the one session `id`.
pub async fn run_claims<T: Target>(
    target: &Arc<T>,
    id: &T::Id,
    tasks: usize,
    cycles: u64,
) -> Result<TaskStats> {
    let claimed = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..tasks.max(1))
        .map(|_| {
            let (target, id, claimed) = (Arc::clone(target), id.clone(), Arc::clone(&claimed));
            tokio::spawn(async move {
                let mut stats = TaskStats::default();
                while claimed.fetch_add(1, Ordering::Relaxed) < cycles {
                    cycle_until_done(target.as_ref(), &id, &mut stats, true, None).await?;
                }
                Ok::<_, anyhow::Error>(stats)
            })
        })
        .collect();
    join_stats(handles).await
}

/// Contention mode: one session, `tasks` tasks, `cycles` cycles in all.
pub async fn contention<T: Target>(target: &Arc<T>, tasks: usize, cycles: u64) -> Result<BenchResult> {
    let id = target.create().await.context("creating the contended session")?;
    let started = Instant::now();
    let stats = run_claims(target, &id, tasks, cycles).await?;
    let seconds = started.elapsed().as_secs_f64();
    let hits = target.hits(&id).await?;
    target.remove(&id).await?;
    let mut r = result(target.as_ref(), "contention", tasks, 1);
    r.lost_updates = stats.committed.saturating_sub(hits);
    fill(&mut r, stats, seconds, Headline::Wait);
    Ok(r)
}

/// What a worker process prints when done.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerReport {
    stats: TaskStats,
}

/// Processes mode: one session, `processes` OS processes of `tasks` tasks
/// each, `cycles` cycles in all. Each worker is this very executable run
/// with `worker_args` (which must name the hidden worker subcommand and the
/// target) plus `--id`, `--tasks`, `--cycles`. Workers connect first and
/// report `ready`; the clock starts when all are told `go`.
pub async fn processes<T: Target>(
    target: &Arc<T>,
    worker_args: &[String],
    processes: usize,
    tasks: usize,
    cycles: u64,
) -> Result<BenchResult> {
    let id = target.create().await.context("creating the contended session")?;
    let procs = processes.max(1);
    let (stats, seconds) = run_workers(&target.id_to_text(&id), worker_args, procs, |i| {
        let share = cycles / procs as u64 + u64::from((i as u64) < cycles % procs as u64);
        vec![format!("--tasks={tasks}"), format!("--cycles={share}")]
    })
    .await?;
    let hits = target.hits(&id).await?;
    target.remove(&id).await?;
    let mut r = result(target.as_ref(), "processes", procs * tasks, procs);
    r.lost_updates = stats.committed.saturating_sub(hits);
    fill(&mut r, stats, seconds, Headline::Wait);
    Ok(r)
}

/// Start `procs` worker processes on the session `id_text` (`worker_args`,
/// then `--id`, then what `args_of` gives for each process index), start
/// them together once all are ready, and merge their reports. A line a
/// worker prints before its report that starts with `@` is relayed to every
/// other worker's stdin (the handoff mode's turn-taking). Returns the merged
/// stats and the seconds from `go` to the last report.
pub(crate) async fn run_workers(
    id_text: &str,
    worker_args: &[String],
    procs: usize,
    args_of: impl Fn(usize) -> Vec<String>,
) -> Result<(TaskStats, f64)> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut children = Vec::with_capacity(procs);
    let mut stdins = Vec::with_capacity(procs);
    let mut outputs = Vec::with_capacity(procs);
    for i in 0..procs {
        let mut child = tokio::process::Command::new(&exe)
            .args(worker_args)
            // `=`: an id may start with `-`.
            .arg(format!("--id={id_text}"))
            .args(args_of(i))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a worker process")?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("worker stdin not piped"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("worker stdout not piped"))?;
        children.push(child);
        stdins.push(Arc::new(tokio::sync::Mutex::new(stdin)));
        outputs.push(BufReader::new(stdout).lines());
    }
    for lines in &mut outputs {
        match lines.next_line().await? {
            Some(line) if line == "ready" => {}
            other => bail!("a worker process did not get ready (said {other:?})"),
        }
    }
    let started = Instant::now();
    for stdin in &stdins {
        let mut stdin = stdin.lock().await;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let readers: Vec<_> = outputs
        .into_iter()
        .enumerate()
        .map(|(i, mut lines)| {
            let others: Vec<_> = stdins
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, s)| Arc::clone(s))
                .collect();
            tokio::spawn(async move {
                loop {
                    let line = lines
                        .next_line()
                        .await?
                        .ok_or_else(|| anyhow!("a worker process exited without a report"))?;
                    if !line.starts_with('@') {
                        let report: WorkerReport =
                            serde_json::from_str(&line).context("reading a worker's report")?;
                        return Ok::<_, anyhow::Error>(report.stats);
                    }
                    for other in &others {
                        let mut other = other.lock().await;
                        // A worker that has finished no longer listens.
                        let _ = other.write_all(format!("{line}\n").as_bytes()).await;
                        let _ = other.flush().await;
                    }
                }
            })
        })
        .collect();
    let mut stats = TaskStats::default();
    for reader in readers {
        stats.merge(reader.await.context("a relay task panicked")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(stdins);
    for mut child in children {
        let status = child.wait().await?;
        if !status.success() {
            bail!("a worker process failed: {status}");
        }
    }
    Ok((stats, seconds))
}

/// The body of a worker process: report `ready`, wait for `go` on stdin,
/// run what `run` asks on its session (the processes mode's `cycles` cycles
/// with `tasks` tasks, or with `--handoff-hold` the handoff mode's loop),
/// print the report.
pub async fn worker<T: Target>(target: Arc<T>, run: &WorkerRun) -> Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    // One reader for all of stdin: the handoff loop reads on after `go`.
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let go = stdin.next_line().await?;
    if go.as_deref().map(str::trim) != Some("go") {
        bail!("expected `go` on stdin, got {go:?}");
    }
    let stats = match run.handoff_hold {
        None => {
            let id = target.id_from_text(&run.id)?;
            run_claims(&target, &id, run.tasks, run.cycles).await?
        }
        Some(hold) => {
            let c = target
                .cloakroom()
                .ok_or_else(|| anyhow!("the handoff mode needs a cloakroom target"))?;
            let id = c.id_from_text(&run.id)?;
            handoff_worker(c, &id, hold, run.cycles, stdin).await?
        }
    };
    let line = serde_json::to_string(&WorkerReport { stats })?;
    stdout.write_all(line.as_bytes()).await?;
    stdout.write_all(b"\n").await?;
    stdout.flush().await?;
    Ok(())
}
