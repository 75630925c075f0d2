//! The backend contract: [`SessionStore`] for records, [`LockGuard`] for one
//! held per-session lock.
//!
//! Both traits are object-safe, so a store can be picked at run time
//! (`Arc<dyn SessionStore>`) and a third-party crate can add a backend. The
//! `cloakroom-conformance` crate checks every clause written here.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::Result;
use crate::id::{Namespace, Principal, SessionId, SessionKey};
use crate::record::{Record, RecordWrite, Timestamp};

/// How a backend implements per-session locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockKind {
    /// A lock table inside one process (the memory store).
    InProcess,
    /// Lease columns or keys with an owner token (SQLite, Redis).
    Lease,
    /// A database row lock held by a transaction (Postgres, MySQL).
    RowLock,
    /// An advisory `flock` on a lock file (the file store).
    FileLock,
}

/// What a backend can promise, so the [`Manager`](crate::Manager) can refuse
/// a deployment that cannot keep cloakroom's guarantees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Locks and records are shared by several OS processes (and hosts, for
    /// network stores). False for the memory store: two processes each have
    /// their own, so sessions would diverge.
    pub multi_process: bool,
    /// Records survive a restart of the process (and of the server, as far as
    /// the server is configured to persist).
    pub durable: bool,
    /// The backend's short name (`"sqlite"`), the `backend` label of every
    /// metric and span. `"custom"` unless the backend names itself.
    pub name: &'static str,
    /// How locks are held.
    pub lock: LockKind,
    /// Largest encoded record the backend accepts.
    pub max_record_bytes: usize,
    /// The backend deletes expired records by itself (Redis key TTLs), so a
    /// sweep finds nothing to delete and only reports what remains.
    pub expires_natively: bool,
    /// A [`LockGuard::finish`] with [`Then::Keep`] is durable when it
    /// returns. False for row-lock backends, where the write waits in the
    /// locking transaction until the release commits it: the lock engine
    /// then acknowledges a chain of hand-offs at that release.
    pub durable_while_locked: bool,
    /// [`Finish::Rotate`] is one atomic step (one transaction, one script).
    /// Without it the lock engine rotates in two: it deletes the old record
    /// under the lock, releasing it, then creates the new one, so a crash in
    /// between leaves neither id live (the visitor logs in again) and never
    /// both. A backend whose kept writes are not durable
    /// ([`durable_while_locked`](Capabilities::durable_while_locked) false)
    /// must rotate atomically: its delete would wait for a commit the create
    /// does not.
    pub rotates_atomically: bool,
}

/// Largest encoded record a backend accepts unless configured otherwise:
/// 4 MiB, far above what a session should hold, low enough that a runaway
/// handler cannot fill a store one request at a time.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

impl Capabilities {
    /// A single-process, non-durable backend with locks of `lock` kind and
    /// the default record limit; the setters below say what else it can do.
    ///
    /// ```
    /// use cloakroom_core::{Capabilities, LockKind};
    ///
    /// let caps = Capabilities::new(LockKind::Lease).multi_process().durable(true);
    /// assert!(caps.multi_process && caps.durable && caps.durable_while_locked);
    /// ```
    pub const fn new(lock: LockKind) -> Self {
        Capabilities {
            name: "custom",
            multi_process: false,
            durable: false,
            lock,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            expires_natively: false,
            durable_while_locked: !matches!(lock, LockKind::RowLock),
            rotates_atomically: false,
        }
    }

    /// [`Finish::Rotate`] is one atomic step on this backend.
    pub const fn atomic_rotation(mut self) -> Self {
        self.rotates_atomically = true;
        self
    }

    /// The backend's short name, for metrics and spans.
    pub const fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Locks and records are shared by several processes.
    pub const fn multi_process(mut self) -> Self {
        self.multi_process = true;
        self
    }

    /// Whether records survive a restart.
    pub const fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// The largest encoded record accepted.
    pub const fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// The backend expires records by itself.
    pub const fn expiring_natively(mut self) -> Self {
        self.expires_natively = true;
        self
    }
}

