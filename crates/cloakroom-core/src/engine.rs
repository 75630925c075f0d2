//! The lock engine: the one place where cloakroom waits for, hands off,
//! renews, writes under and releases a session lock. Backends supply the
//! primitives (`SessionStore::lock`, `LockGuard::finish`, `LockGuard::renew`);
//! everything about queues, deadlines, hand-offs and group commit is here.
//!
//! # How a session's lock moves
//!
//! Per session key this process keeps a *queue*. The first request takes
//! the store lock (a backend round trip that also loads the record); later
//! requests wait here in memory, in arrival order, each under its own
//! deadline. The time during which this process holds the store lock is a
//! *chain*:
//!
//! - When a holder finishes and someone waits, the next one starts at once
//!   on the state the holder just committed, in memory: no store lock, no
//!   load (*early hand-off*).
//! - A chain keeper task owns the store's [`LockGuard`] while the chain
//!   lasts. It renews the lease and writes: one fenced write covers every
//!   commit made since the previous one (*group commit*). It keeps the store
//!   lock while someone waits and releases it, in the same step as the last
//!   write, when the queue is empty.
//! - A commit is acknowledged only once a store write that contains it (or a
//!   later state built on it) succeeded. If a write fails, every commit it
//!   covered and every commit built on them gets the error, the store lock is
//!   gone, and the next waiter starts over from the store.
//! - After `handoff_limit` hand-offs or `handoff_window` of holding, the
//!   chain releases the store lock between two holders, so a waiter in
//!   another process gets its turn.
//! - Row-lock backends cannot make a write durable and keep the row lock
//!   ([`Capabilities::durable_while_locked`] is false): there the chain writes
//!   once, at its end, and every commit of the chain is acknowledged then.
//!
//! This is early lock release with commit dependencies, as database engines
//! do it for their log (Johnson et al., "Aether", VLDB 2010; Graefe et al.,
//! "Controlled Lock Violation", SIGMOD 2013).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};

use crate::error::{Error, Result};
use crate::id::SessionKey;
use crate::record::Record;
use crate::store::{Finish, Finished, LockGuard, LockKind, LockOptions, SessionStore, Then};
use crate::telemetry::Labels;

/// Independent locks over the queue table, so that sessions rarely contend
/// on one mutex.
const SHARDS: usize = 16;

/// How long a process that gave the store lock back under the hand-off bound
/// waits before taking it again.
const FAIRNESS_YIELD: Duration = Duration::from_millis(1);

/// How the engine holds locks; taken from the manager's configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EngineConfig {
    pub lease: Duration,
    pub renew_lease: bool,
    pub lock_wait: Duration,
    pub handoff_limit: u32,
    pub handoff_window: Duration,
}

/// The lock engine of one [`Manager`](crate::Manager).
pub(crate) struct LockEngine {
    store: Arc<dyn SessionStore>,
    config: EngineConfig,
    durable_while_locked: bool,
    /// Whether the store rotates ids in one step; see [`rotate_in_two_steps`].
    rotates_atomically: bool,
    /// The store has no queue of its own that serves waiters in order, so
    /// after giving the lock back under the hand-off bound this process
    /// pauses before taking it again (see [`FAIRNESS_YIELD`]).
    yields_to_others: bool,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<SessionKey, Queue>>>,
    labels: Labels,
}

impl fmt::Debug for LockEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockEngine")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a waiter is told when its turn comes.
enum Wake {
    /// Start on this state (handed off in memory, no store round trip).
    Turn(Option<Record>, u64),
    /// The store lock is free: take it.
    Acquire,
}

struct Waiter {
    ticket: u64,
    wake: oneshot::Sender<Wake>,
}

type Ack = oneshot::Sender<Result<Finished>>;

/// One session's queue. Invariant: at most one local holder (`turn`) at a
/// time; a waiter is queued only while someone holds the turn, acquires, or
/// the chain is closing.
#[derive(Default)]
struct Queue {
    /// The chain holding the store lock, if any.
    chain: Option<Chain>,
    /// A waiter is taking the store lock right now.
    acquiring: bool,
    /// The ticket of the local holder, if any.
    turn: Option<u64>,
    waiters: VecDeque<Waiter>,
    /// The holder with this ticket started on state that a failed write
    /// covered: its commit gets this error.
    doomed: Option<(u64, Error)>,
    /// The last chain gave the store lock back because of the hand-off
    /// bound while local requests still waited: the next acquirer lets a
    /// waiter of another process go first.
    yield_next: bool,
    next_ticket: u64,
}

