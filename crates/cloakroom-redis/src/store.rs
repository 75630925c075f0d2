//! [`RedisStore`]: the [`SessionStore`] implementation and its constructors.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cloakroom_core::{
    async_trait, Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Principal,
    Record, RecordWrite, Result, SessionId, SessionKey, SessionStore, SessionSummary, StoreUrl, SweepBatch,
    SweptRecord, Timestamp,
};
use redis::Value;
use tokio::sync::OnceCell;

use crate::error::{map_redis, unexpected_reply};
use crate::guard;
use crate::keys::{KeyLayout, SessionKeys};
use crate::options::RedisOptions;
use crate::owner::Owner;
use crate::reply::{self, Status, RECORD_FIELDS};
use crate::scripts::SCRIPTS;
use crate::shared::{call, call_script, concurrently, masters, Call, SharedConn, SlotRange};
use crate::wait::WaiterPool;

/// Sessions in Redis or Redis Cluster. Cloning shares the connections.
///
/// Building a store does no I/O: the first operation connects (and a failed
/// connect is tried again by the next one), so
/// [`migrate`](SessionStore::migrate) is how a caller checks that the server
/// answers.
///
/// Records expire by themselves (`PEXPIREAT`), [`expired_grace`](RedisOptions::expired_grace)
/// after their `expires`; within that grace a
/// [`sweep_expired`](SessionStore::sweep_expired) finds them, deletes them
/// and hands them to expiry listeners. With a zero grace Redis drops them at
/// `expires`, a sweep deletes nothing, and the capabilities say
/// [`expires_natively`](Capabilities::expires_natively).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    options: RedisOptions,
    keys: KeyLayout,
    /// Multiplexed connections, taken in turn; opened by the first operation.
    conns: OnceCell<Vec<SharedConn>>,
    next_conn: AtomicUsize,
    waiters: WaiterPool,
    /// Says this store is alive, so waiters can tell a stopped holder.
    owner: Arc<Owner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.inner.options.cluster)
            .field("prefix", &self.inner.keys.prefix())
            .field("connected", &self.inner.conns.initialized())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store with `options`, checked with [`RedisOptions::validate`].
    /// Connects on first use, not here.
    pub fn new(options: RedisOptions) -> Result<Self> {
        options.validate()?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                owner: Arc::new(Owner::new(&KeyLayout::new(&options.prefix)?)?),
                keys: KeyLayout::new(&options.prefix)?,
                conns: OnceCell::new(),
                next_conn: AtomicUsize::new(0),
                waiters: WaiterPool::new(&options),
                options,
            }),
        })
    }

    /// A store from a cloakroom Redis URL: `redis://host:port[/db][?prefix=…]`
    /// for one node, `redis+cluster://host:port[,host:port…][?prefix=…]` (or
    /// `?cluster=true`) for a Cluster. See [`RedisOptions::from_url`].
    /// Connects on first use, not here.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::new(RedisOptions::from_url(&StoreUrl::parse(url)?)?)
    }

    /// The options this store was built with.
    pub fn options(&self) -> &RedisOptions {
        &self.inner.options
    }

    /// The Redis keys of a session. For tests and operators inspecting the
    /// server.
    pub fn session_keys(&self, key: &SessionKey) -> SessionKeys {
        self.inner.keys.session(key)
    }

    /// The Redis key of the set that indexes the sessions of `principal` in
    /// `namespace` (named by [`Principal::digest`], never by its text). For
    /// tests and operators inspecting the server.
    pub fn principal_set(&self, namespace: &Namespace, principal: &Principal) -> String {
        self.inner.keys.principal_set(namespace, principal)
    }

    /// The next of the store's connections, in turn, after connecting them
    /// all if no operation has yet.
    pub(crate) async fn conn(&self) -> Result<SharedConn> {
        let conns = self
            .inner
            .conns
            .get_or_try_init(|| async {
                let conns = connect(&self.inner.options).await?;
                // Alive before the first lock names this owner, so no
                // waiter can take it for a stopped one.
                let mut first = conns
                    .first()
                    .cloned()
                    .ok_or_else(|| Error::backend("redis: no connection"))?;
                self.inner.owner.beat(&mut first).await?;
                Arc::clone(&self.inner.owner).keep_beating(first, Arc::downgrade(&self.inner));
                Ok::<_, Error>(conns)
            })
            .await?;
        let turn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        conns
            .get(turn % conns.len().max(1))
            .cloned()
            .ok_or_else(|| Error::backend("redis: no connection"))
    }

    pub(crate) fn keys(&self) -> &KeyLayout {
        &self.inner.keys
    }

    pub(crate) fn owner(&self) -> &Owner {
        &self.inner.owner
    }

    pub(crate) fn waiters(&self) -> &WaiterPool {
        &self.inner.waiters
    }

    /// Whether this store talks to a Cluster (where one script cannot touch
    /// two sessions).
    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.options.cluster
    }

    pub(crate) fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.options.max_record_bytes)
    }

    async fn masters(&self) -> Result<Vec<Option<SlotRange>>> {
        if self.inner.options.cluster {
            let slots = self.conn().await?.cluster_slots().await?;
            Ok(masters(&slots).into_iter().map(Some).collect())
        } else {
            Ok(vec![None])
        }
    }
}