/// How to take a session lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockOptions {
    /// How long the lock is valid without renewal. Never zero: a lock without
    /// a lease is what left phpredis sessions locked forever.
    pub lease: Duration,
    /// How long to wait for a current holder before [`Error::LockTimeout`](crate::Error::LockTimeout).
    pub wait: Duration,
}

impl LockOptions {
    /// Lock options with a lease and a wait timeout. A zero lease is raised
    /// to one millisecond so that no lock can ever be held without one.
    pub fn new(lease: Duration, wait: Duration) -> Self {
        LockOptions {
            lease: lease.max(Duration::from_millis(1)),
            wait,
        }
    }
}

/// The lease of a held lock, as seen by its holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token that identifies this hold (a random token, or the
    /// lock generation): a save made with an older token is refused.
    pub token: String,
    /// When the lease runs out unless renewed, on this process's clock.
    pub deadline: Instant,
}

/// What a lock holder knows of its session: the key, the record read under
/// the lock (updated by kept writes), and the lease.
///
/// A backend's guard keeps one and returns it from [`LockGuard::held`];
/// [`LockGuard::key`], [`LockGuard::record`] and [`LockGuard::lease`] read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldSession {
    /// The key the lock is held on.
    pub key: SessionKey,
    /// The live record read under the lock, then as last written by a
    /// [`LockGuard::finish`] with [`Then::Keep`]; `None` for a new (or
    /// deleted) session.
    pub record: Option<Record>,
    /// The current lease.
    pub lease: Lease,
}

/// What one [`SessionStore::try_lock`] got.
#[derive(Debug)]
#[non_exhaustive]
pub enum Acquired {
    /// The lock, with the record loaded under it.
    Locked(Box<dyn LockGuard>),
    /// Someone else holds the lock.
    Busy {
        /// When trying again makes sense: `Some(ZERO)` right away (the
        /// backend already waited on its signal), `Some(d)` when the
        /// holder's lease runs out in `d`; `None` when the backend cannot
        /// tell. [`SessionStore::lock`] never waits longer than its own
        /// bounded backoff either way.
        retry_in: Option<Duration>,
    },
}

impl Acquired {
    /// Busy, with nothing known about when to retry.
    pub const BUSY: Acquired = Acquired::Busy { retry_in: None };
}

/// First and longest pause of [`SessionStore::lock`] between two `Busy`
/// attempts. 1, 2, 4, 8, 16, 20, 20 … ms: a release is seen within 20 ms at
/// worst, against 100 ms to 1 s for the fixed sleeps of older session
/// libraries, while a long wait costs at most 50 attempts a second.
const FIRST_BACKOFF: Duration = Duration::from_millis(1);
const MAX_BACKOFF: Duration = Duration::from_millis(20);