/// The time this process holds one session's store lock.
struct Chain {
    /// Wakes the keeper task.
    keeper: Arc<Notify>,
    /// The session as the last holder committed it (not durable yet if
    /// `pending` is set).
    current: Option<Record>,
    /// The write that makes the commits waiting in `acks` durable.
    pending: Option<Finish>,
    acks: Vec<Ack>,
    /// No more hand-offs: the next write releases the store lock and the next
    /// waiter takes it from the store.
    closing: bool,
    /// The keeper is writing (commits it covers are not acknowledged yet).
    writing: bool,
    /// The chain was closed by the hand-off bound while requests waited.
    bounded: bool,
    handoffs: u32,
    started: Instant,
}

impl Chain {
    /// Whether one more local request may get the session in memory.
    fn may_hand_off(&self, config: &EngineConfig) -> bool {
        !self.closing
            && self.handoffs < config.handoff_limit
            && self.started.elapsed() < config.handoff_window
    }

    /// The state to hand to the next holder: an expired session is none.
    fn live_state(&self) -> Option<Record> {
        self.current
            .as_ref()
            .filter(|r| r.is_live_at(crate::record::Timestamp::now()))
            .cloned()
    }
}

impl Queue {
    fn is_unused(&self) -> bool {
        self.chain.is_none() && !self.acquiring && self.turn.is_none() && self.waiters.is_empty()
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Give the turn to the first waiter still waiting, on the chain's state.
    fn hand_off(&mut self) {
        let Some(chain) = self.chain.as_mut() else { return };
        let state = chain.live_state();
        while let Some(w) = self.waiters.pop_front() {
            if w.wake.send(Wake::Turn(state.clone(), w.ticket)).is_ok() {
                self.turn = Some(w.ticket);
                chain.handoffs += 1;
                return;
            }
        }
    }

    /// With the store lock free, tell the first waiter to take it.
    fn promote(&mut self) {
        if self.chain.is_some() || self.acquiring || self.turn.is_some() {
            return;
        }
        while let Some(w) = self.waiters.pop_front() {
            if w.wake.send(Wake::Acquire).is_ok() {
                self.acquiring = true;
                return;
            }
        }
    }
}

/// A local holder's turn on a session: the record it starts from and the
/// right to commit. Dropping it unfinished gives the turn up, writing nothing.
pub(crate) struct Hold {
    engine: Arc<LockEngine>,
    key: SessionKey,
    ticket: u64,
    record: Option<Record>,
    done: bool,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("key", &self.key)
            .field("ticket", &self.ticket)
            .finish_non_exhaustive()
    }
}

