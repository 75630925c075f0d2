//! What cloakroom reports about itself: `tracing` spans and events, and
//! metrics through the [`metrics`] facade (install any recorder, e.g.
//! `metrics-exporter-prometheus`, to collect them; without one they cost a
//! few nanoseconds). A [`Manager`](crate::Manager) registers its metrics
//! when it is built, so install the recorder before building managers.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `cloakroom_lock_wait_seconds` | histogram | backend, namespace | time a `Serialized` open waited for its session (hand-offs included) |
//! | `cloakroom_lock_timeouts_total` | counter | backend, namespace | opens that gave up after `lock_wait` |
//! | `cloakroom_leases_lost_total` | counter | backend, namespace | commits refused because the lease ran out (another holder may have the session) |
//! | `cloakroom_conflicts_total` | counter | backend, namespace | `Optimistic` commits refused because someone saved first |
//! | `cloakroom_handoffs_total` | counter | backend, namespace | sessions passed from one request to the next in memory, without a store round trip |
//! | `cloakroom_store_operation_seconds` | histogram | backend, operation, outcome | every store call, by operation (`load`, `lock`, `finish`, …) and outcome (`ok` or the error kind) |
//! | `cloakroom_sessions_swept_total` | counter | backend, namespace | expired sessions a sweep deleted |
//! | `cloakroom_sweep_failures_total` | counter | backend, namespace | sweeps that stopped on an error (the sweeper retries) |
//!
//! Spans: `cloakroom.open` and `cloakroom.commit` per session (fields
//! `backend`, `namespace`, `session` — the first 8 characters of the id's
//! SHA-256, never the id, which is a bearer token — and `outcome`), and
//! `cloakroom.store` per store call at `DEBUG` (`backend`, `operation`,
//! `outcome`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{counter, describe_counter, describe_histogram, histogram, Counter, Histogram, Unit};
use tracing::Instrument;

use crate::error::{Error, Result};
use crate::id::{Namespace, SessionId, SessionKey};
use crate::record::{Record, RecordWrite, Timestamp};
use crate::store::{
    Acquired, Capabilities, Cursor, Finish, Finished, HeldSession, IdPage, LockGuard, LockOptions,
    SessionStore, SweepBatch, Then,
};

pub(crate) const LOCK_WAIT: &str = "cloakroom_lock_wait_seconds";
pub(crate) const LOCK_TIMEOUTS: &str = "cloakroom_lock_timeouts_total";
pub(crate) const LEASES_LOST: &str = "cloakroom_leases_lost_total";
pub(crate) const CONFLICTS: &str = "cloakroom_conflicts_total";
pub(crate) const HANDOFFS: &str = "cloakroom_handoffs_total";
pub(crate) const STORE_OPERATION: &str = "cloakroom_store_operation_seconds";
pub(crate) const SWEPT: &str = "cloakroom_sessions_swept_total";
pub(crate) const SWEEP_FAILURES: &str = "cloakroom_sweep_failures_total";

/// Describe every cloakroom metric to the installed recorder (units and help
/// texts, for exporters that print them). Call once after installing it.
pub fn describe_metrics() {
    describe_histogram!(
        LOCK_WAIT,
        Unit::Seconds,
        "Time a Serialized open waited for its session's lock."
    );
    describe_counter!(LOCK_TIMEOUTS, "Opens that gave up waiting for a session's lock.");
    describe_counter!(LEASES_LOST, "Commits refused because the lock's lease ran out.");
    describe_counter!(
        CONFLICTS,
        "Optimistic commits refused because another request saved first."
    );
    describe_counter!(
        HANDOFFS,
        "Sessions handed from one request to the next without a store round trip."
    );
    describe_histogram!(
        STORE_OPERATION,
        Unit::Seconds,
        "Latency of each session store call."
    );
    describe_counter!(SWEPT, "Expired sessions deleted by sweeps.");
    describe_counter!(SWEEP_FAILURES, "Sweeps that stopped on a store error.");
}

/// The session-level metrics of one manager, registered once when it is
/// built: the request path then only bumps handles, with no label strings
/// to build. Install the metrics recorder before building managers.
#[derive(Clone, Debug)]
pub(crate) struct Labels {
    backend: &'static str,
    namespace: Arc<str>,
    lock_wait: Histogram,
    handoffs: Counter,
    lock_timeouts: Counter,
    leases_lost: Counter,
    conflicts: Counter,
    swept: Counter,
    sweep_failures: Counter,
}

