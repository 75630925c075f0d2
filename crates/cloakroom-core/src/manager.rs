//! The per-application entry point: a [`Manager`] opens [`Session`]s of one
//! namespace in one store under one [`Policy`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, TryStreamExt};

use crate::codec::{Expiry, SessionData};
use crate::engine::{EngineConfig, LockEngine};
use crate::error::{Error, Result};
use crate::id::{Namespace, Principal, SessionId, SessionKey};
use crate::record::{Record, Timestamp};
use crate::seal::Keyring;
use crate::session::{ReadOnlySession, Session};
use crate::store::{Cursor, Finish, Finished, SessionStore, SessionSummary, SweepBatch};
use crate::sweeper::Sweeper;
use crate::telemetry::{Labels, MeteredStore};

/// How concurrent requests on one session are kept from losing each other's
/// updates: lock, detect, or accept the loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Policy {
    /// One request per session at a time: opening takes the session's lock
    /// and holds it until commit, rollback or drop. Others wait in arrival
    /// order up to the wait timeout, then get [`Error::LockTimeout`]. No update
    /// is ever lost.
    #[default]
    Serialized,
    /// No lock; a save carries the version it read, and if someone saved
    /// meanwhile it fails with [`Error::Conflict`] so the caller can retry.
    Optimistic,
    /// No lock and no check: the last save wins and concurrent updates are
    /// lost. Only for data where that is acceptable.
    Lossy,
}

/// Settings of a [`Manager`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Concurrency policy.
    pub policy: Policy,
    /// A session not used for this long expires.
    pub idle_timeout: Duration,
    /// A session expires this long after creation, however busy.
    pub absolute_timeout: Option<Duration>,
    /// Lease of a session lock; renewed every third of it while the session
    /// is held, so a long request keeps it. A killed holder's lock is taken
    /// over at once on every built-in backend; the lease is what frees the
    /// lock of a holder that is frozen (a stopped process or VM) or cut off
    /// but still looks alive. 10 s by default: short enough that a visitor
    /// behind such a holder is not kept long, long enough that renewals
    /// (one store write per held session every 3.3 s) stay rare.
    pub lease: Duration,
    /// Whether an open session renews its lease in the background.
    pub renew_lease: bool,
    /// How long to wait for another request's lock.
    pub lock_wait: Duration,
    /// An unchanged session is touched (expiry slid forward) at most this
    /// often, so read-mostly traffic does not write on every request.
    pub touch_interval: Duration,
    /// Largest encoded session accepted; above it a commit fails with
    /// [`Error::TooLarge`] before anything is written.
    pub max_record_bytes: usize,
    /// Refuse a store that cannot serve several processes (the memory store).
    pub require_multi_process: bool,
    /// Early hand-off: at most this many local requests in a row get the
    /// session from the previous one in memory before the store lock is
    /// given back, so that a waiter in another process gets its turn.
    pub handoff_limit: u32,
    /// Early hand-off: the store lock is given back between two local
    /// requests once this process has held it this long.
    pub handoff_window: Duration,
    /// Key records by [`SessionId::hashed`] instead of the id itself, so a
    /// leaked store (a backup, a replica, a `KEYS` dump) holds no usable
    /// session cookie. Listeners, listings and the CLI then see the hashed
    /// ids. Switching this on logs every existing session out.
    pub hash_ids: bool,
    /// Encryption at rest: with a keyring, session data is stored sealed
    /// with AES-256-GCM under its first key, bound to the namespace and the
    /// stored id, and read with any of its keys (see [`Keyring`]). The id,
    /// version and times stay in clear. Records written before a keyring was
    /// configured are still read (and sealed at their next write; `cloakroom
    /// rekey` seals them all at once); plain data is never written again. A
    /// record that does not open — a key missing from the keyring, a record
    /// moved to another id — makes opening the session fail with
    /// [`Error::Corrupt`] and leaves the record as it is. Without a keyring,
    /// a sealed record is [`Error::Corrupt`] too.
    pub keyring: Option<Keyring>,
    /// At most this many live sessions per principal: a commit that gives a
    /// session a principal with this many already revokes the oldest others
    /// (by creation), each under its lock, with delete listeners. `None`
    /// (the default): no limit.
    pub max_sessions_per_principal: Option<usize>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            policy: Policy::Serialized,
            idle_timeout: Duration::from_secs(24 * 3600),
            absolute_timeout: None,
            lease: Duration::from_secs(10),
            renew_lease: true,
            lock_wait: Duration::from_secs(10),
            touch_interval: Duration::from_secs(60),
            max_record_bytes: 1024 * 1024,
            require_multi_process: false,
            handoff_limit: 256,
            handoff_window: Duration::from_millis(20),
            hash_ids: false,
            keyring: None,
            max_sessions_per_principal: None,
        }
    }
}