impl LockEngine {
    pub(crate) fn new(store: Arc<dyn SessionStore>, config: EngineConfig, labels: Labels) -> Self {
        let caps = store.capabilities();
        let durable_while_locked = caps.durable_while_locked;
        // A row-lock queue in the database and the memory store's FIFO hand
        // the released lock to the waiter that queued first; lease keys and
        // flock leave it to whoever asks next, which would be us.
        let yields_to_others = matches!(caps.lock, LockKind::Lease | LockKind::FileLock);
        LockEngine {
            store,
            config,
            durable_while_locked,
            rotates_atomically: caps.rotates_atomically,
            yields_to_others,
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            labels,
        }
    }

    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, HashMap<SessionKey, Queue>> {
        let i = (self.hasher.hash_one(key) % SHARDS as u64) as usize;
        // Every update under this lock is a few assignments that leave the
        // queue consistent, so a poisoned lock is taken over.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run `f` on `key`'s queue and drop the queue if it is left unused.
    fn with_queue<T>(&self, key: &SessionKey, f: impl FnOnce(&mut Queue) -> T) -> T {
        let mut shard = self.shard(key);
        let q = shard.entry(key.clone()).or_default();
        let out = f(q);
        if q.is_unused() {
            shard.remove(key);
        }
        out
    }

    /// Wait for the turn on `key` (taking the store lock if this process does
    /// not hold it), at most `lock_wait`.
    pub(crate) async fn open(self: &Arc<Self>, key: &SessionKey) -> Result<Hold> {
        let started = Instant::now();
        let give_up_at = started + self.config.lock_wait;
        enum First {
            Turn(Option<Record>, u64),
            Acquire(u64),
            Wait(u64, oneshot::Receiver<Wake>),
        }
        let first = self.with_queue(key, |q| {
            let ticket = q.ticket();
            if q.turn.is_none() && q.waiters.is_empty() {
                if let Some(chain) = q.chain.as_mut() {
                    if chain.may_hand_off(&self.config) {
                        let state = chain.live_state();
                        chain.handoffs += 1;
                        q.turn = Some(ticket);
                        return First::Turn(state, ticket);
                    }
                    // Past the bound with nobody holding: the keeper gives
                    // the store lock back, and this request queues for it.
                    chain.bounded |= !chain.closing;
                    chain.closing = true;
                    chain.keeper.notify_one();
                }
                if q.chain.is_none() && !q.acquiring {
                    q.acquiring = true;
                    return First::Acquire(ticket);
                }
            }
            let (wake, woken) = oneshot::channel();
            q.waiters.push_back(Waiter { ticket, wake });
            First::Wait(ticket, woken)
        });
        let ticket = match first {
            First::Turn(record, ticket) => {
                self.labels.handed_off();
                return Ok(self.hold(key, ticket, record));
            }
            First::Acquire(ticket) => ticket,
            First::Wait(ticket, woken) => {
                let mut waiting = Waiting {
                    engine: self,
                    key,
                    ticket,
                    woken: Some(woken),
                };
                match waiting.wait(give_up_at).await {
                    Some(Wake::Turn(record, ticket)) => {
                        self.labels.handed_off();
                        return Ok(self.hold(key, ticket, record));
                    }
                    Some(Wake::Acquire) => ticket,
                    None => {
                        return Err(Error::LockTimeout {
                            waited: started.elapsed(),
                        })
                    }
                }
            }
        };
        self.acquire(key, ticket, give_up_at).await
    }

    /// Take the store lock for `key` (this task was made the acquirer) and
    /// start a chain with it.
    async fn acquire(self: &Arc<Self>, key: &SessionKey, ticket: u64, give_up_at: Instant) -> Result<Hold> {
        let mut acquiring = Acquiring {
            engine: self,
            key,
            armed: true,
        };
        if self.with_queue(key, |q| std::mem::take(&mut q.yield_next)) {
            // Long enough for another process's waiter, woken by our
            // release, to take the store lock first; short against the
            // hand-off window it follows.
            tokio::time::sleep(FAIRNESS_YIELD).await;
        }
        let options = LockOptions::new(
            self.config.lease,
            give_up_at.saturating_duration_since(Instant::now()),
        );
        let guard = self.store.lock(key, options).await;
        acquiring.armed = false;
        let guard = match guard {
            Ok(g) => g,
            Err(e) => {
                self.with_queue(key, |q| {
                    q.acquiring = false;
                    q.promote();
                });
                return Err(e);
            }
        };
        let record = guard.record().cloned();
        let keeper = Arc::new(Notify::new());
        self.with_queue(key, |q| {
            q.acquiring = false;
            q.turn = Some(ticket);
            q.chain = Some(Chain {
                keeper: Arc::clone(&keeper),
                current: record.clone(),
                pending: None,
                acks: Vec::new(),
                closing: false,
                writing: false,
                bounded: false,
                handoffs: 0,
                started: Instant::now(),
            });
        });
        tokio::spawn(keep_chain(Arc::clone(self), key.clone(), guard, keeper));
        Ok(self.hold(key, ticket, record))
    }

    fn hold(self: &Arc<Self>, key: &SessionKey, ticket: u64, record: Option<Record>) -> Hold {
        Hold {
            engine: Arc::clone(self),
            key: key.clone(),
            ticket,
            record,
            done: false,
        }
    }

    /// End `ticket`'s turn with `op`, hand the result to the next waiter,
    /// and return the receiver of the acknowledgement (or the error now).
    fn end_turn(
        &self,
        key: &SessionKey,
        ticket: u64,
        op: Finish,
        ack: bool,
    ) -> Result<Option<oneshot::Receiver<Result<Finished>>>> {
        self.with_queue(key, |q| {
            if q.turn != Some(ticket) {
                return Err(Error::LeaseLost);
            }
            q.turn = None;
            if let Some((doomed, _)) = &q.doomed {
                if *doomed == ticket {
                    let err = q.doomed.take().map_or(Error::LeaseLost, |(_, e)| e);
                    q.hand_off();
                    q.promote();
                    return Err(err);
                }
            }
            let Some(chain) = q.chain.as_mut() else {
                // The chain broke and nobody told this holder: its state
                // cannot be trusted.
                q.promote();
                return Err(Error::LeaseLost);
            };
            let op_kind = if matches!(op, Finish::Nothing) {
                OpKind::Nothing
            } else {
                OpKind::Write
            };
            match op {
                Finish::Save(write) => {
                    let created = chain.current.as_ref().map_or(write.created, |r| r.created);
                    let version = chain.current.as_ref().map_or(0, |r| r.version);
                    chain.current = Some(Record {
                        data: write.data.clone(),
                        version,
                        created,
                        accessed: write.accessed,
                        expires: write.expires,
                        principal: write.principal.clone(),
                    });
                    chain.pending = Some(Finish::Save(write));
                }
                Finish::Touch { accessed, expires } => {
                    if let Some(r) = chain.current.as_mut() {
                        r.accessed = accessed;
                        r.expires = expires;
                    }
                    chain.pending = Some(match chain.pending.take() {
                        Some(Finish::Save(mut w)) => {
                            w.accessed = accessed;
                            w.expires = expires;
                            Finish::Save(w)
                        }
                        _ => Finish::Touch { accessed, expires },
                    });
                }
                // A rotation carries the whole state under the new id, so it
                // supersedes whatever earlier holders left pending, and like
                // a delete it ends the chain on the old id.
                rotate @ Finish::Rotate { .. } => {
                    chain.current = None;
                    chain.pending = Some(rotate);
                    chain.closing = true;
                }
                Finish::Delete => {
                    chain.current = None;
                    chain.pending = Some(Finish::Delete);
                    // A delete ends the chain: waiters start over from the
                    // store and find the session gone, as if they had
                    // queued there.
                    chain.closing = true;
                }
                _ => {}
            }
            // A commit that changed nothing and saw only durable state has
            // nothing to wait for.
            let settled = chain.pending.is_none() && !chain.writing;
            let receiver = if ack && !(matches!(op_kind, OpKind::Nothing) && settled) {
                let (tx, rx) = oneshot::channel();
                chain.acks.push(tx);
                Some(rx)
            } else {
                None
            };
            if !q.waiters.is_empty() {
                if chain.may_hand_off(&self.config) {
                    q.hand_off();
                } else {
                    chain.bounded |= !chain.closing;
                    chain.closing = true;
                }
            }
            if let Some(chain) = q.chain.as_ref() {
                chain.keeper.notify_one();
            }
            Ok(receiver)
        })
    }
}

impl Hold {
    /// The record this turn starts from; `None` for a missing session.
    pub(crate) fn record(&self) -> Option<&Record> {
        self.record.as_ref()
    }

