//! Handoff mode: how long a waiting request takes to get a session after its
//! holder lets go (cloakroom Serialized only: the other libraries and
//! policies have no lock to hand off).
//!
//! Two sides take strict turns on one session. A holder opens it, sets
//! `hits += 1`, waits until the other side has said it is calling `open`,
//! keeps the session [`HandoffConfig::hold`] longer (so the other side is
//! surely parked in the lock wait by then), notes the time just before it
//! calls `commit`, and commits. The side that was waiting notes when its
//! `open` returns: the hand-off is that minus the holder's note. A side
//! that has committed calls `open` again only once the other has said it
//! holds the session, so a releaser never takes its own lock straight back
//! (no lock engine promises fairness against a process that re-opens at
//! once). A hand-off is counted only if the waiter had called `open` before
//! the holder's note and the note is the other side's.
//!
//! In one process the sides are tasks: the note is an [`Instant`] shared
//! through a mutex, the turn-taking two watch channels. Across processes
//! they are worker processes: the note is the wall clock (same machine),
//! written into the session itself just before the commit, and the
//! turn-taking lines relayed by the parent between the workers' stdout and
//! stdin (see `run_workers`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use cloakroom::{Manager, Session, SessionId};
use tokio::io::{AsyncBufRead, Lines};
use tokio::sync::watch;

use super::modes::{fill, join_stats, result, run_workers, Headline, TaskStats};
use super::payload::HITS;
use super::report::BenchResult;
use super::target::{CloakroomTarget, Target};

/// Tasks taking turns in the one-process variant; processes in the other.
const SIDES: usize = 2;
/// Session keys of the cross-process note: the holder's process id and the
/// time it started its commit (ns since the Unix epoch).
const HANDOFF_BY: &str = "handoff_by";
const HANDOFF_AT: &str = "handoff_at";
/// How long a holder waits for the other side to call `open` before it
/// commits anyway.
const PEER_PATIENCE: Duration = Duration::from_millis(20);

/// Lock timeouts in a row after which a side gives up.
const MAX_TIMEOUTS: u32 = 100;

/// Parameters of the handoff mode.
#[derive(Clone, Debug)]
pub struct HandoffConfig {
    /// Hand-offs to measure.
    pub handoffs: u64,
    /// How long a holder keeps the session, once the other side waits,
    /// before it commits.
    pub hold: Duration,
}

/// What a side tells the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Said {
    /// Nothing yet.
    Nothing,
    /// It is calling `open`.
    Waiting,
    /// Its `open` returned: it holds the session.
    Held,
    /// It has taken its last turn.
    Done,
}

impl Said {
    /// The line a worker process prints (and the parent relays): an `@` first.
    fn line(self) -> &'static str {
        match self {
            Said::Nothing => "@nothing",
            Said::Waiting => "@waiting",
            Said::Held => "@held",
            Said::Done => "@done",
        }
    }

    fn parse(line: &str) -> Option<Said> {
        [Said::Nothing, Said::Waiting, Said::Held, Said::Done]
            .into_iter()
            .find(|s| s.line() == line.trim())
    }
}

/// How a side talks to the other.
struct Peer {
    /// Where it tells the other: a watch channel, or (`None`) stdout.
    tell: Option<watch::Sender<Said>>,
    /// What the other said last.
    heard: watch::Receiver<Said>,
}

impl Peer {
    fn tell(&self, said: Said) -> Result<()> {
        match &self.tell {
            Some(tx) => {
                tx.send_replace(said);
            }
            None => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", said.line())?;
                out.flush()?;
            }
        }
        Ok(())
    }

    /// Until the other last said `this` or `Done` (or is gone: as good as done).
    async fn until(&mut self, this: Said) {
        let _ = self.heard.wait_for(|s| *s == this || *s == Said::Done).await;
    }
}

/// Where a holder leaves the moment it starts its commit, as (side, ns).
enum Baton {
    /// In one process: ns since `origin`, shared through a mutex.
    Local {
        me: u64,
        origin: Instant,
        last: Arc<Mutex<Option<(u64, u64)>>>,
    },
    /// Across processes: wall-clock ns, stored in the session.
    Stored { me: u64 },
}