/// The one wait loop of every backend: call `attempt` with the time left
/// until it returns a lock (`Ok(Ok(lock))`) or the wait is over
/// ([`Error::LockTimeout`](crate::Error::LockTimeout)). Between two busy
/// answers (`Ok(Err(retry_in))`, see [`Acquired::Busy`]) it pauses 1, 2, 4 …
/// up to 20 ms, never longer than `retry_in` or the time left.
///
/// [`SessionStore::lock`] uses it over [`SessionStore::try_lock`]; a backend
/// that hands out its own guard type (to expose backend-specific methods)
/// uses it too instead of a loop of its own.
pub async fn wait_for_lock<T, F, Fut>(wait: Duration, mut attempt: F) -> Result<T>
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = Result<std::result::Result<T, Option<Duration>>>>,
{
    let started = Instant::now();
    let give_up_at = started + wait;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let left = give_up_at.saturating_duration_since(Instant::now());
        let retry_in = match attempt(left).await? {
            Ok(lock) => return Ok(lock),
            Err(retry_in) => retry_in,
        };
        let now = Instant::now();
        if now >= give_up_at {
            return Err(crate::Error::LockTimeout {
                waited: started.elapsed(),
            });
        }
        let nap = retry_in.map_or(backoff, |d| d.min(backoff));
        if !nap.is_zero() {
            tokio::time::sleep(nap.min(give_up_at - now)).await;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A page of session ids from [`SessionStore::list_ids`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdPage {
    /// The ids on this page.
    pub ids: Vec<SessionId>,
    /// Where the next page starts; `None` when the listing is complete.
    pub next: Option<Cursor>,
}

/// An opaque position in a listing or a sweep, returned by the store and
/// handed back unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Cursor(pub String);

impl Cursor {
    /// For stores that page in id order: resume after `id`.
    pub fn after(id: &SessionId) -> Cursor {
        Cursor(id.as_str().to_owned())
    }

    /// The id a [`Cursor::after`] cursor resumes after (`None` for the first
    /// page). Anything else was not made by such a store: [`Error::Config`](crate::Error::Config).
    pub fn resume_after(cursor: Option<Cursor>) -> Result<Option<SessionId>> {
        cursor
            .map(|c| {
                SessionId::parse(&c.0).map_err(|_| crate::Error::Config("not a cursor of this store".into()))
            })
            .transpose()
    }
}

/// A record a sweep deleted, as it was stored, so that expiry listeners see
/// its data and principal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SweptRecord {
    /// The stored id.
    pub id: SessionId,
    /// The record as it was when deleted.
    pub record: Record,
}

/// One batch of a sweep, from [`SessionStore::sweep_expired`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepBatch {
    /// The records this batch deleted (so expiry listeners can run).
    pub deleted: Vec<SweptRecord>,
    /// Where the next batch starts; `None` when the sweep is complete.
    pub next: Option<Cursor>,
}

/// One live session of a principal, from
/// [`SessionStore::list_by_principal`]: what a "your sessions" page shows,
/// without the data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSummary {
    /// The stored id (the session id, or its hash when the manager hashes ids).
    pub id: SessionId,
    /// When the session was created.
    pub created: Timestamp,
    /// When it was last used.
    pub accessed: Timestamp,
    /// When it expires.
    pub expires: Timestamp,
}

impl SessionSummary {
    /// A short name for this session that is safe to show on a page: the
    /// first 8 characters of the SHA-256 of its stored id. Enough to tell a
    /// user's sessions apart; useless as a cookie, unlike the id itself,
    /// which is a credential of another device.
    pub fn label(&self) -> String {
        self.id.hashed().as_str().chars().take(8).collect()
    }
}