/// Open the `connections` multiplexed connections of a store.
async fn connect(options: &RedisOptions) -> Result<Vec<SharedConn>> {
    let mut conns = Vec::with_capacity(options.connections);
    for _ in 0..options.connections {
        conns.push(SharedConn::connect(options).await?);
    }
    Ok(conns)
}

/// A listing position: `<node index>:<SCAN cursor>:<ids already scanned but
/// not yet returned, comma-separated>`. SCAN's COUNT is only a hint, so a
/// batch can hold more ids than a page has room for; those few ids travel in
/// the cursor rather than being re-scanned, because re-scanning the same SCAN
/// cursor after the keyspace changed covers different buckets and would
/// repeat or skip ids.
struct ListPosition {
    node: usize,
    scan: u64,
    pending: Vec<SessionId>,
}

impl ListPosition {
    fn parse(cursor: Option<Cursor>) -> Result<Self> {
        let Some(Cursor(text)) = cursor else {
            return Ok(ListPosition {
                node: 0,
                scan: 0,
                pending: Vec::new(),
            });
        };
        let bad = || Error::Config("not a cursor of this store".into());
        let mut parts = text.splitn(3, ':');
        let node = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let scan = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let pending = match parts.next() {
            None | Some("") => Vec::new(),
            Some(ids) => ids
                .split(',')
                .map(|id| SessionId::parse(id).map_err(|_| bad()))
                .collect::<Result<_>>()?,
        };
        Ok(ListPosition { node, scan, pending })
    }

    fn cursor(&self) -> Cursor {
        let pending: Vec<&str> = self.pending.iter().map(SessionId::as_str).collect();
        Cursor(format!("{}:{}:{}", self.node, self.scan, pending.join(",")))
    }
}