    /// Commit `op` and wait until a store write that contains it succeeded.
    pub(crate) async fn finish(mut self, op: Finish) -> Result<Finished> {
        self.done = true;
        let rx = self.engine.end_turn(&self.key, self.ticket, op, true)?;
        match rx {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err(Error::backend("the lock engine dropped a commit"))),
            None => Ok(Finished::Nothing),
        }
    }

    /// Give the turn up without writing and without waiting.
    pub(crate) fn abandon(mut self) {
        self.give_up();
    }

    fn give_up(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self
                .engine
                .end_turn(&self.key, self.ticket, Finish::Nothing, false);
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.give_up();
    }
}

/// A waiter's place in the queue; leaving (timeout or cancellation) takes
/// it out without disturbing the others.
struct Waiting<'a> {
    engine: &'a LockEngine,
    key: &'a SessionKey,
    ticket: u64,
    woken: Option<oneshot::Receiver<Wake>>,
}

impl Waiting<'_> {
    async fn wait(&mut self, give_up_at: Instant) -> Option<Wake> {
        let woken = self.woken.as_mut()?;
        match tokio::time::timeout_at(give_up_at.into(), woken).await {
            Ok(Ok(wake)) => {
                self.woken = None;
                Some(wake)
            }
            // The sender is only dropped with its queue entry, which
            // `leave` handles below.
            Ok(Err(_)) | Err(_) => self.leave(),
        }
    }

    /// Leave the queue. A wake that raced with the timeout is taken: a turn
    /// is a turn, whatever the clock says.
    fn leave(&mut self) -> Option<Wake> {
        let mut woken = self.woken.take()?;
        let ticket = self.ticket;
        self.engine.with_queue(self.key, |q| {
            let before = q.waiters.len();
            q.waiters.retain(|w| w.ticket != ticket);
            if q.waiters.len() < before {
                return None;
            }
            woken.try_recv().ok()
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        // Cancelled while queued, or between the wake and its use.
        match self.leave() {
            Some(Wake::Turn(..)) => {
                let _ = self
                    .engine
                    .end_turn(self.key, self.ticket, Finish::Nothing, false);
            }
            Some(Wake::Acquire) => self.engine.with_queue(self.key, |q| {
                q.acquiring = false;
                q.promote();
            }),
            None => {}
        }
    }
}

/// The acquirer's role, passed on if its task is cancelled mid-acquire.
struct Acquiring<'a> {
    engine: &'a LockEngine,
    key: &'a SessionKey,
    armed: bool,
}