/// A session store: records keyed by `(namespace, id)`, with per-session
/// locks.
///
/// Ids and namespaces arrive already validated (their types cannot be built
/// otherwise). Every method is atomic with respect to every other on the same
/// key, across all processes the store's [`Capabilities`] claim to serve.
/// "Live" below means present with `expires` after the current time; an
/// expired record behaves exactly like a missing one, swept or not.
#[async_trait]
pub trait SessionStore: Send + Sync + fmt::Debug + 'static {
    /// What this store can promise.
    fn capabilities(&self) -> Capabilities;

    /// Create the tables, indexes or directories the store needs, if they
    /// are missing. Idempotent and safe to run from several processes at once;
    /// stores that need nothing keep this default.
    async fn migrate(&self) -> Result<()> {
        Ok(())
    }

    /// The live record under `key`, or `None`. Takes no lock and ignores
    /// locks: a reader may see the last committed version while a writer
    /// holds the lock, never a partial write.
    async fn load(&self, key: &SessionKey) -> Result<Option<Record>>;

    /// Insert a new record at version 1 and return it. Replaces an expired
    /// record; a live one is left untouched and the call fails with
    /// [`Error::Conflict`](crate::Error::Conflict).
    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record>;

    /// Replace the data of a live record, keeping its `created` time, and
    /// return the new version (old + 1).
    ///
    /// With `expected = Some(v)` this is a compare-and-set: a live record at
    /// another version fails with [`Error::Conflict`](crate::Error::Conflict).
    /// With `None` the last writer wins (the `Lossy` policy).
    ///
    /// Never creates: a missing or expired record fails with
    /// [`Error::Gone`](crate::Error::Gone), so a save cannot bring back a
    /// session that was logged out meanwhile. Takes no lock, which is what
    /// unlocked policies ask for; locked writers use [`LockGuard::save_and_unlock`].
    /// On row-lock backends the database makes this write wait while another
    /// request holds the row's lock (at most until that holder's lease ends).
    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64>;

    /// Delete the record under `key` whatever its lock state (on row-lock
    /// backends, after the current holder is done); returns whether a live
    /// record was deleted. A holder of the lock will then get
    /// [`Error::Gone`](crate::Error::Gone) or
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) when it saves.
    async fn delete(&self, key: &SessionKey) -> Result<bool>;

    /// Set `accessed` and `expires` of a live record without rewriting its
    /// data or changing its version; returns whether a live record was found.
    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool>;

    /// One attempt to take the lock on `key`, loading the live record with
    /// it in as few round trips as the backend allows.
    ///
    /// The key need not exist: a lock on a missing session is still a lock
    /// (and [`LockGuard::record`] is `None`). A holder whose lease ran out no
    /// longer blocks anyone.
    ///
    /// If the lock is held, a backend that has a signal of its own for "the
    /// lock was released" (a row-lock queue in the database, a wake list, an
    /// in-process queue) may wait on it for at most `options.wait` and try
    /// again; one that has none returns [`Acquired::Busy`] at once. Either
    /// way it never sleeps a fixed interval and never waits past
    /// `options.wait`: deadlines, backoff and [`Error::LockTimeout`](crate::Error::LockTimeout)
    /// are [`lock`](SessionStore::lock)'s business, written once in core.
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired>;

    /// Take the lock on `key` and load the live record with it, waiting up
    /// to `options.wait` for the current holder.
    ///
    /// Calls [`try_lock`](SessionStore::try_lock) until it succeeds; between
    /// two `Busy` answers it waits a short, bounded, growing backoff (capped
    /// by the holder's remaining lease when the backend knows it), so a
    /// release is seen within milliseconds without polling at a fixed rate.
    /// Past the wait it fails with [`Error::LockTimeout`](crate::Error::LockTimeout).
    /// Waiters of one process are queued in arrival order by the
    /// [`Manager`](crate::Manager)'s lock engine before they get here.
    async fn lock(&self, key: &SessionKey, options: LockOptions) -> Result<Box<dyn LockGuard>> {
        wait_for_lock(options.wait, |left| async move {
            Ok(
                match self.try_lock(key, LockOptions::new(options.lease, left)).await? {
                    Acquired::Locked(guard) => Ok(guard),
                    Acquired::Busy { retry_in } => Err(retry_in),
                },
            )
        })
        .await
    }

    /// One page of the ids of live records in `namespace`, starting at
    /// `cursor` (`None` for the first page), at most `limit` ids. Pages never
    /// load record data, so listing a million sessions takes bounded memory.
    /// Ids present for the whole listing are returned exactly once.
    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage>;

    /// Number of live records in `namespace`.
    async fn count(&self, namespace: &Namespace) -> Result<u64>;

    /// Every live record of `namespace` whose [`Record::principal`] is
    /// `principal`, oldest `created` first.
    ///
    /// Served from an index kept with the records (a column with an index, a
    /// set per principal, an index directory), never a scan of the
    /// namespace; the index may lag, but what this returns never does: each
    /// summary is of a record live with that principal at some point during
    /// the call. A record deleted, expired, swept, rotated away or given
    /// another principal stops being listed.
    ///
    /// The default is [`Error::Unsupported`](crate::Error::Unsupported), so
    /// that a backend written before principals compiles; the conformance
    /// suite requires it.
    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let _ = (namespace, principal);
        Err(crate::Error::Unsupported(format!(
            "{self:?} keeps no index of sessions by principal"
        )))
    }

    /// Delete expired records of `namespace` (expired at `now`), starting at
    /// `cursor`, and return their ids. `limit` bounds the work of one call:
    /// a store deletes at most `limit` records and may stop earlier, for
    /// example after examining `limit` records, returning a cursor to go on.
    ///
    /// Each deleted record is returned as it was stored (data and
    /// principal included), so expiry listeners can clean up after it.
    ///
    /// A record whose lock is held is skipped, and the expiry check and the
    /// delete are one atomic step, so a session renewed meanwhile is never
    /// deleted (a sweep that checks first and deletes later would log out a
    /// visitor whose request touched the session in between). Call again
    /// with the returned cursor until it is `None`;
    /// [`sweep_expired`](crate::sweep_expired) does that for you.
    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch>;
}