#[async_trait]
impl SessionStore for RedisStore {
    /// `expires_natively` only without a grace (Redis then drops records
    /// at `expires`); atomic rotation only on one node (on a Cluster the two
    /// ids are in different slots, out of reach of one script).
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new(LockKind::Lease)
            .named("redis")
            .multi_process()
            .durable(true)
            .max_record_bytes(self.inner.options.max_record_bytes);
        if self.inner.options.expired_grace.is_zero() {
            caps = caps.expiring_natively();
        }
        if !self.inner.options.cluster {
            caps = caps.atomic_rotation();
        }
        caps
    }

    /// Connects, if no operation has yet: nothing else to set up.
    async fn migrate(&self) -> Result<()> {
        self.conn().await.map(drop)
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let keys = self.inner.keys.session(key);
        let reply: Value = redis::cmd("HMGET")
            .arg(&keys.record)
            .arg(&RECORD_FIELDS)
            .query_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        let Value::Array(fields) = reply else {
            return Err(unexpected_reply("HMGET", &reply));
        };
        Ok(reply::live_record(fields, Timestamp::now())?.map(|stored| stored.record))
    }

    /// With a principal: its set first, then the record, then the set once
    /// more (see `principals`).
    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let keys = self.inner.keys.session(key);
        let indexed = match &write.principal {
            Some(principal) => Some(self.index_before(key, principal, write.expires).await?),
            None => None,
        };
        let reply: Value = SCRIPTS
            .create
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .arg(&write.data)
            .arg(write.created.as_millis())
            .arg(write.accessed.as_millis())
            .arg(write.expires.as_millis())
            .arg(self.key_expiry(write.expires).as_millis())
            .arg(principal_arg(write.principal.as_ref()))
            .arg(until_arg(indexed))
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        match reply::status("create", &reply)? {
            Status::Ok(done) => {
                self.after_write(
                    key,
                    done.prev.as_deref(),
                    false,
                    write.principal.as_ref(),
                    indexed,
                )
                .await;
                Ok(write.into_record(1))
            }
            // A stale member the pre-write add may have left is dropped by
            // the next listing.
            Status::Conflict(found) => Err(Error::Conflict { expected: 0, found }),
            _ => Err(unexpected_reply("create", &reply)),
        }
    }

    /// Tries without touching the principal's set first; the script asks
    /// for it (`index`) only when the record is not yet indexed for this
    /// write (see `principals`).
    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let keys = self.inner.keys.session(key);
        let mut indexed = None;
        for _ in 0..2 {
            let reply: Value = SCRIPTS
                .save
                .key(&keys.record)
                .arg(Timestamp::now().as_millis())
                .arg(expected.map(|v| v.to_string()).unwrap_or_default())
                .arg(&write.data)
                .arg(write.accessed.as_millis())
                .arg(write.expires.as_millis())
                .arg(self.key_expiry(write.expires).as_millis())
                .arg(principal_arg(write.principal.as_ref()))
                .arg(until_arg(indexed))
                .invoke_async(&mut self.conn().await?)
                .await
                .map_err(map_redis)?;
            match (reply::status("save", &reply)?, &write.principal) {
                (Status::Ok(done), _) => {
                    let version = u64::try_from(done.n).map_err(|_| unexpected_reply("save", &reply))?;
                    self.after_write(key, done.prev.as_deref(), true, write.principal.as_ref(), indexed)
                        .await;
                    return Ok(version);
                }
                (Status::Index(_), Some(principal)) if indexed.is_none() => {
                    indexed = Some(self.index_before(key, principal, write.expires).await?);
                }
                (Status::Gone, _) => return Err(Error::Gone),
                (Status::Conflict(found), _) => {
                    return Err(Error::Conflict {
                        expected: expected.unwrap_or(0),
                        found,
                    })
                }
                _ => return Err(unexpected_reply("save", &reply)),
            }
        }
        Err(Error::backend(
            "redis: a save asked twice for its principal's set",
        ))
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let keys = self.inner.keys.session(key);
        let reply: Value = SCRIPTS
            .delete
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        match reply::status("delete", &reply)? {
            Status::Ok(done) => {
                self.after_write(key, done.prev.as_deref(), false, None, None)
                    .await;
                Ok(done.n == 1)
            }
            _ => Err(unexpected_reply("delete", &reply)),
        }
    }

    /// A touch keeps the principal, but may outlive what its set was kept
    /// for: then the script names the principal, whose set is extended first.
    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let keys = self.inner.keys.session(key);
        let mut indexed: Option<(Principal, i64)> = None;
        // The stored principal can change between two attempts (an unlocked
        // save): a few rounds, each after extending the set it names.
        for _ in 0..4 {
            let reply: Value = SCRIPTS
                .touch
                .key(&keys.record)
                .arg(Timestamp::now().as_millis())
                .arg(accessed.as_millis())
                .arg(expires.as_millis())
                .arg(self.key_expiry(expires).as_millis())
                .arg(principal_arg(indexed.as_ref().map(|(p, _)| p)))
                .arg(until_arg(indexed.as_ref().map(|(_, until)| *until)))
                .invoke_async(&mut self.conn().await?)
                .await
                .map_err(map_redis)?;
            match reply::status("touch", &reply)? {
                Status::Ok(_) => return Ok(true),
                Status::Gone => return Ok(false),
                Status::Index(Some(stored)) => {
                    let principal = Principal::new(&stored).map_err(|_| Error::Corrupt {
                        reason: "redis session hash: field principal is not a valid principal".into(),
                    })?;
                    let until = self.index_before(key, &principal, expires).await?;
                    indexed = Some((principal, until));
                }
                _ => return Err(unexpected_reply("touch", &reply)),
            }
        }
        Err(Error::backend(
            "redis: a touch kept finding another principal on its record",
        ))
    }

    /// One `SET NX PX` pipeline per attempt; see `guard::try_lock`.
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        guard::try_lock(self, key, options).await
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let limit = limit.max(1);
        let mut pos = ListPosition::parse(cursor)?;
        let mut ids: Vec<SessionId> = std::mem::take(&mut pos.pending);
        if ids.len() > limit {
            pos.pending = ids.split_off(limit);
            return Ok(IdPage {
                ids,
                next: Some(pos.cursor()),
            });
        }
        let nodes = self.masters().await?;
        let pattern = self.inner.keys.scan_pattern(namespace);
        let mut conn = self.conn().await?;
        // Keep scanning after the page is full until one more id turns up (it
        // waits in the cursor) or the scan ends, so the last page says `None`.
        loop {
            let room = limit - ids.len();
            let Some(batch) = self
                .scan_step(&mut conn, &nodes, &mut pos, &pattern, namespace, room)
                .await?
            else {
                break;
            };
            let mut batch = self.live_only(&conn, namespace, batch).await?;
            if batch.len() > room {
                pos.pending = batch.split_off(room);
                ids.extend(batch);
                return Ok(IdPage {
                    ids,
                    next: Some(pos.cursor()),
                });
            }
            ids.extend(batch);
        }
        Ok(IdPage { ids, next: None })
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let nodes = self.masters().await?;
        let pattern = self.inner.keys.scan_pattern(namespace);
        let mut conn = self.conn().await?;
        let mut total = 0u64;
        for node in &nodes {
            let mut scan = 0;
            loop {
                let (next, keys) = conn.scan(node.as_ref(), scan, &pattern, 1000).await?;
                let ids: Vec<SessionId> = keys
                    .iter()
                    .filter_map(|k| self.inner.keys.id_of(namespace, k))
                    .collect();
                total += self.live_only(&conn, namespace, ids).await?.len() as u64;
                if next == 0 {
                    break;
                }
                scan = next;
            }
        }
        Ok(total)
    }

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        self.sessions_of(namespace, principal).await
    }

    /// Walks the namespace's record keys with `SCAN` (every master in turn
    /// on a Cluster) and runs the sweep script on each: it deletes the
    /// record only if it is expired at `now` and unlocked, in one step, and
    /// returns it. `limit` bounds the keys examined per call. Records are
    /// only found within `expired_grace` of their expiry; without a grace
    /// Redis has dropped them already and there is nothing to do.
    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        if self.inner.options.expired_grace.is_zero() {
            return Ok(SweepBatch::default());
        }
        let limit = limit.max(1);
        let mut pos = ListPosition::parse(cursor)?;
        let mut candidates: Vec<SessionId> = std::mem::take(&mut pos.pending);
        if candidates.len() > limit {
            pos.pending = candidates.split_off(limit);
        }
        let nodes = self.masters().await?;
        let pattern = self.inner.keys.scan_pattern(namespace);
        let mut conn = self.conn().await?;
        // SCAN also walks other namespaces' keys; bound those calls too, so
        // one call stays short in a large keyspace.
        let mut scans = 0;
        while pos.pending.is_empty() && candidates.len() < limit && scans < MAX_SCANS_PER_SWEEP {
            let room = limit - candidates.len();
            let Some(mut batch) = self
                .scan_step(&mut conn, &nodes, &mut pos, &pattern, namespace, room)
                .await?
            else {
                break;
            };
            scans += 1;
            if batch.len() > room {
                pos.pending = batch.split_off(room);
            }
            candidates.extend(batch);
        }
        let calls: Vec<Call<Value>> = candidates
            .iter()
            .map(|id| {
                let keys = self
                    .inner
                    .keys
                    .session(&SessionKey::new(namespace.clone(), id.clone()));
                let mut invocation = SCRIPTS.sweep.key(&keys.record);
                invocation.key(&keys.lock).arg(now.as_millis());
                call_script(&conn, invocation)
            })
            .collect();
        let replies = concurrently(calls).await;
        let mut deleted = Vec::new();
        let mut failed = None;
        for (id, reply) in candidates.into_iter().zip(replies) {
            match reply.and_then(reply::swept) {
                Ok(Some(record)) => deleted.push(SweptRecord { id, record }),
                Ok(None) => {}
                // Keep what was deleted: those records are gone either way,
                // and their index entries still need dropping.
                Err(err) => failed = Some(err),
            }
        }
        let mut by_principal: Vec<(&Principal, Vec<SessionId>)> = Vec::new();
        for swept in &deleted {
            if let Some(principal) = &swept.record.principal {
                match by_principal.iter_mut().find(|(p, _)| *p == principal) {
                    Some((_, ids)) => ids.push(swept.id.clone()),
                    None => by_principal.push((principal, vec![swept.id.clone()])),
                }
            }
        }
        for (principal, ids) in by_principal {
            self.unindex(namespace, principal, ids).await;
        }
        if let Some(err) = failed {
            if deleted.is_empty() {
                return Err(err);
            }
            tracing::warn!(error = %err, "a sweep script failed; the record is retried by the next sweep");
        }
        let done = pos.node >= nodes.len() && pos.pending.is_empty();
        Ok(SweepBatch {
            deleted,
            next: (!done).then(|| pos.cursor()),
        })
    }
}