impl Labels {
    pub(crate) fn new(backend: &'static str, namespace: &Namespace) -> Self {
        let pairs = [
            ("backend", backend.to_owned()),
            ("namespace", namespace.as_str().to_owned()),
        ];
        Labels {
            backend,
            namespace: Arc::from(namespace.as_str()),
            lock_wait: histogram!(LOCK_WAIT, &pairs),
            handoffs: counter!(HANDOFFS, &pairs),
            lock_timeouts: counter!(LOCK_TIMEOUTS, &pairs),
            leases_lost: counter!(LEASES_LOST, &pairs),
            conflicts: counter!(CONFLICTS, &pairs),
            swept: counter!(SWEPT, &pairs),
            sweep_failures: counter!(SWEEP_FAILURES, &pairs),
        }
    }

    pub(crate) fn lock_waited(&self, waited: Duration) {
        self.lock_wait.record(waited.as_secs_f64());
    }

    pub(crate) fn handed_off(&self) {
        self.handoffs.increment(1);
    }

    pub(crate) fn swept(&self, deleted: u64) {
        self.swept.increment(deleted);
    }

    pub(crate) fn sweep_failed(&self) {
        self.sweep_failures.increment(1);
    }

    /// Count the errors that say something about locking.
    pub(crate) fn failed(&self, error: &Error) {
        match error {
            Error::LockTimeout { .. } => self.lock_timeouts.increment(1),
            Error::LeaseLost => self.leases_lost.increment(1),
            Error::Conflict { .. } => self.conflicts.increment(1),
            _ => {}
        }
    }

    /// A span for one session step (`cloakroom.open`, `cloakroom.commit`),
    /// its `outcome` filled in by [`Labels::outcome`].
    pub(crate) fn session_span(&self, name: &'static str, id: Option<&SessionId>) -> tracing::Span {
        // Shown only if a subscriber records the span: the hash is not
        // computed otherwise.
        let session = ShortHash(id);
        match name {
            "cloakroom.open" => tracing::info_span!(
                "cloakroom.open",
                backend = self.backend,
                namespace = %self.namespace,
                session = %session,
                outcome = tracing::field::Empty,
            ),
            _ => tracing::info_span!(
                "cloakroom.commit",
                backend = self.backend,
                namespace = %self.namespace,
                session = %session,
                outcome = tracing::field::Empty,
            ),
        }
    }

    /// Record how a step ended on its span, and count locking errors.
    pub(crate) fn outcome<T>(&self, span: &tracing::Span, result: &Result<T>) {
        match result {
            Ok(_) => {
                span.record("outcome", "ok");
            }
            Err(e) => {
                span.record("outcome", outcome_of(e));
                self.failed(e);
            }
        }
    }
}

/// The first 8 characters of the SHA-256 of an id (`new` without one):
/// enough to follow one session through logs, useless as a credential.
struct ShortHash<'a>(Option<&'a SessionId>);

impl std::fmt::Display for ShortHash<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => f.write_str(&id.hashed().as_str()[..8]),
            None => f.write_str("new"),
        }
    }
}

/// The error kind, as a label value.
pub(crate) fn outcome_of(error: &Error) -> &'static str {
    match error {
        Error::InvalidId { .. } => "invalid_id",
        Error::LockTimeout { .. } => "lock_timeout",
        Error::Conflict { .. } => "conflict",
        Error::LeaseLost => "lease_lost",
        Error::Gone => "gone",
        Error::Corrupt { .. } => "corrupt",
        Error::TooLarge { .. } => "too_large",
        Error::Decode { .. } => "decode",
        Error::Encode { .. } => "encode",
        Error::Unavailable { .. } => "unavailable",
        Error::Unsupported(_) => "unsupported",
        Error::Config(_) => "config",
        _ => "backend",
    }
}

/// A store that times every call (`cloakroom_store_operation_seconds`) in a
/// `cloakroom.store` span. The [`Manager`](crate::Manager) wraps its store in
/// one, so every backend is measured the same way.
#[derive(Debug)]
pub(crate) struct MeteredStore {
    inner: Arc<dyn SessionStore>,
    meter: Arc<Meter>,
}

impl MeteredStore {
    pub(crate) fn wrap(inner: Arc<dyn SessionStore>) -> Arc<dyn SessionStore> {
        let meter = Arc::new(Meter::new(inner.capabilities().name));
        Arc::new(MeteredStore { inner, meter })
    }
}

/// A store call, as the `operation` label names it.
#[derive(Clone, Copy, Debug)]
enum Op {
    Migrate,
    Load,
    Create,
    Save,
    Delete,
    Touch,
    TryLock,
    Lock,
    ListIds,
    Count,
    ListByPrincipal,
    Sweep,
    Renew,
    Finish,
}