impl Drop for Acquiring<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.with_queue(self.key, |q| {
                q.acquiring = false;
                q.promote();
            });
        }
    }
}

enum OpKind {
    Nothing,
    Write,
}

/// What the keeper does next.
enum Step {
    Write(Finish, Then, Vec<Ack>),
    Wait,
    Exit,
}

/// The chain keeper: owns the store's guard while this process holds the
/// session's store lock; renews it, writes the chain's commits in groups and
/// releases it when the queue is empty (or the hand-off bound is reached).
async fn keep_chain(
    engine: Arc<LockEngine>,
    key: SessionKey,
    mut guard: Box<dyn LockGuard>,
    keeper: Arc<Notify>,
) {
    let lease = engine.config.lease;
    let period = (lease / 3).max(Duration::from_millis(1));
    let mut renew_at = Instant::now() + period;
    // If this task ends any other way than below (a backend that panics, a
    // runtime shutting down), the chain must not be left holding the queue.
    let mut exit = KeeperExit {
        engine: &engine,
        key: &key,
        armed: true,
    };
    loop {
        let step = engine.with_queue(&key, |q| {
            let Some(chain) = q.chain.as_mut() else {
                return Step::Exit;
            };
            if q.turn.is_none() && !q.waiters.is_empty() && chain.may_hand_off(&engine.config) {
                q.hand_off();
            }
            let Some(chain) = q.chain.as_mut() else {
                return Step::Exit;
            };
            if q.turn.is_none() {
                // Nobody holds and nobody can be handed the session: the
                // queue drained, or the bound says give the store lock back.
                if !chain.closing && !q.waiters.is_empty() {
                    chain.bounded = true;
                }
                chain.closing = true;
                chain.writing = true;
                let op = chain.pending.take().unwrap_or(Finish::Nothing);
                return Step::Write(op, Then::Release, std::mem::take(&mut chain.acks));
            }
            if engine.durable_while_locked && chain.pending.is_some() {
                chain.writing = true;
                let op = chain.pending.take().unwrap_or(Finish::Nothing);
                return Step::Write(op, Then::Keep, std::mem::take(&mut chain.acks));
            }
            Step::Wait
        });
        match step {
            Step::Exit => {
                exit.armed = false;
                return;
            }
            Step::Wait => {
                if !engine.config.renew_lease {
                    keeper.notified().await;
                    continue;
                }
                tokio::select! {
                    () = keeper.notified() => {}
                    () = tokio::time::sleep_until(renew_at.into()) => {
                        renew_at = Instant::now() + period;
                        if let Err(e) = guard.renew(lease).await {
                            tracing::warn!(%key, error = %e, "session lease renewal failed");
                            exit.armed = false;
                            engine.break_chain(&key, e, Vec::new());
                            return;
                        }
                    }
                }
            }
            Step::Write(op, then, acks) => {
                // A chain that keeps writing never waits, so renew here too
                // (a kept write does not extend the lease).
                if engine.config.renew_lease && then == Then::Keep && Instant::now() >= renew_at {
                    renew_at = Instant::now() + period;
                    if let Err(e) = guard.renew(lease).await {
                        exit.armed = false;
                        engine.break_chain(&key, e, acks);
                        return;
                    }
                }
                let out = match op {
                    Finish::Rotate { to, write } if !engine.rotates_atomically => {
                        rotate_in_two_steps(engine.store.as_ref(), guard.as_mut(), to, write, then).await
                    }
                    op => guard.finish(op, then).await,
                };
                match out {
                    Ok(finished) => {
                        for ack in acks {
                            let _ = ack.send(Ok(finished));
                        }
                        if then == Then::Release {
                            exit.armed = false;
                            engine.with_queue(&key, |q| {
                                let bounded = q.chain.take().is_some_and(|c| c.bounded);
                                // Only a chain cut short by the bound owes other
                                // processes a turn: one that drained did not
                                // keep anyone out longer than one request.
                                q.yield_next = engine.yields_to_others && bounded && !q.waiters.is_empty();
                                q.promote();
                            });
                            return;
                        }
                        engine.with_queue(&key, |q| {
                            if let Some(chain) = q.chain.as_mut() {
                                chain.writing = false;
                                if let (Some(current), Some(written)) =
                                    (chain.current.as_mut(), guard.record())
                                {
                                    current.version = written.version;
                                }
                            }
                        });
                    }
                    Err(e) => {
                        exit.armed = false;
                        engine.break_chain(&key, e, acks);
                        return;
                    }
                }
            }
        }
    }
}

