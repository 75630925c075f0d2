//! Waiting for a lock: `BLPOP` on the session's wake list, which the holder's
//! release pushes to in the same script that frees the lock.
//!
//! `BLPOP` blocks its connection, so it never runs on the shared multiplexed
//! connection (it would stall every other request queued behind it). Each
//! waiting task borrows a dedicated connection from a small idle pool, or
//! opens one, to the node that owns the session's slot. A connection is put
//! back only after its `BLPOP` has answered; if the wait is cancelled or cut
//! short by our own timer, the connection is dropped instead, because a
//! `BLPOP` still pending on it would delay whatever used it next.
//!
//! Redis checks blocking timeouts only about every 100 ms (`hz 10`), so the
//! precise deadline is our own timer; the server timeout is a backstop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use cloakroom_core::{Error, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, ServerErrorKind, Value};

use crate::error::map_redis;
use crate::keys::slot_of;
use crate::options::RedisOptions;
use crate::shared::{SharedConn, SlotRange, CONNECT_TIMEOUT};

/// Idle blocking connections kept per node.
const MAX_IDLE_PER_NODE: usize = 16;
/// Added to the server-side `BLPOP` timeout so our timer normally fires first.
const SERVER_TIMEOUT_SLACK: Duration = Duration::from_millis(250);

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// A release pushed to the wake list: try the lock again.
    Notified,
    /// Our timer ran out first: re-check the lock (its holder's lease may be
    /// over) or give up at the deadline.
    TimedOut,
}

#[derive(Debug)]
pub(crate) struct WaiterPool {
    cluster: bool,
    /// The single node's URL.
    single_url: String,
    /// `user:pass@` (or empty) for the URLs of Cluster nodes.
    userinfo: String,
    /// `redis` or `rediss` (TLS), for the URLs of Cluster nodes.
    scheme: &'static str,
    /// The CA that TLS connections trust, if not the built-in roots.
    tls_ca: Option<PathBuf>,
    clients: Mutex<HashMap<String, redis::Client>>,
    idle: Mutex<HashMap<String, Vec<MultiplexedConnection>>>,
    /// Cluster slot map, refreshed when empty or when a node answers MOVED.
    slots: Mutex<Vec<SlotRange>>,
}

impl WaiterPool {
    pub fn new(options: &RedisOptions) -> Self {
        let single_url = options.nodes().first().cloned().unwrap_or_default();
        WaiterPool {
            cluster: options.cluster,
            userinfo: userinfo(&single_url),
            scheme: if options.is_tls() { "rediss" } else { "redis" },
            tls_ca: options.tls_ca_path().map(Into::into),
            single_url,
            clients: Mutex::default(),
            idle: Mutex::default(),
            slots: Mutex::default(),
        }
    }

    /// Block until the wake list of a session gets an element or `timeout`
    /// passes. `shared` is used to look up the Cluster slot map.
    pub async fn wait(&self, shared: &mut SharedConn, wake_key: &str, timeout: Duration) -> Result<Woken> {
        let node = self.node_for(shared, wake_key).await?;
        let (conn, reused) = self.take(&node).await?;
        match self.blpop(&node, conn, wake_key, timeout).await {
            // An idle connection may have died with a restarted server: drop
            // the whole idle pool of that node and wait once more on a fresh
            // connection before calling the server unavailable.
            Err(_) if reused => {
                self.lock_idle().remove(&node);
                let (conn, _) = self.take(&node).await?;
                self.blpop(&node, conn, wake_key, timeout)
                    .await
                    .map_err(map_redis)
            }
            outcome => outcome.map_err(map_redis),
        }
    }

