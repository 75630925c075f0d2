//! A store decorator that counts every call, so a case can check that a
//! route costs no store call at all.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloakroom_core::{
    async_trait, Acquired, Capabilities, Cursor, Finish, Finished, HeldSession, IdPage, LockGuard,
    LockOptions, Namespace, Record, RecordWrite, SessionKey, SessionStore, SweepBatch, Then, Timestamp,
};

type Calls = Arc<Mutex<BTreeMap<&'static str, u64>>>;

fn bump(calls: &Calls, method: &'static str) {
    *calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(method)
        .or_default() += 1;
}

/// Delegates every call to the real store and counts it by method name
/// (`lock` for both `lock` and `try_lock`; `guard.finish`, `guard.renew`
/// for what is done through a lock). Not a mock: the real backend does all
/// the work.
#[derive(Debug)]
pub struct CountingStore {
    /// The real store.
    pub inner: Arc<dyn SessionStore>,
    calls: Calls,
}

impl CountingStore {
    /// Count the calls to `inner`.
    pub fn new(inner: Arc<dyn SessionStore>) -> Self {
        CountingStore {
            inner,
            calls: Calls::default(),
        }
    }

    /// Calls so far, by method.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many calls so far.
    pub fn total(&self) -> u64 {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// Start counting from zero.
    pub fn reset(&self) {
        self.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn note(&self, method: &'static str) {
        bump(&self.calls, method);
    }

    fn guard(&self, inner: Box<dyn LockGuard>) -> Box<dyn LockGuard> {
        Box::new(CountingGuard {
            inner,
            calls: Arc::clone(&self.calls),
        })
    }
}

#[derive(Debug)]
struct CountingGuard {
    inner: Box<dyn LockGuard>,
    calls: Calls,
}

#[async_trait]
impl LockGuard for CountingGuard {
    fn held(&self) -> &HeldSession {
        self.inner.held()
    }
    async fn renew(&mut self, lease: Duration) -> cloakroom_core::Result<()> {
        bump(&self.calls, "guard.renew");
        self.inner.renew(lease).await
    }
    async fn finish(&mut self, op: Finish, then: Then) -> cloakroom_core::Result<Finished> {
        bump(&self.calls, "guard.finish");
        self.inner.finish(op, then).await
    }
}

#[async_trait]
impl SessionStore for CountingStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn migrate(&self) -> cloakroom_core::Result<()> {
        self.note("migrate");
        self.inner.migrate().await
    }
    async fn load(&self, key: &SessionKey) -> cloakroom_core::Result<Option<Record>> {
        self.note("load");
        self.inner.load(key).await
    }
    async fn create(&self, key: &SessionKey, write: RecordWrite) -> cloakroom_core::Result<Record> {
        self.note("create");
        self.inner.create(key, write).await
    }
    async fn save(
        &self,
        key: &SessionKey,
        write: RecordWrite,
        expected: Option<u64>,
    ) -> cloakroom_core::Result<u64> {
        self.note("save");
        self.inner.save(key, write, expected).await
    }
    async fn delete(&self, key: &SessionKey) -> cloakroom_core::Result<bool> {
        self.note("delete");
        self.inner.delete(key).await
    }
    async fn touch(
        &self,
        key: &SessionKey,
        accessed: Timestamp,
        expires: Timestamp,
    ) -> cloakroom_core::Result<bool> {
        self.note("touch");
        self.inner.touch(key, accessed, expires).await
    }
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> cloakroom_core::Result<Acquired> {
        self.note("lock");
        Ok(match self.inner.try_lock(key, options).await? {
            Acquired::Locked(inner) => Acquired::Locked(self.guard(inner)),
            busy => busy,
        })
    }
    async fn lock(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> cloakroom_core::Result<Box<dyn LockGuard>> {
        self.note("lock");
        Ok(self.guard(self.inner.lock(key, options).await?))
    }
    async fn list_ids(
        &self,
        ns: &Namespace,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom_core::Result<IdPage> {
        self.note("list_ids");
        self.inner.list_ids(ns, cursor, limit).await
    }
    async fn count(&self, ns: &Namespace) -> cloakroom_core::Result<u64> {
        self.note("count");
        self.inner.count(ns).await
    }
    async fn list_by_principal(
        &self,
        ns: &Namespace,
        principal: &cloakroom_core::Principal,
    ) -> cloakroom_core::Result<Vec<cloakroom_core::SessionSummary>> {
        self.note("list_by_principal");
        self.inner.list_by_principal(ns, principal).await
    }
    async fn sweep_expired(
        &self,
        ns: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom_core::Result<SweepBatch> {
        self.note("sweep_expired");
        self.inner.sweep_expired(ns, now, cursor, limit).await
    }
}