/// [`Finish::Rotate`] on a store that cannot do it in one step: delete the
/// old record under the lock first (a session deleted meanwhile is `Gone`
/// and nothing is created), then create the new one. A crash in between
/// leaves neither id live, never both, and never brings a revoked session
/// back.
async fn rotate_in_two_steps(
    store: &dyn SessionStore,
    guard: &mut dyn LockGuard,
    to: crate::id::SessionId,
    write: crate::record::RecordWrite,
    then: Then,
) -> Result<Finished> {
    write.check_size(store.capabilities().max_record_bytes)?;
    let new_key = SessionKey::new(guard.key().namespace.clone(), to);
    match guard.finish(Finish::Delete, then).await? {
        Finished::Deleted { was_live: true } => {}
        _ => return Err(Error::Gone),
    }
    store.create(&new_key, write).await?;
    Ok(Finished::Rotated)
}

/// Breaks the chain if its keeper stops without saying how.
struct KeeperExit<'a> {
    engine: &'a LockEngine,
    key: &'a SessionKey,
    armed: bool,
}

impl Drop for KeeperExit<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.engine.break_chain(
                self.key,
                Error::backend("the session's lock keeper stopped"),
                Vec::new(),
            );
        }
    }
}

impl LockEngine {
    /// A write or renewal failed: the store lock is gone. Every commit of the
    /// chain not yet acknowledged gets the error, and so does the holder
    /// working on state they built.
    fn break_chain(&self, key: &SessionKey, e: Error, mut acks: Vec<Ack>) {
        self.with_queue(key, |q| {
            if let Some(chain) = q.chain.take() {
                acks.extend(chain.acks);
            }
            for ack in acks {
                let _ = ack.send(Err(share(&e)));
            }
            if let Some(ticket) = q.turn {
                q.doomed = Some((ticket, share(&e)));
            }
            q.promote();
        });
    }
}

/// The same error for every commit a failed write covered. Variants that
/// carry a source keep it, behind a shared pointer.
fn share(e: &Error) -> Error {
    match e {
        Error::InvalidId { what, reason } => Error::InvalidId { what, reason },
        Error::LockTimeout { waited } => Error::LockTimeout { waited: *waited },
        Error::Conflict { expected, found } => Error::Conflict {
            expected: *expected,
            found: *found,
        },
        Error::LeaseLost => Error::LeaseLost,
        Error::Gone => Error::Gone,
        Error::Released => Error::Released,
        Error::Corrupt { reason } => Error::Corrupt {
            reason: reason.clone(),
        },
        Error::TooLarge { size, limit } => Error::TooLarge {
            size: *size,
            limit: *limit,
        },
        Error::Unavailable { source } => Error::unavailable(SharedSource(source.to_string())),
        Error::Unsupported(s) => Error::Unsupported(s.clone()),
        Error::Config(s) => Error::Config(s.clone()),
        other => Error::backend(SharedSource(other.to_string())),
    }
}

/// The message of an error that several commits report.
#[derive(Debug)]
struct SharedSource(String);