/// A session that ended, as a [`SessionListener`] sees it: its key, the
/// record as it was last stored, and its data.
#[derive(Clone, Debug)]
pub struct EndedSession {
    /// Namespace and stored id (the hash of the id when the manager hashes
    /// ids).
    pub key: SessionKey,
    /// The record as stored when the session ended.
    pub record: Record,
    data: Option<SessionData>,
}

impl EndedSession {
    /// The session's data; `None` if the stored bytes did not decode (a
    /// corrupt record, or one sealed with a key this manager does not have),
    /// which is logged.
    pub fn data(&self) -> Option<&SessionData> {
        self.data.as_ref()
    }

    /// Who the session belonged to.
    pub fn principal(&self) -> Option<&Principal> {
        self.record.principal.as_ref()
    }
}

/// Called when sessions end, so data an application keeps outside the store
/// (an uploaded file named in the session, a cache entry) can follow its
/// sessions.
///
/// Listeners run on the task that deleted or swept, after the record is
/// gone; keep them short or spawn. Both methods do nothing by default.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloakroom_core::Result<()> {
/// use std::sync::Arc;
/// use cloakroom_core::{async_trait, EndedSession, Manager, MemoryStore, Namespace, SessionListener};
///
/// /// Removes the upload a session names when the session ends, however it ends.
/// struct RemoveUpload;
///
/// #[async_trait]
/// impl SessionListener for RemoveUpload {
///     async fn on_delete(&self, ended: &EndedSession) {
///         self.remove(ended).await
///     }
///     async fn on_expire(&self, ended: &EndedSession) {
///         self.remove(ended).await
///     }
/// }
///
/// impl RemoveUpload {
///     async fn remove(&self, ended: &EndedSession) {
///         let upload = ended.data().and_then(|d| d.get::<String>("upload").ok().flatten());
///         if let Some(path) = upload {
///             // A short blocking call; a slow disk would call for spawn_blocking.
///             let _ = std::fs::remove_file(path);
///         }
///     }
/// }
///
/// let manager = Manager::builder(Arc::new(MemoryStore::new()), Namespace::new("shop")?)
///     .listener(Arc::new(RemoveUpload))
///     .build()?;
/// let upload = std::env::temp_dir().join(format!("upload-{}", std::process::id()));
/// std::fs::write(&upload, b"half a video").unwrap();
///
/// let mut session = manager.open(None).await?;
/// session.insert("upload", &upload.display().to_string())?;
/// let id = session.id().clone();
/// session.commit().await?;
///
/// manager.delete(&id).await?; // a logout from elsewhere, say
/// assert!(!upload.exists(), "the listener removed the upload");
/// # Ok(()) }
/// ```
///
/// - `on_delete` runs for [`Session::delete`], [`Session::flush`],
///   [`Manager::delete`], [`Manager::revoke_all`] and the per-principal cap,
///   and for `cloakroom rm` when the CLI is built with the listener.
/// - `on_expire` runs for every record a sweep deletes:
///   [`Manager::sweep_expired`], [`Manager::spawn_sweeper`] and
///   `cloakroom gc` built with the listener. A session that expires is seen
///   by the first sweep after its expiry; on Redis that sweep must come
///   within the store's `expired_grace` (Redis drops the record itself
///   after that, unseen).
#[async_trait]
pub trait SessionListener: Send + Sync + 'static {
    /// A session was deleted.
    async fn on_delete(&self, _ended: &EndedSession) {}
    /// A session was removed by a sweep because it expired.
    async fn on_expire(&self, _ended: &EndedSession) {}
}

