//! [`RedisStore`]: the [`SessionStore`] implementation and its constructors.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cloakroom_core::{
    async_trait, Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Record,
    RecordWrite, Result, SessionId, SessionKey, SessionStore, StoreUrl, SweepBatch, Timestamp,
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
use crate::shared::{masters, SharedConn, SlotRange};
use crate::wait::WaiterPool;

/// Sessions in Redis or Redis Cluster. Cloning shares the connections.
///
/// Building a store does no I/O: the first operation connects (and a failed
/// connect is tried again by the next one), so
/// [`migrate`](SessionStore::migrate) is how a caller checks that the server
/// answers.
///
/// Records expire by themselves (`PEXPIREAT`), so
/// [`sweep_expired`](SessionStore::sweep_expired) deletes nothing and the
/// capabilities say [`expires_natively`](Capabilities::expires_natively).
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
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(LockKind::Lease)
            .named("redis")
            .multi_process()
            .durable(true)
            .max_record_bytes(self.inner.options.max_record_bytes)
            .expiring_natively()
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
        reply::live_record(fields, Timestamp::now())
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let keys = self.inner.keys.session(key);
        let reply: Value = SCRIPTS
            .create
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .arg(&write.data)
            .arg(write.created.as_millis())
            .arg(write.accessed.as_millis())
            .arg(write.expires.as_millis())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        match reply::status("create", &reply)? {
            Status::Ok(_) => Ok(write.into_record(1)),
            Status::Conflict(found) => Err(Error::Conflict { expected: 0, found }),
            _ => Err(unexpected_reply("create", &reply)),
        }
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let keys = self.inner.keys.session(key);
        let reply: Value = SCRIPTS
            .save
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .arg(expected.map(|v| v.to_string()).unwrap_or_default())
            .arg(&write.data)
            .arg(write.accessed.as_millis())
            .arg(write.expires.as_millis())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        match reply::status("save", &reply)? {
            Status::Ok(version) => u64::try_from(version).map_err(|_| unexpected_reply("save", &reply)),
            Status::Gone => Err(Error::Gone),
            Status::Conflict(found) => Err(Error::Conflict {
                expected: expected.unwrap_or(0),
                found,
            }),
            Status::Lost => Err(unexpected_reply("save", &reply)),
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let keys = self.inner.keys.session(key);
        let deleted: i64 = SCRIPTS
            .delete
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        Ok(deleted == 1)
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let keys = self.inner.keys.session(key);
        let touched: i64 = SCRIPTS
            .touch
            .key(&keys.record)
            .arg(Timestamp::now().as_millis())
            .arg(accessed.as_millis())
            .arg(expires.as_millis())
            .invoke_async(&mut self.conn().await?)
            .await
            .map_err(map_redis)?;
        Ok(touched == 1)
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
        while let Some(node) = nodes.get(pos.node) {
            let room = limit - ids.len();
            // COUNT bounds the keys a call collects, so a batch rarely
            // outgrows the room left on the page.
            let count = room.clamp(10, 1000);
            let (next_scan, keys) = conn.scan(node.as_ref(), pos.scan, &pattern, count).await?;
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
                total += keys
                    .iter()
                    .filter(|k| self.inner.keys.id_of(namespace, k).is_some())
                    .count() as u64;
                if next == 0 {
                    break;
                }
                scan = next;
            }
        }
        Ok(total)
    }

    async fn sweep_expired(
        &self,
        _namespace: &Namespace,
        _now: Timestamp,
        _cursor: Option<Cursor>,
        _limit: usize,
    ) -> Result<SweepBatch> {
        // Redis deletes each record at its PEXPIREAT time by itself: there is
        // nothing left to delete, and no expired record is ever returned.
        Ok(SweepBatch::default())
    }
}