/// What a lock holder writes when it finishes with the lock (or with one
/// holder's turn, when it keeps the lock for the next).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// Replace the data: version = the guard's record version + 1 (1 when
    /// the guard holds no record, which creates it). `created` of an
    /// existing record is kept.
    Save(RecordWrite),
    /// Set `accessed` and `expires` of the guard's record, no data rewrite,
    /// no version bump.
    Touch {
        /// New access time.
        accessed: Timestamp,
        /// New expiry.
        expires: Timestamp,
    },
    /// Delete the record.
    Delete,
    /// Move the session to a new id: create the record `to` (in the same
    /// namespace) from `write` at version 1, and delete the guard's record,
    /// as one atomic step where the backend says
    /// [`Capabilities::rotates_atomically`]. The guard's record must still
    /// be live ([`Error::Gone`](crate::Error::Gone) otherwise, and nothing is
    /// written: a session logged out meanwhile stays logged out); a live
    /// record under `to` is [`Error::Conflict`](crate::Error::Conflict).
    /// Afterwards the guard holds the old key with no record.
    Rotate {
        /// The new stored id.
        to: SessionId,
        /// The record to create under it.
        write: RecordWrite,
    },
    /// Write nothing.
    Nothing,
}

/// What happens to the lock after a [`LockGuard::finish`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Then {
    /// Release the lock in the same step as the write. The guard is spent:
    /// every later call on it fails with [`Error::LeaseLost`](crate::Error::LeaseLost).
    Release,
    /// Keep the lock (same lease deadline) for a next write by the same
    /// holder. The guard's [`record`](LockGuard::record) becomes what was
    /// written, so the next write is fenced against it.
    Keep,
}

/// What a [`LockGuard::finish`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finished {
    /// The data was written at this version.
    Saved {
        /// The new record version.
        version: u64,
    },
    /// Access time and expiry were moved.
    Touched,
    /// The record was deleted; `was_live` says whether a live one existed.
    Deleted {
        /// Whether a live record was deleted.
        was_live: bool,
    },
    /// The session moved to its new id ([`Finish::Rotate`]).
    Rotated,
    /// Nothing was written.
    Nothing,
}

/// One held per-session lock, with the record loaded under it: the backend
/// primitive that the lock engine in [`Manager`](crate::Manager) builds on.
///
/// A backend implements [`held`](LockGuard::held), [`renew`](LockGuard::renew)
/// and [`finish`](LockGuard::finish); the `*_unlock` methods are shorthands over
/// `finish` with [`Then::Release`].
///
/// Dropping a guard without releasing it releases the lock (synchronously
/// where the backend can, otherwise on a spawned task); if even that fails,
/// the lease frees it. So a cancelled or panicking request never leaves a
/// session locked past its lease.
#[async_trait]
pub trait LockGuard: Send + Sync + fmt::Debug {
    /// What this guard knows of its session: key, record and lease.
    fn held(&self) -> &HeldSession;

    /// The key this guard locks.
    fn key(&self) -> &SessionKey {
        &self.held().key
    }