/// What a full sweep did: `(deleted, remaining)`, so an operator sees both
/// the work done and what is left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Expired records deleted.
    pub deleted: u64,
    /// Live records left in the namespace after the sweep.
    pub remaining: u64,
}

/// Opens sessions of one namespace. Cheap to clone; share one per application.
#[derive(Clone)]
pub struct Manager {
    pub(crate) inner: Arc<ManagerInner>,
}

pub(crate) struct ManagerInner {
    pub(crate) engine: Arc<LockEngine>,
    pub(crate) store: Arc<dyn SessionStore>,
    pub(crate) namespace: Namespace,
    pub(crate) config: SessionConfig,
    pub(crate) listeners: Vec<Arc<dyn SessionListener>>,
    pub(crate) labels: Labels,
}

impl fmt::Debug for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manager")
            .field("store", &self.inner.store)
            .field("namespace", &self.inner.namespace)
            .field("config", &self.inner.config)
            .field("listeners", &self.inner.listeners.len())
            .finish()
    }
}

/// Builds a [`Manager`].
pub struct ManagerBuilder {
    store: Arc<dyn SessionStore>,
    namespace: Namespace,
    config: SessionConfig,
    listeners: Vec<Arc<dyn SessionListener>>,
}

impl ManagerBuilder {
    /// Replace the whole configuration.
    pub fn config(mut self, config: SessionConfig) -> Self {
        self.config = config;
        self
    }

    /// Set the concurrency policy.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
        self
    }

    /// Set the idle timeout.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// Set the absolute timeout.
    pub fn absolute_timeout(mut self, d: Option<Duration>) -> Self {
        self.config.absolute_timeout = d;
        self
    }

    /// Set the lock lease.
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.lease = d;
        self
    }

    /// Turn background lease renewal on or off.
    pub fn renew_lease(mut self, on: bool) -> Self {
        self.config.renew_lease = on;
        self
    }

    /// Set the lock wait timeout.
    pub fn lock_wait(mut self, d: Duration) -> Self {
        self.config.lock_wait = d;
        self
    }

    /// Set the minimum interval between touches of an unchanged session.
    pub fn touch_interval(mut self, d: Duration) -> Self {
        self.config.touch_interval = d;
        self
    }

    /// Set the size limit of an encoded session.
    pub fn max_record_bytes(mut self, n: usize) -> Self {
        self.config.max_record_bytes = n;
        self
    }

    /// Refuse stores that cannot serve several processes.
    pub fn require_multi_process(mut self, on: bool) -> Self {
        self.config.require_multi_process = on;
        self
    }

    /// Bound early hand-off: at most `limit` local hand-offs in a row and
    /// at most `window` of holding the store lock before it is given back.
    /// `limit = 0` turns hand-off off: every request takes the store lock.
    pub fn handoff(mut self, limit: u32, window: Duration) -> Self {
        self.config.handoff_limit = limit;
        self.config.handoff_window = window;
        self
    }

    /// Store a hash of each id instead of the id (see [`SessionConfig::hash_ids`]).
    pub fn hash_ids(mut self, on: bool) -> Self {
        self.config.hash_ids = on;
        self
    }

    /// Seal session data at rest with `keyring` (see [`SessionConfig::keyring`]).
    pub fn keyring(mut self, keyring: Keyring) -> Self {
        self.config.keyring = Some(keyring);
        self
    }

    /// At most `limit` live sessions per principal (see
    /// [`SessionConfig::max_sessions_per_principal`]).
    pub fn max_sessions_per_principal(mut self, limit: Option<usize>) -> Self {
        self.config.max_sessions_per_principal = limit;
        self
    }

    /// Add a listener for deletes and expiries.
    pub fn listener(mut self, listener: Arc<dyn SessionListener>) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Check the configuration against the store and build the manager.
    pub fn build(self) -> Result<Manager> {
        let caps = self.store.capabilities();
        if self.config.require_multi_process && !caps.multi_process {
            return Err(Error::Unsupported(format!(
                "{:?} keeps sessions in one process, but this manager requires a store shared by several processes",
                self.store
            )));
        }
        if self.config.lease.is_zero() {
            return Err(Error::Config("the lock lease must be longer than zero".into()));
        }
        if self.config.idle_timeout.is_zero() {
            return Err(Error::Config("the idle timeout must be longer than zero".into()));
        }
        if self.config.max_sessions_per_principal == Some(0) {
            return Err(Error::Config(
                "max_sessions_per_principal must be at least 1 (None means no limit)".into(),
            ));
        }
        Ok(self.assemble())
    }

    /// The manager, for a configuration already known to be valid.
    fn assemble(self) -> Manager {
        let caps = self.store.capabilities();
        // Every call the manager and its lock engine make goes through one
        // meter, whatever the backend.
        let store = MeteredStore::wrap(self.store);
        let labels = Labels::new(caps.name, &self.namespace);
        let engine = Arc::new(LockEngine::new(
            Arc::clone(&store),
            EngineConfig {
                lease: self.config.lease,
                renew_lease: self.config.renew_lease,
                lock_wait: self.config.lock_wait,
                handoff_limit: self.config.handoff_limit,
                handoff_window: self.config.handoff_window,
            },
            labels.clone(),
        ));
        Manager {
            inner: Arc::new(ManagerInner {
                engine,
                store,
                labels,
                namespace: self.namespace,
                config: self.config,
                listeners: self.listeners,
            }),
        }
    }
}