    async fn blpop(
        &self,
        node: &str,
        mut conn: MultiplexedConnection,
        wake_key: &str,
        timeout: Duration,
    ) -> redis::RedisResult<Woken> {
        let server_timeout = (timeout + SERVER_TIMEOUT_SLACK).as_secs_f64();
        let mut cmd = redis::cmd("BLPOP");
        cmd.arg(wake_key).arg(format!("{server_timeout:.3}"));
        let outcome = tokio::time::timeout(timeout, cmd.query_async::<Value>(&mut conn)).await;
        match outcome {
            // Dropping `conn` here cancels the pending BLPOP with it.
            Err(_elapsed) => Ok(Woken::TimedOut),
            Ok(Ok(value)) => {
                self.put_back(node, conn);
                Ok(if value == Value::Nil {
                    Woken::TimedOut
                } else {
                    Woken::Notified
                })
            }
            Ok(Err(err))
                if matches!(
                    err.kind(),
                    ErrorKind::Server(ServerErrorKind::Moved | ServerErrorKind::Ask)
                ) =>
            {
                // The slot moved: learn the new map and let the caller retry.
                self.lock_slots().clear();
                self.put_back(node, conn);
                Ok(Woken::TimedOut)
            }
            Ok(Err(err)) => {
                self.lock_slots().clear();
                Err(err)
            }
        }
    }

    async fn node_for(&self, shared: &mut SharedConn, key: &str) -> Result<String> {
        if !self.cluster {
            return Ok(String::new());
        }
        let slot = slot_of(key);
        if let Some(node) = find(&self.lock_slots(), slot) {
            return Ok(node);
        }
        let fresh = shared.cluster_slots().await?;
        let node = find(&fresh, slot);
        *self.lock_slots() = fresh;
        node.ok_or_else(|| Error::unavailable(format!("no cluster node serves slot {slot}")))
    }

    /// An idle connection to `node` (`true`: reused) or a new one.
    async fn take(&self, node: &str) -> Result<(MultiplexedConnection, bool)> {
        if let Some(conn) = self.lock_idle().get_mut(node).and_then(Vec::pop) {
            return Ok((conn, true));
        }
        let known = self.lock_clients().get(node).cloned();
        let client = match known {
            Some(client) => client,
            None => {
                let url = if self.cluster {
                    format!("{}://{}{node}/", self.scheme, self.userinfo)
                } else {
                    self.single_url.clone()
                };
                // Over TLS like the store's other connections (reading the CA
                // file, so not under the lock).
                let client = crate::tls::client(&url, self.tls_ca.as_deref())?;
                self.lock_clients()
                    .entry(node.to_owned())
                    .or_insert(client)
                    .clone()
            }
        };
        // No response timeout: a BLPOP is meant to sit there; our own timer
        // bounds the wait.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(map_redis)?;
        Ok((conn, false))
    }

    fn put_back(&self, node: &str, conn: MultiplexedConnection) {
        let mut idle = self.lock_idle();
        let conns = idle.entry(node.to_owned()).or_default();
        if conns.len() < MAX_IDLE_PER_NODE {
            conns.push(conn);
        }
    }

    // The pools hold plain data that a panic cannot leave half-updated, so a
    // poisoned lock is taken over.
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<MultiplexedConnection>>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_clients(&self) -> std::sync::MutexGuard<'_, HashMap<String, redis::Client>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<SlotRange>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn find(slots: &[SlotRange], slot: u16) -> Option<String> {
    slots
        .iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .map(|r| format!("{}:{}", r.host, r.port))
}

/// The `user:pass@` part of a node URL (empty without one): a Cluster's
/// nodes share the credentials of the seed nodes.
fn userinfo(node: &str) -> String {
    let Ok(url) = url::Url::parse(node) else {
        return String::new();
    };
    match (url.username(), url.password()) {
        ("", None) => String::new(),
        (user, None) => format!("{user}@"),
        (user, Some(password)) => format!("{user}:{password}@"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_reuse_the_seed_credentials() {
        assert_eq!(userinfo("redis://u:p%40ss@127.0.0.1:7000/"), "u:p%40ss@");
        assert_eq!(userinfo("redis://:pw@127.0.0.1:7000"), ":pw@");
        assert_eq!(userinfo("redis://u@127.0.0.1:7000"), "u@");
        assert_eq!(userinfo("redis://127.0.0.1:7000?protocol=resp3"), "");
    }
}