impl Baton {
    fn me(&self) -> u64 {
        match self {
            Baton::Local { me, .. } | Baton::Stored { me } => *me,
        }
    }

    fn now(&self) -> u64 {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match self {
            Baton::Local { origin, .. } => nanos(origin.elapsed()),
            Baton::Stored { .. } => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, nanos),
        }
    }

    /// The previous holder's note.
    fn last(&self, s: &Session) -> Result<Option<(u64, u64)>> {
        Ok(match self {
            Baton::Local { last, .. } => *last.lock().unwrap_or_else(PoisonError::into_inner),
            Baton::Stored { .. } => s.get::<u64>(HANDOFF_BY)?.zip(s.get::<u64>(HANDOFF_AT)?),
        })
    }

    /// Leave this holder's note; call just before `commit`.
    fn stamp(&self, s: &mut Session) -> Result<()> {
        match self {
            Baton::Local { me, last, .. } => {
                let now = self.now();
                *last.lock().unwrap_or_else(PoisonError::into_inner) = Some((*me, now));
            }
            Baton::Stored { me } => {
                s.insert(HANDOFF_BY, me)?;
                s.insert(HANDOFF_AT, &self.now())?;
            }
        }
        Ok(())
    }
}

/// One side: take turns on `id` until `taken` (hand-offs seen by every side
/// of this process) reaches `goal` or this side has committed `max_commits`
/// times. Records hand-offs in `handoff`, whole turns in `latency`, opens in
/// `wait`; `measured` is the number of hand-offs.
#[allow(clippy::too_many_arguments)]
async fn take_turns(
    manager: &Manager,
    id: &SessionId,
    baton: &Baton,
    mut peer: Peer,
    hold: Duration,
    taken: &AtomicU64,
    goal: u64,
    max_commits: u64,
) -> Result<TaskStats> {
    let mut stats = TaskStats::default();
    let mut timeouts = 0u32;
    let finished =
        |stats: &TaskStats| taken.load(Ordering::Relaxed) >= goal || stats.committed >= max_commits;
    while !finished(&stats) {
        peer.tell(Said::Waiting)?;
        let called = baton.now();
        let started = Instant::now();
        let mut s = match manager.open(Some(id)).await {
            Ok(s) => s,
            Err(cloakroom::Error::LockTimeout { .. }) => {
                stats.retries += 1;
                timeouts += 1;
                if timeouts >= MAX_TIMEOUTS {
                    bail!("the session lock timed out {timeouts} times in a row");
                }
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let returned = baton.now();
        let opened = started.elapsed();
        timeouts = 0;
        peer.tell(Said::Held)?;
        if s.id() != id {
            bail!("benchmark session {id} vanished");
        }
        if let Some((by, at)) = baton.last(&s)? {
            if by != baton.me() && called <= at {
                stats
                    .handoff
                    .push(Duration::from_nanos(returned.saturating_sub(at)));
                taken.fetch_add(1, Ordering::Relaxed);
            }
        }
        let hits: u64 = s.get(HITS)?.unwrap_or(0);
        s.insert(HITS, &(hits + 1))?;
        // On a row-lock store the other side may be unable to call `open`:
        // its own commit, handed off to us in memory, is acknowledged only by
        // the COMMIT that ends our chain. Waiting for it would deadlock, so
        // wait a bounded time and commit anyway (no hand-off is counted then).
        let _ = tokio::time::timeout(PEER_PATIENCE, peer.until(Said::Waiting)).await;
        tokio::time::sleep(hold).await;
        baton.stamp(&mut s)?;
        s.commit().await?;
        stats.committed += 1;
        stats.latency.push(started.elapsed());
        stats.wait.push(opened);
        if !finished(&stats) {
            // Not straight back into `open`: the other side goes first.
            peer.until(Said::Held).await;
        }
    }
    peer.tell(Said::Done)?;
    stats.measured = stats.handoff.0.len() as u64;
    Ok(stats)
}

/// The handoff result of `stats`: p50/p99 are the hand-off, `cycles` the
/// hand-offs measured, `lost_updates` the commits missing from `hits`.
fn report(
    target: &CloakroomTarget,
    processes: usize,
    stats: TaskStats,
    seconds: f64,
    hits: u64,
) -> Result<BenchResult> {
    if stats.handoff.0.is_empty() {
        bail!("no lock hand-off was observed");
    }
    let mut r = result(target, "handoff", SIDES, processes);
    r.lost_updates = stats.committed.saturating_sub(hits);
    fill(&mut r, stats, seconds, Headline::Handoff);
    Ok(r)
}

/// Handoff mode in one process: two tasks take turns on one session until
/// `cfg.handoffs` hand-offs have been measured.
pub async fn handoff(target: &Arc<CloakroomTarget>, cfg: &HandoffConfig) -> Result<BenchResult> {
    let id = target.create().await.context("creating the handed-off session")?;
    let last = Arc::new(Mutex::new(None));
    let taken = Arc::new(AtomicU64::new(0));
    let origin = Instant::now();
    let goal = cfg.handoffs;
    // Every turn but the first hands off; the cap only guards against a bug.
    let max_commits = goal.saturating_add(16);
    let (tx_a, rx_a) = watch::channel(Said::Nothing);
    let (tx_b, rx_b) = watch::channel(Said::Nothing);
    let peers = [
        Peer {
            tell: Some(tx_a),
            heard: rx_b,
        },
        Peer {
            tell: Some(tx_b),
            heard: rx_a,
        },
    ];
    let sides: Vec<_> = peers
        .into_iter()
        .zip(0u64..)
        .map(|(peer, me)| {
            let (target, id, taken, hold) = (Arc::clone(target), id.clone(), Arc::clone(&taken), cfg.hold);
            let baton = Baton::Local {
                me,
                origin,
                last: Arc::clone(&last),
            };
            tokio::spawn(async move {
                let manager = target.manager();
                take_turns(manager, &id, &baton, peer, hold, &taken, goal, max_commits).await
            })
        })
        .collect();
    let stats = join_stats(sides).await?;
    let seconds = origin.elapsed().as_secs_f64();
    let hits = target.hits(&id).await?;
    target.remove(&id).await?;
    report(target, 1, stats, seconds, hits)
}

/// Handoff mode across processes: two worker processes (`worker_args`, as
/// for the processes mode, plus `--handoff-hold`) take turns on one session,
/// `cfg.handoffs / 2 + 1` turns each: about `cfg.handoffs` hand-offs in all.
pub async fn handoff_processes(
    target: &Arc<CloakroomTarget>,
    worker_args: &[String],
    cfg: &HandoffConfig,
) -> Result<BenchResult> {
    let id = target.create().await.context("creating the handed-off session")?;
    // Each turn after the very first is a hand-off while both run.
    let turns = cfg.handoffs / SIDES as u64 + 1;
    let hold = format!("{}us", cfg.hold.as_micros());
    let (stats, seconds) = run_workers(id.as_str(), worker_args, SIDES, |_| {
        vec![
            "--tasks=1".to_owned(),
            format!("--cycles={turns}"),
            format!("--handoff-hold={hold}"),
        ]
    })
    .await?;
    let hits = target.hits(&id).await?;
    target.remove(&id).await?;
    report(target, SIDES, stats, seconds, hits)
}

/// The body of a handoff worker process: `turns` turns on `id`, hearing the
/// other side on `stdin` (relayed by the parent) and telling it on stdout.
pub(crate) async fn handoff_worker<R>(
    target: &CloakroomTarget,
    id: &SessionId,
    hold: Duration,
    turns: u64,
    mut stdin: Lines<R>,
) -> Result<TaskStats>
where
    R: AsyncBufRead + Unpin + Send + 'static,
{
    let (tx, heard) = watch::channel(Said::Nothing);
    // Ends with stdin; the dropped sender then reads as `Done`.
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdin.next_line().await {
            if let Some(said) = Said::parse(&line) {
                tx.send_replace(said);
            }
        }
    });
    let baton = Baton::Stored {
        me: u64::from(std::process::id()),
    };
    let peer = Peer { tell: None, heard };
    let taken = AtomicU64::new(0);
    take_turns(target.manager(), id, &baton, peer, hold, &taken, u64::MAX, turns).await
}