impl Manager {
    /// A manager with the default configuration (`Serialized`, 24 h idle).
    /// It cannot fail: the defaults suit every store. [`Manager::builder`]
    /// checks a configuration that may not.
    pub fn new(store: Arc<dyn SessionStore>, namespace: Namespace) -> Self {
        Self::builder(store, namespace).assemble()
    }

    /// Start configuring a manager.
    pub fn builder(store: Arc<dyn SessionStore>, namespace: Namespace) -> ManagerBuilder {
        ManagerBuilder {
            store,
            namespace,
            config: SessionConfig::default(),
            listeners: Vec::new(),
        }
    }

    /// The store behind this manager.
    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.inner.store
    }

    pub(crate) fn engine(&self) -> &Arc<LockEngine> {
        &self.inner.engine
    }

    /// This manager's namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.inner.namespace
    }

    /// This manager's configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.config
    }

    /// The store key of session `id`: the one place ids become keys, so
    /// hashing ids covers every operation on every backend.
    pub fn key(&self, id: &SessionId) -> SessionKey {
        let stored = if self.inner.config.hash_ids {
            id.hashed()
        } else {
            id.clone()
        };
        SessionKey::new(self.inner.namespace.clone(), stored)
    }

    /// The keyring that seals this manager's session data, if any.
    pub fn keyring(&self) -> Option<&Keyring> {
        self.inner.config.keyring.as_ref()
    }

    /// The bytes this manager stores for the encoded session `plain` (as
    /// [`SessionData::encode`] makes it) in the record under store key
    /// `key`: sealed with the keyring's first key, or `plain` itself without
    /// a keyring.
    ///
    /// `key` is the key as the store sees it ([`Manager::key`] of a session
    /// id, or an id from a store listing as is), since the seal is bound to
    /// it. With [`open_for`](Manager::open_for), this is how a tool seals
    /// every record anew after a key rotation: load, `open_for`, `seal_for`,
    /// save with the loaded version ([`Keyring::needs_reseal`] tells which
    /// records need it).
    ///
    /// # Panics
    /// If the OS random number generator fails (see [`Keyring::seal`]).
    pub fn seal_for(&self, key: &SessionKey, plain: &[u8]) -> Vec<u8> {
        match &self.inner.config.keyring {
            Some(keyring) => keyring.seal(key, plain),
            None => plain.to_vec(),
        }
    }

    /// The encoded session (for [`SessionData::decode`]) in the stored
    /// record data `stored` under store key `key`: opened with any key of the
    /// keyring, or `stored` itself if it is plain.
    ///
    /// [`Error::Corrupt`], saying why, if the record is sealed and does not
    /// open: with a key not in the keyring, for another id or namespace, or
    /// with no keyring configured at all.
    pub fn open_for(&self, key: &SessionKey, stored: &[u8]) -> Result<Vec<u8>> {
        if !Keyring::is_sealed(stored) {
            // Plain records stay readable, so that a keyring can be turned on
            // for an existing store; every write seals them.
            return Ok(stored.to_vec());
        }
        match &self.inner.config.keyring {
            Some(keyring) => keyring.open(key, stored),
            None => Err(Error::Corrupt {
                reason: format!(
                    "the record is sealed (encrypted at rest, key {}) but this manager has no keyring: \
                     configure the keyring it was sealed with",
                    Keyring::sealed_with(stored).as_deref().unwrap_or("unknown")
                ),
            }),
        }
    }

    /// The session data of the record `stored` under store key `key`.
    pub(crate) fn decode_stored(&self, key: &SessionKey, stored: &[u8]) -> Result<SessionData> {
        if Keyring::is_sealed(stored) {
            SessionData::decode(&self.open_for(key, stored)?)
        } else {
            SessionData::decode(stored)
        }
    }

    /// Open the session `id` for a request, or a new one.
    ///
    /// Under [`Policy::Serialized`] this takes the session's lock (waiting up
    /// to `lock_wait`) and holds it until the session is committed, rolled
    /// back or dropped. An id with no live session — unknown, expired,
    /// deleted — gives a new session with a *fresh* id, never the one offered,
    /// so a client cannot choose its own id (session fixation).
    pub async fn open(&self, id: Option<&SessionId>) -> Result<Session> {
        Session::open(self.clone(), id).await
    }

    /// Open `id` for reading only: no lock is taken and nothing is ever
    /// written. `None` if there is no live session under `id`.
    pub async fn open_read_only(&self, id: &SessionId) -> Result<Option<ReadOnlySession>> {
        let key = self.key(id);
        let record = self.inner.store.load(&key).await?;
        record
            .map(|r| {
                let data = self.decode_stored(&key, &r.data)?;
                Ok(ReadOnlySession::new(id.clone(), data, &r))
            })
            .transpose()
    }

    /// Delete session `id` without taking its lock (an administrator's or
    /// another device's logout). A request that holds the session will get
    /// [`Error::Gone`] or [`Error::LeaseLost`] on save instead of reviving it.
    ///
    /// Delete listeners get the record as loaded just before the delete: a
    /// request that saves in between is not reflected in what they see.
    pub async fn delete(&self, id: &SessionId) -> Result<bool> {
        let key = self.key(id);
        // Only listeners need the record, so only they pay for the load.
        let last = match self.inner.listeners.is_empty() {
            true => None,
            false => self.inner.store.load(&key).await?,
        };
        let deleted = self.inner.store.delete(&key).await?;
        if let (true, Some(record)) = (deleted, last) {
            self.notify_delete(key, record).await;
        }
        Ok(deleted)
    }

    /// The live sessions of `principal` in this namespace, oldest first:
    /// stored id, created, last used, expires. Read from the store's index,
    /// not a scan. With [`SessionConfig::hash_ids`] the ids are the stored
    /// hashes; [`Manager::key`] of a cookie's id gives the one to compare.
    pub async fn sessions_of(&self, principal: &Principal) -> Result<Vec<SessionSummary>> {
        self.inner
            .store
            .list_by_principal(&self.inner.namespace, principal)
            .await
    }

    /// Log `principal` out everywhere: delete each of their live sessions
    /// except `except` (the one making the request, for "log out everywhere
    /// else"), each under its lock, so a request in flight on one of them
    /// finishes first and cannot save it back. Delete listeners run for each.
    /// Returns how many were deleted.
    ///
    /// A session whose lock cannot be had within `lock_wait` is left, and
    /// the call goes on with the others and then fails with that error.
    pub async fn revoke_all(&self, principal: &Principal, except: Option<&SessionId>) -> Result<u64> {
        let keep = except.map(|id| self.key(id).id);
        let mut revoked = 0;
        let mut first_error = None;
        for summary in self.sessions_of(principal).await? {
            if keep.as_ref() == Some(&summary.id) {
                continue;
            }
            match self.revoke_stored(&summary.id, Some(principal)).await {
                Ok(true) => revoked += 1,
                Ok(false) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(revoked),
        }
    }

    /// Delete the session stored under `stored` (an id from
    /// [`sessions_of`](Manager::sessions_of)) under its lock, if it still
    /// belongs to `principal` (any owner when `None`): "log out that device"
    /// on a sessions page. Delete listeners run. Returns whether a live
    /// session was deleted.
    pub async fn revoke_stored(&self, stored: &SessionId, principal: Option<&Principal>) -> Result<bool> {
        let key = SessionKey::new(self.inner.namespace.clone(), stored.clone());
        let hold = self.inner.engine.open(&key).await?;
        let Some(record) = hold.record().cloned() else {
            hold.abandon();
            return Ok(false);
        };
        if principal.is_some_and(|p| record.principal.as_ref() != Some(p)) {
            // Given to someone else since it was listed.
            hold.abandon();
            return Ok(false);
        }
        let deleted = matches!(
            hold.finish(Finish::Delete).await?,
            Finished::Deleted { was_live: true }
        );
        if deleted {
            self.notify_delete(key, record).await;
        }
        Ok(deleted)
    }

    /// Sweep every expired session of this namespace in batches of `batch`,
    /// running expiry listeners for each deleted one. Locked and renewed
    /// sessions are never deleted.
    pub async fn sweep_expired(&self, batch: usize) -> Result<SweepReport> {
        let report = sweep_notifying(
            self.inner.store.as_ref(),
            &self.inner.namespace,
            batch,
            Some(self),
        )
        .await;
        match &report {
            Ok(report) => self.inner.labels.swept(report.deleted),
            Err(_) => self.inner.labels.sweep_failed(),
        }
        report
    }

    /// Sweep this namespace in the background every `interval` (±10%, the
    /// first time at a random point of the first interval, so that the
    /// processes of one deployment spread their sweeps), running expiry
    /// listeners, until the returned [`Sweeper`] is shut down or dropped.
    ///
    /// A failed sweep (the store is down, say) is logged, counted in
    /// [`Sweeper::stats`] and retried at the next interval: the sweeper
    /// outlives outages. Any number of processes may sweep one store: locked
    /// and renewed sessions are never deleted, and each expired one is
    /// deleted (and its listeners run) once. Needs a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> cloakroom_core::Result<()> {
    /// # use std::{sync::Arc, time::Duration};
    /// # use cloakroom_core::{Manager, MemoryStore, Namespace};
    /// let manager = Manager::new(Arc::new(MemoryStore::new()), Namespace::new("shop")?);
    /// let sweeper = manager.spawn_sweeper(Duration::from_secs(300));
    /// // … serve requests …
    /// sweeper.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn spawn_sweeper(&self, interval: Duration) -> Sweeper {
        Sweeper::spawn(self.clone(), interval)
    }

    pub(crate) fn labels(&self) -> &Labels {
        &self.inner.labels
    }

    pub(crate) fn has_listeners(&self) -> bool {
        !self.inner.listeners.is_empty()
    }

    /// The record `record` under `key` as listeners see it.
    fn ended(&self, key: SessionKey, record: Record) -> EndedSession {
        let data = match self.decode_stored(&key, &record.data) {
            Ok(data) => Some(data),
            Err(e) => {
                tracing::warn!(%key, error = %e, "an ended session's data did not decode; listeners get none");
                None
            }
        };
        EndedSession { key, record, data }
    }

    pub(crate) async fn notify_delete(&self, key: SessionKey, record: Record) {
        if self.inner.listeners.is_empty() {
            return;
        }
        let ended = self.ended(key, record);
        for l in &self.inner.listeners {
            l.on_delete(&ended).await;
        }
    }

    /// When a session last used at `now`, created at `created`, with its
    /// own `expiry` (if any) expires.
    pub(crate) fn expiry(&self, expiry: Option<Expiry>, created: Timestamp, now: Timestamp) -> Timestamp {
        let config = &self.inner.config;
        let until = match expiry {
            Some(Expiry::OnInactivity(idle)) => now.saturating_add(idle),
            Some(Expiry::AtInstant(at)) => at,
            None | Some(Expiry::OnBrowserClose) => now.saturating_add(config.idle_timeout),
        };
        match config.absolute_timeout {
            Some(abs) => until.min(created.saturating_add(abs)),
            None => until,
        }
    }

    /// Enforce [`SessionConfig::max_sessions_per_principal`] for
    /// `principal`, sparing `current` (the stored id just committed).
    pub(crate) async fn enforce_principal_cap(
        &self,
        principal: &Principal,
        current: &SessionId,
    ) -> Result<u64> {
        let Some(limit) = self.inner.config.max_sessions_per_principal else {
            return Ok(0);
        };
        let sessions = self.sessions_of(principal).await?;
        let excess = sessions.len().saturating_sub(limit);
        let mut revoked = 0;
        // Oldest first, never the session that just logged in.
        for summary in sessions.iter().filter(|s| &s.id != current).take(excess) {
            if self.revoke_stored(&summary.id, Some(principal)).await? {
                revoked += 1;
            }
        }
        Ok(revoked)
    }

    /// Whether an unchanged session last accessed at `record.accessed` is due
    /// for a touch.
    pub(crate) fn touch_due(&self, record: &Record, now: Timestamp) -> bool {
        now.saturating_sub(self.inner.config.touch_interval) >= record.accessed
    }
}