impl fmt::Display for SharedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SharedSource {}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::id::{Namespace, SessionId};
    use crate::record::{RecordWrite, Timestamp};
    use crate::store::{Capabilities, Cursor, IdPage, SweepBatch};
    use crate::{Manager, MemoryStore};

    /// The memory store, counting how often the engine takes its lock and
    /// how many writes it makes under it.
    #[derive(Debug, Default)]
    struct Counting {
        inner: MemoryStore,
        locks: AtomicUsize,
    }

    #[async_trait]
    impl SessionStore for Counting {
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
            self.inner.load(key).await
        }
        async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
            self.inner.create(key, write).await
        }
        async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
            self.inner.save(key, write, expected).await
        }
        async fn delete(&self, key: &SessionKey) -> Result<bool> {
            self.inner.delete(key).await
        }
        async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
            self.inner.touch(key, accessed, expires).await
        }
        async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<crate::Acquired> {
            self.locks.fetch_add(1, Ordering::Relaxed);
            self.inner.try_lock(key, options).await
        }
        async fn list_ids(
            &self,
            namespace: &Namespace,
            cursor: Option<Cursor>,
            limit: usize,
        ) -> Result<IdPage> {
            self.inner.list_ids(namespace, cursor, limit).await
        }
        async fn count(&self, namespace: &Namespace) -> Result<u64> {
            self.inner.count(namespace).await
        }
        async fn sweep_expired(
            &self,
            namespace: &Namespace,
            now: Timestamp,
            cursor: Option<Cursor>,
            limit: usize,
        ) -> Result<SweepBatch> {
            self.inner.sweep_expired(namespace, now, cursor, limit).await
        }
    }

    /// Six requests on one session at once: the first holds it while the
    /// five others arrive, as tabs do behind one slow request.
    async fn six_tabs(manager: &Manager, id: &SessionId) {
        let mut first = manager.open(Some(id)).await.unwrap();
        let tabs: Vec<_> = (0..5)
            .map(|_| {
                let (m, id) = (manager.clone(), id.clone());
                tokio::spawn(async move {
                    let mut s = m.open(Some(&id)).await?;
                    let h: u64 = s.get("hits")?.unwrap_or(0);
                    s.insert("hits", &(h + 1))?;
                    s.commit().await
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let h: u64 = first.get("hits").unwrap().unwrap_or(0);
        first.insert("hits", &(h + 1)).unwrap();
        first.commit().await.unwrap();
        for t in tabs {
            t.await.unwrap().unwrap();
        }
    }

    /// Six concurrent requests on one session take the store lock far fewer
    /// than six times: the others get the session in memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn six_tabs_share_one_store_lock() {
        let store = Arc::new(Counting::default());
        let m = Manager::new(store.clone(), Namespace::new("tabs").unwrap());
        let mut s = m.open(None).await.unwrap();
        s.insert("hits", &0u64).unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        for _ in 0..20 {
            six_tabs(&m, &id).await;
        }
        let r = m.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(r.get::<u64>("hits").unwrap(), Some(120));
        let locks = store.locks.load(Ordering::Relaxed);
        // One lock per burst when the six arrive while the first holds it.
        assert!(
            locks <= 40,
            "120 cycles took the store lock {locks} times: no hand-off"
        );
    }

    /// With hand-off turned off every request takes the store lock: the
    /// same count as above shows what hand-off saves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_handoff_every_request_takes_the_store_lock() {
        let store = Arc::new(Counting::default());
        let m = Manager::builder(store.clone(), Namespace::new("tabs").unwrap())
            .handoff(0, Duration::ZERO)
            .build()
            .unwrap();
        let mut s = m.open(None).await.unwrap();
        s.insert("hits", &0u64).unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        for _ in 0..5 {
            six_tabs(&m, &id).await;
        }
        let r = m.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(r.get::<u64>("hits").unwrap(), Some(30));
        assert_eq!(store.locks.load(Ordering::Relaxed), 30);
    }

    /// The queue table forgets a session once nobody uses it.
    #[tokio::test]
    async fn idle_queues_are_dropped() {
        let m = Manager::new(Arc::new(MemoryStore::new()), Namespace::new("q").unwrap());
        let mut s = m.open(None).await.unwrap();
        s.insert("hits", &0u64).unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        six_tabs(&m, &id).await;
        // The keeper task releases right after the last commit's ack.
        for _ in 0..100 {
            if m.engine().shards.iter().all(|s| s.lock().unwrap().is_empty()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("a queue was left behind after its session went idle");
    }
}