    /// The live record under the lock: as loaded when the lock was taken,
    /// then as last written by a [`finish`](LockGuard::finish) with
    /// [`Then::Keep`]; `None` for a new (or deleted) session.
    fn record(&self) -> Option<&Record> {
        self.held().record.as_ref()
    }

    /// The current lease.
    fn lease(&self) -> &Lease {
        &self.held().lease
    }

    /// Extend the lease to `lease` from now. Fails with
    /// [`Error::LeaseLost`](crate::Error::LeaseLost) if the lease had already
    /// run out (even if nobody took the lock meanwhile: the holder cannot know).
    async fn renew(&mut self, lease: Duration) -> Result<()>;

    /// Write `op` and then release or keep the lock, as one atomic, fenced
    /// step, in as few round trips as the backend allows.
    ///
    /// - **Fenced:** if the lease ran out, fails with
    ///   [`Error::LeaseLost`](crate::Error::LeaseLost) and changes nothing.
    /// - **Still live:** for `Save` and `Touch`, if the guard's record is now
    ///   gone (deleted by an unlocked writer, or expired) the call fails with
    ///   [`Error::Gone`](crate::Error::Gone); another version found is
    ///   [`Error::Conflict`](crate::Error::Conflict). `Touch` without a record
    ///   is `Gone`. `Save` without a record creates it at version 1.
    /// - **Rotate:** see [`Finish::Rotate`]. The lock engine sends it only to
    ///   a backend with [`Capabilities::rotates_atomically`]; others may
    ///   answer it with [`Error::Unsupported`](crate::Error::Unsupported).
    /// - **Size:** a `Save` (or `Rotate`) over the backend's limit is
    ///   [`Error::TooLarge`](crate::Error::TooLarge), checked before anything.
    /// - **Release:** with [`Then::Release`] the lock is released whatever
    ///   the outcome, and the guard is spent.
    /// - **Keep:** with [`Then::Keep`] and success, the lock stays held and
    ///   [`record`](LockGuard::record) reflects the write (`None` after a
    ///   delete). On failure the lock is released and the guard is spent:
    ///   the engine starts over from the store.
    /// - **Durability under Keep:** lease backends make a kept write durable
    ///   when the call returns. Row-lock backends write into the transaction
    ///   that holds the row lock, so a kept write becomes durable only at the
    ///   release that commits it; they say so with
    ///   [`Capabilities::durable_while_locked`] `= false`.
    async fn finish(&mut self, op: Finish, then: Then) -> Result<Finished>;

    /// `finish(Save, Release)`: write the record and release the lock;
    /// returns the new version.
    async fn save_and_unlock(mut self: Box<Self>, write: RecordWrite) -> Result<u64> {
        match self.finish(Finish::Save(write), Then::Release).await? {
            Finished::Saved { version } => Ok(version),
            other => Err(unexpected("save", other)),
        }
    }

    /// `finish(Touch, Release)`.
    async fn touch_and_unlock(mut self: Box<Self>, accessed: Timestamp, expires: Timestamp) -> Result<()> {
        self.finish(Finish::Touch { accessed, expires }, Then::Release)
            .await
            .map(|_| ())
    }

    /// `finish(Delete, Release)`; returns whether a live record was deleted.
    async fn delete_and_unlock(mut self: Box<Self>) -> Result<bool> {
        match self.finish(Finish::Delete, Then::Release).await? {
            Finished::Deleted { was_live } => Ok(was_live),
            other => Err(unexpected("delete", other)),
        }
    }

    /// `finish(Nothing, Release)`: release the lock without writing. A
    /// holder whose lease already ran out has nothing to release: `Ok`.
    async fn unlock(mut self: Box<Self>) -> Result<()> {
        match self.finish(Finish::Nothing, Then::Release).await {
            Ok(_) | Err(crate::Error::LeaseLost) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn unexpected(asked: &str, got: Finished) -> crate::Error {
    crate::Error::backend(format!("a {asked} finished as {got:?}"))
}