/// Every batch of a full sweep of `namespace`, as a stream: bounded memory
/// however many sessions there are, and a natural place for a progress bar.
pub fn sweep_batches<'a>(
    store: &'a dyn SessionStore,
    namespace: &'a Namespace,
    now: Timestamp,
    batch: usize,
) -> impl Stream<Item = Result<SweepBatch>> + Send + 'a {
    futures::stream::try_unfold(Some(None::<Cursor>), move |state| async move {
        let Some(cursor) = state else {
            return Ok(None);
        };
        let b = store.sweep_expired(namespace, now, cursor, batch.max(1)).await?;
        let next = b.next.clone().map(Some);
        Ok(Some((b, next)))
    })
}

/// Sweep every expired session of `namespace` and report
/// `(deleted, remaining)`, without listeners. See [`Manager::sweep_expired`].
pub async fn sweep_expired(
    store: &dyn SessionStore,
    namespace: &Namespace,
    batch: usize,
) -> Result<SweepReport> {
    sweep_notifying(store, namespace, batch, None).await
}

async fn sweep_notifying(
    store: &dyn SessionStore,
    namespace: &Namespace,
    batch: usize,
    manager: Option<&Manager>,
) -> Result<SweepReport> {
    let mut deleted = 0u64;
    let mut batches = std::pin::pin!(sweep_batches(store, namespace, Timestamp::now(), batch));
    while let Some(b) = batches.try_next().await? {
        deleted += b.deleted.len() as u64;
        let Some(manager) = manager.filter(|m| m.has_listeners()) else {
            continue;
        };
        for swept in b.deleted {
            let ended = manager.ended(SessionKey::new(namespace.clone(), swept.id), swept.record);
            for l in &manager.inner.listeners {
                l.on_expire(&ended).await;
            }
        }
    }
    Ok(SweepReport {
        deleted,
        remaining: store.count(namespace).await?,
    })
}

/// Every live id of `namespace`, page by page, as a stream.
pub fn list_ids<'a>(
    store: &'a dyn SessionStore,
    namespace: &'a Namespace,
    page: usize,
) -> impl Stream<Item = Result<SessionId>> + Send + 'a {
    futures::stream::try_unfold(Some(None::<Cursor>), move |state| async move {
        let Some(cursor) = state else {
            return Ok(None);
        };
        let p = store.list_ids(namespace, cursor, page.max(1)).await?;
        let next = p.next.map(Some);
        Ok(Some((futures::stream::iter(p.ids.into_iter().map(Ok)), next)))
    })
    .try_flatten()
}