/// Most `SCAN` calls one sweep call makes.
const MAX_SCANS_PER_SWEEP: usize = 32;

/// A principal as a script argument: `''` for none.
pub(crate) fn principal_arg(principal: Option<&Principal>) -> &str {
    principal.map_or("", Principal::as_str)
}

/// An `indexed_until` as a script argument: `''` when the client did not
/// add the id to the principal's set.
pub(crate) fn until_arg(until: Option<i64>) -> String {
    until.map(|t| t.to_string()).unwrap_or_default()
}

impl RedisStore {
    /// One `SCAN` call on the node `pos` is at, for about `room` record keys
    /// of `namespace`: their ids, sorted and without repeats, with `pos`
    /// moved on (to the next node once this one is done). `None` once every
    /// node is done. Listing and sweeping page through a namespace with it.
    async fn scan_step(
        &self,
        conn: &mut SharedConn,
        nodes: &[Option<SlotRange>],
        pos: &mut ListPosition,
        pattern: &str,
        namespace: &Namespace,
        room: usize,
    ) -> Result<Option<Vec<SessionId>>> {
        let Some(node) = nodes.get(pos.node) else {
            return Ok(None);
        };
        // COUNT bounds the keys a call collects, so a batch rarely outgrows
        // the room left.
        let (next_scan, keys) = conn
            .scan(node.as_ref(), pos.scan, pattern, room.clamp(10, 1000))
            .await?;
        if next_scan == 0 {
            pos.node += 1;
            pos.scan = 0;
        } else {
            pos.scan = next_scan;
        }
        let mut batch: Vec<SessionId> = keys
            .iter()
            .filter_map(|k| self.inner.keys.id_of(namespace, k))
            .collect();
        batch.sort();
        batch.dedup();
        Ok(Some(batch))
    }

    /// The ids among `ids` whose record is live. Without a grace, Redis
    /// hides expired keys from `SCAN` itself, so every id found is live;
    /// with one, expired records stay until swept and are left out here.
    async fn live_only(
        &self,
        conn: &SharedConn,
        namespace: &Namespace,
        ids: Vec<SessionId>,
    ) -> Result<Vec<SessionId>> {
        if self.inner.options.expired_grace.is_zero() || ids.is_empty() {
            return Ok(ids);
        }
        let calls: Vec<Call<Option<i64>>> = ids
            .iter()
            .map(|id| {
                let mut hget = redis::cmd("HGET");
                hget.arg(self.record_key(namespace, id)).arg("expires");
                call(conn, hget)
            })
            .collect();
        let expiries = concurrently(calls).await;
        let now = Timestamp::now().as_millis();
        let mut live = Vec::with_capacity(ids.len());
        for (id, expires) in ids.into_iter().zip(expiries) {
            if expires?.is_some_and(|expires| expires > now) {
                live.push(id);
            }
        }
        Ok(live)
    }
}
