//! [`RedisStore`]: the [`SessionStore`] implementation.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_core::{
    async_trait, Acquired, Capabilities, Cursor, Error, IdPage, Lease, LockKind, LockOptions, Namespace,
    Record, RecordWrite, Result, SessionId, SessionKey, SessionStore, SweepBatch, Then, Timestamp,
};
use redis::Value;

use crate::config::RedisConfig;
use crate::conn::{masters, Conn, SlotRange};
use crate::error::{map_redis, unexpected_reply};
use crate::guard::{finish_script, Op, RedisLockGuard};
use crate::keys::{KeyLayout, SessionKeys};
use crate::reply::{self, LockReply, Status};
use crate::scripts::SCRIPTS;
use crate::wait::{WaiterPool, Woken};

/// Longest single wait on a wake list before re-checking the lock. Only a
/// fallback: a release wakes a waiter at once; this bounds the delay if a
/// wake-up is lost (a waiter killed right after collecting it).
const MAX_BLOCK: Duration = Duration::from_secs(1);

/// The fields of a record hash, in the order [`reply::live_record`] reads.
const RECORD_FIELDS: [&str; 5] = ["data", "version", "created", "accessed", "expires"];

/// How long an uncollected wake-up stays in a session's wake list.
pub(crate) const WAKE_TTL_MS: u64 = 2_000;

/// How long the `waiting` flag of a failed lock attempt stays up. A waiter
/// re-tries the lock (raising the flag again) at least every
/// [`MAX_BLOCK`], so while anyone waits the flag never drops.
const WAITING_TTL_MS: u64 = 2 * MAX_BLOCK.as_millis() as u64;

/// Sessions in Redis or Redis Cluster. Cloning shares the connections.
///
/// Records expire by themselves (`PEXPIREAT`), so
/// [`sweep_expired`](SessionStore::sweep_expired) deletes nothing and the
/// capabilities say [`expires_natively`](Capabilities::expires_natively).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Multiplexed connections, taken in turn.
    conns: Vec<Conn>,
    next_conn: AtomicUsize,
    keys: KeyLayout,
    waiters: WaiterPool,
    max_record_bytes: usize,
    cluster: bool,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &self.inner.cluster)
            .field("prefix", &self.inner.keys.prefix())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connect with a cloakroom Redis URL: `redis://host:port[/db][?prefix=…]`
    /// for one node, `redis+cluster://host:port[,host:port…][?prefix=…]` (or
    /// `?cluster=true`) for a Cluster. See [`RedisConfig::from_url`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RedisConfig::from_url(url)?).await
    }

    /// Connect with a configuration.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let keys = KeyLayout::new(&config.prefix)?;
        let mut conns = Vec::with_capacity(config.connections);
        for _ in 0..config.connections.max(1) {
            conns.push(Conn::connect(&config).await?);
        }
        Ok(RedisStore {
            inner: Arc::new(Inner {
                conns,
                next_conn: AtomicUsize::new(0),
                waiters: WaiterPool::new(&config),
                keys,
                max_record_bytes: config.max_record_bytes,
                cluster: config.cluster,
            }),
        })
    }

    /// Whether this store talks to a Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// The Redis keys of a session. For tests and operators inspecting the
    /// server.
    pub fn session_keys(&self, key: &SessionKey) -> SessionKeys {
        self.inner.keys.session(key)
    }

    /// The next of the store's connections, in turn.
    pub(crate) fn conn(&self) -> Conn {
        let conns = &self.inner.conns;
        let turn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        conns[turn % conns.len()].clone()
    }

    pub(crate) fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.max_record_bytes)
    }

    /// Release a lock from outside any guard (a dropped guard, a cancelled
    /// `lock` call) on a spawned task, if there is a runtime to spawn on.
    /// Token-checked, so it never frees someone else's lock; if it cannot
    /// run, the lease frees the lock.
    pub(crate) fn release_detached(&self, keys: SessionKeys, token: String) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.clone();
        handle.spawn(async move {
            let mut conn = store.conn();
            let result: redis::RedisResult<Value> =
                finish_script(&keys, &token, Op::Nothing, Then::Release, 0)
                    .invoke_async(&mut conn)
                    .await;
            if let Err(err) = result {
                tracing::warn!(error = %err, "releasing a dropped redis session lock failed; its lease will free it");
            }
        });
    }

    async fn masters(&self) -> Result<Vec<Option<SlotRange>>> {
        if self.inner.cluster {
            let slots = self.conn().cluster_slots().await?;
            Ok(masters(&slots).into_iter().map(Some).collect())
        } else {
            Ok(vec![None])
        }
    }
}

