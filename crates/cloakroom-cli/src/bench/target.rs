//! What the benchmark drives: one "request cycle" on some session library.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use async_trait::async_trait;
use cloakroom::{Manager, Namespace, Policy, Registry, SessionData, SessionId};

use super::payload::{Payload, HITS};

/// Why a cycle failed.
#[derive(Debug)]
pub enum CycleError {
    /// The library refused this attempt in a way a web app answers with a
    /// retry (lock wait timed out, optimistic conflict): try again.
    Retry,
    /// Anything else stops the benchmark.
    Fatal(anyhow::Error),
}

impl CycleError {
    /// A fatal error from anything convertible to [`anyhow::Error`].
    pub fn fatal(e: impl Into<anyhow::Error>) -> Self {
        CycleError::Fatal(e.into())
    }
}

impl From<cloakroom::Error> for CycleError {
    fn from(e: cloakroom::Error) -> Self {
        classify(e)
    }
}

impl From<anyhow::Error> for CycleError {
    fn from(e: anyhow::Error) -> Self {
        CycleError::Fatal(e)
    }
}

/// A session library under test, bound to one store.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    /// The library's session handle.
    type Id: Clone + Send + Sync + 'static;

    /// Backend name for reports (`sqlite`, `postgres`, …).
    fn backend(&self) -> String;
    /// Library name for reports (`cloakroom`, `tower-sessions`, …).
    fn library(&self) -> String;
    /// Concurrency policy for reports (`serialized`, `unlocked`, …).
    fn policy(&self) -> String;
    /// Whether several OS processes share this target's sessions.
    fn multi_process(&self) -> bool;

    /// Store a new session holding a fresh [`Payload`] and `hits = 0`.
    async fn create(&self) -> Result<Self::Id>;
    /// One request cycle on `id`: open (lock + load where the library
    /// locks), `hits += 1`, save (and unlock). Returns the time the open took
    /// — the lock wait, for a locking library.
    async fn cycle(&self, id: &Self::Id) -> Result<Duration, CycleError>;
    /// The committed `hits` of `id`.
    async fn hits(&self, id: &Self::Id) -> Result<u64>;
    /// Delete `id`.
    async fn remove(&self, id: &Self::Id) -> Result<()>;
    /// `id` as text, to hand to a worker process.
    fn id_to_text(&self, id: &Self::Id) -> String;
    /// Parse what [`Target::id_to_text`] wrote.
    fn id_from_text(&self, text: &str) -> Result<Self::Id>;
    /// The cloakroom manager behind this target, for the modes that measure
    /// its lock itself (handoff). `None`, the default, for other libraries.
    fn cloakroom(&self) -> Option<&CloakroomTarget> {
        None
    }
}

/// cloakroom itself: a [`Manager`] under one [`Policy`].
#[derive(Debug, Clone)]
pub struct CloakroomTarget {
    manager: Manager,
    backend: String,
}

impl CloakroomTarget {
    /// Open the store `url` with the built-in backends and a manager on
    /// `namespace` under `policy`.
    pub async fn open(url: &str, namespace: Namespace, policy: Policy) -> Result<Self> {
        Self::open_with(&cloakroom::registry(), url, namespace, policy).await
    }

    /// [`open`](Self::open) with the backends of `registry`.
    pub async fn open_with(
        registry: &Registry,
        url: &str,
        namespace: Namespace,
        policy: Policy,
    ) -> Result<Self> {
        let store = cloakroom::open_with(registry, url).await?;
        let manager = Manager::builder(store, namespace).policy(policy).build()?;
        Ok(CloakroomTarget {
            manager,
            backend: backend_of(url),
        })
    }

    /// The manager under test.
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Whether its policy locks sessions (the only one with a lock to hand off).
    pub fn is_serialized(&self) -> bool {
        self.manager.config().policy == Policy::Serialized
    }
}

/// The backend name of a store URL: its scheme, with aliases folded.
pub fn backend_of(url: &str) -> String {
    let scheme = url.split_once(':').map_or(url, |(s, _)| s).to_ascii_lowercase();
    match scheme.as_str() {
        "postgresql" => "postgres".into(),
        "mariadb" => "mysql".into(),
        "rediss" | "redis+cluster" => "redis".into(),
        _ => scheme,
    }
}

/// The name a report uses for a policy.
pub fn policy_name(p: Policy) -> &'static str {
    match p {
        Policy::Serialized => "serialized",
        Policy::Optimistic => "optimistic",
        Policy::Lossy => "lossy",
        _ => "other",
    }
}

pub(crate) fn classify(e: cloakroom::Error) -> CycleError {
    match e {
        cloakroom::Error::LockTimeout { .. } | cloakroom::Error::Conflict { .. } => CycleError::Retry,
        other => CycleError::Fatal(other.into()),
    }
}

#[async_trait]
impl Target for CloakroomTarget {
    type Id = SessionId;

    fn backend(&self) -> String {
        self.backend.clone()
    }

    fn library(&self) -> String {
        "cloakroom".into()
    }

    fn policy(&self) -> String {
        policy_name(self.manager.config().policy).into()
    }

    fn multi_process(&self) -> bool {
        self.manager.store().capabilities().multi_process
    }

    async fn create(&self) -> Result<SessionId> {
        let mut s = self.manager.open(None).await?;
        Payload::random().fill(s.data_mut())?;
        let id = s.id().clone();
        s.commit().await?;
        Ok(id)
    }

    async fn cycle(&self, id: &SessionId) -> Result<Duration, CycleError> {
        let started = Instant::now();
        let mut s = self.manager.open(Some(id)).await.map_err(classify)?;
        let waited = started.elapsed();
        if s.id() != id {
            return Err(CycleError::Fatal(anyhow!("benchmark session {id} vanished")));
        }
        let hits: u64 = s.get(HITS)?.unwrap_or(0);
        s.insert(HITS, &(hits + 1))?;
        s.commit().await.map_err(classify)?;
        Ok(waited)
    }

    async fn hits(&self, id: &SessionId) -> Result<u64> {
        let s = self.manager.open_read_only(id).await?;
        let s = s.ok_or_else(|| anyhow!("benchmark session {id} vanished"))?;
        Ok(s.get(HITS)?.unwrap_or(0))
    }

    async fn remove(&self, id: &SessionId) -> Result<()> {
        self.manager.delete(id).await?;
        Ok(())
    }

    fn id_to_text(&self, id: &SessionId) -> String {
        id.as_str().to_owned()
    }

    fn id_from_text(&self, text: &str) -> Result<SessionId> {
        Ok(SessionId::parse(text)?)
    }

    fn cloakroom(&self) -> Option<&CloakroomTarget> {
        Some(self)
    }
}

/// Decode `hits` from encoded cloakroom session bytes (for baselines that
/// move the same bytes without the Manager).
pub fn hits_of_encoded(bytes: &[u8]) -> Result<u64> {
    Ok(SessionData::decode(bytes)?.get(HITS)?.unwrap_or(0))
}