impl Op {
    const ALL: [Op; 14] = [
        Op::Migrate,
        Op::Load,
        Op::Create,
        Op::Save,
        Op::Delete,
        Op::Touch,
        Op::TryLock,
        Op::Lock,
        Op::ListIds,
        Op::Count,
        Op::ListByPrincipal,
        Op::Sweep,
        Op::Renew,
        Op::Finish,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Migrate => "migrate",
            Op::Load => "load",
            Op::Create => "create",
            Op::Save => "save",
            Op::Delete => "delete",
            Op::Touch => "touch",
            Op::TryLock => "try_lock",
            Op::Lock => "lock",
            Op::ListIds => "list_ids",
            Op::Count => "count",
            Op::ListByPrincipal => "list_by_principal",
            Op::Sweep => "sweep",
            Op::Renew => "renew",
            Op::Finish => "finish",
        }
    }
}

/// The latency histograms of one store, the successful ones registered up
/// front (one per operation) so that the common path builds no labels.
#[derive(Debug)]
struct Meter {
    backend: &'static str,
    ok: Vec<Histogram>,
}

impl Meter {
    fn new(backend: &'static str) -> Self {
        let ok = Op::ALL
            .iter()
            .map(|op| histogram!(STORE_OPERATION, "backend" => backend, "operation" => op.name(), "outcome" => "ok"))
            .collect();
        Meter { backend, ok }
    }

    async fn measured<T>(&self, op: Op, call: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let span = tracing::debug_span!(
            "cloakroom.store",
            backend = self.backend,
            operation = op.name(),
            outcome = tracing::field::Empty
        );
        let started = Instant::now();
        let result = call.instrument(span.clone()).await;
        let seconds = started.elapsed().as_secs_f64();
        match &result {
            Ok(_) => {
                span.record("outcome", "ok");
                if let Some(histogram) = self.ok.get(op as usize) {
                    histogram.record(seconds);
                }
            }
            Err(e) => {
                let outcome = outcome_of(e);
                span.record("outcome", outcome);
                histogram!(STORE_OPERATION, "backend" => self.backend, "operation" => op.name(), "outcome" => outcome)
                    .record(seconds);
            }
        }
        result
    }
}

#[async_trait]
impl SessionStore for MeteredStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn migrate(&self) -> Result<()> {
        self.meter.measured(Op::Migrate, self.inner.migrate()).await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        self.meter.measured(Op::Load, self.inner.load(key)).await
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.meter
            .measured(Op::Create, self.inner.create(key, write))
            .await
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.meter
            .measured(Op::Save, self.inner.save(key, write, expected))
            .await
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        self.meter.measured(Op::Delete, self.inner.delete(key)).await
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        self.meter
            .measured(Op::Touch, self.inner.touch(key, accessed, expires))
            .await
    }

    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        let acquired = self
            .meter
            .measured(Op::TryLock, self.inner.try_lock(key, options))
            .await?;
        Ok(match acquired {
            Acquired::Locked(guard) => Acquired::Locked(self.metered(guard)),
            busy => busy,
        })
    }

    async fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockGuard>> {
        let guard = self
            .meter
            .measured(Op::Lock, self.inner.lock(key, options))
            .await?;
        Ok(self.metered(guard))
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        self.meter
            .measured(Op::ListIds, self.inner.list_ids(namespace, cursor, limit))
            .await
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        self.meter.measured(Op::Count, self.inner.count(namespace)).await
    }

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &crate::Principal,
    ) -> Result<Vec<crate::SessionSummary>> {
        self.meter
            .measured(
                Op::ListByPrincipal,
                self.inner.list_by_principal(namespace, principal),
            )
            .await
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        self.meter
            .measured(Op::Sweep, self.inner.sweep_expired(namespace, now, cursor, limit))
            .await
    }
}

impl MeteredStore {
    fn metered(&self, inner: Box<dyn LockGuard>) -> Box<dyn LockGuard> {
        Box::new(MeteredGuard {
            inner,
            meter: Arc::clone(&self.meter),
        })
    }
}

#[derive(Debug)]
struct MeteredGuard {
    inner: Box<dyn LockGuard>,
    meter: Arc<Meter>,
}

#[async_trait]
impl LockGuard for MeteredGuard {
    fn held(&self) -> &HeldSession {
        self.inner.held()
    }

    async fn renew(&mut self, lease: Duration) -> Result<()> {
        self.meter.measured(Op::Renew, self.inner.renew(lease)).await
    }

    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished> {
        self.meter.measured(Op::Finish, self.inner.finish(op, then)).await
    }
}