fn new_token() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::backend(format!("no randomness for a lock token: {e}")))?;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut token = String::with_capacity(32);
    for b in bytes {
        token.push(char::from(HEX[usize::from(b >> 4)]));
        token.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(token)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Releases the lock if a `lock` call is dropped while its script is in
/// flight: the script may have taken the lock without anyone to hold it.
struct InFlight<'a> {
    store: &'a RedisStore,
    keys: &'a SessionKeys,
    token: &'a str,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.store
                .release_detached(self.keys.clone(), self.token.to_owned());
        }
    }
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
        Capabilities::new(true, true, LockKind::Lease, self.inner.max_record_bytes).expiring_natively()
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let keys = self.inner.keys.session(key);
        let reply: Value = redis::cmd("HMGET")
            .arg(&keys.record)
            .arg(&RECORD_FIELDS)
            .query_async(&mut self.conn())
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
            .invoke_async(&mut self.conn())
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
            .invoke_async(&mut self.conn())
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
            .invoke_async(&mut self.conn())
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
            .invoke_async(&mut self.conn())
            .await
            .map_err(map_redis)?;
        Ok(touched == 1)
    }

    /// One attempt is one round trip: a pipeline of `SET lock NX PX` and
    /// `HMGET` of the record (and `PTTL lock` when waiting). The read needs no
    /// script to be consistent with the lock: if the `SET` won, nobody else
    /// can write under the lock until we release it, and an unlocked writer
    /// slipping in between is no different from one that wrote just before
    /// the `SET` (the save is fenced by version either way). If the `SET`
    /// lost, the record read is dropped.
    ///
    /// After the first failed attempt every attempt first raises the
    /// session's `waiting` flag, so that a release from then on pushes a
    /// wake-up; the attempt right after raising it runs at once, so a release
    /// that came between the first failure and the flag is not missed.
    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        let give_up_at = Instant::now() + options.wait;
        let keys = self.inner.keys.session(key);
        let token = new_token()?;
        let lease_ms = millis(options.lease);
        let mut conn = self.conn();
        let mut waiting = false;
        loop {
            let mut attempt = redis::pipe();
            if waiting {
                attempt
                    .cmd("SET")
                    .arg(&keys.waiting)
                    .arg("1")
                    .arg("PX")
                    .arg(WAITING_TTL_MS)
                    .ignore();
            }
            attempt
                .cmd("SET")
                .arg(&keys.lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(lease_ms)
                .cmd("HMGET")
                .arg(&keys.record)
                .arg(&RECORD_FIELDS);
            if waiting {
                // How long to block if this attempt fails too. The first
                // attempt does not ask: it is retried at once either way.
                attempt.cmd("PTTL").arg(&keys.lock);
            }
            // The lease starts on the server after this instant, so a deadline
            // counted from here never outlasts the server's.
            let sent = Instant::now();
            let mut in_flight = InFlight {
                store: self,
                keys: &keys,
                token: &token,
                armed: true,
            };
            let replies: Vec<Value> = attempt.query_async(&mut conn).await.map_err(map_redis)?;
            in_flight.armed = false;
            drop(in_flight);
            let pttl = match reply::lock_reply(replies, Timestamp::now()) {
                Ok(LockReply::Acquired(record)) => {
                    return Ok(Acquired::Locked(Box::new(RedisLockGuard::new(
                        self.clone(),
                        key.clone(),
                        keys,
                        Lease {
                            token,
                            deadline: sent + options.lease,
                        },
                        record,
                    ))));
                }
                Ok(LockReply::Held { pttl }) => pttl,
                Err(err) => {
                    // We may hold the lock with a record we cannot read:
                    // do not keep it.
                    self.release_detached(keys, token);
                    return Err(err);
                }
            };

            let now = Instant::now();
            if now >= give_up_at {
                return Ok(Acquired::BUSY);
            }
            if !waiting {
                waiting = true;
                continue;
            }
            // Wake on release, when the holder's lease runs out, or at our
            // deadline, whichever comes first.
            let mut block = (give_up_at - now).min(MAX_BLOCK);
            match u64::try_from(pttl) {
                Ok(ms) => block = block.min(Duration::from_millis(ms)),
                // -2: the lock vanished since the SET NX; try again at once.
                Err(_) if pttl == -2 => continue,
                // -1: a lock without expiry that this crate never sets.
                Err(_) => {}
            }
            if block.is_zero() {
                continue;
            }
            match self.inner.waiters.wait(&mut conn, &keys.wake, block).await? {
                Woken::Notified | Woken::TimedOut => {}
            }
        }
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
        let mut conn = self.conn();
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
        let mut conn = self.conn();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_32_lowercase_hex_digits_and_differ() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
            "{a}"
        );
        assert_ne!(a, b);
    }
}
