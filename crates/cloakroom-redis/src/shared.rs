//! The store's shared, multiplexed connections: a [`ConnectionManager`] for
//! one node (reconnects by itself after a drop) or a Cluster connection
//! (follows slot moves and reconnects by itself). Everything except waiting
//! goes through them; a waiter blocks on a dedicated connection (`wait.rs`).

use std::time::Duration;

use cloakroom_core::Result;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, RedisFuture, Value};

use crate::error::{map_redis, unexpected_reply};
use crate::options::RedisOptions;

/// How long one command may take before it counts as a lost connection.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// One node or a Cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub(crate) enum SharedConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for SharedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SharedConn::Single(_) => "SharedConn::Single",
            SharedConn::Cluster(_) => "SharedConn::Cluster",
        })
    }
}

/// One slot range of a Cluster and the address of its master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub host: String,
    pub port: u16,
}

impl SharedConn {
    /// Connect to the server or the Cluster `options` name.
    pub async fn connect(options: &RedisOptions) -> Result<SharedConn> {
        if options.cluster {
            let builder = ClusterClientBuilder::new(options.nodes().to_vec())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT);
            let client = crate::tls::cluster(builder, options)?
                .build()
                .map_err(map_redis)?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| connect_error(options, e))?;
            Ok(SharedConn::Cluster(conn))
        } else {
            let url = options.nodes().first().map(String::as_str).unwrap_or_default();
            let client = crate::tls::client(url, options.tls_ca_path())?;
            let manager_config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_millis(500));
            let conn = ConnectionManager::new_with_config(client, manager_config)
                .await
                .map_err(|e| connect_error(options, e))?;
            Ok(SharedConn::Single(conn))
        }
    }

    /// `SCAN cursor MATCH pattern COUNT count` on one node: the single node,
    /// or the Cluster master at `node`.
    pub async fn scan(
        &mut self,
        node: Option<&SlotRange>,
        cursor: u64,
        pattern: &str,
        count: usize,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(count);
        let reply = match (self, node) {
            (SharedConn::Cluster(conn), Some(node)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: node.host.clone(),
                    port: node.port,
                });
                conn.route_command(cmd, routing).await
            }
            (conn, _) => cmd.query_async::<Value>(conn).await,
        }
        .map_err(map_redis)?;
        redis::from_redis_value::<(u64, Vec<Vec<u8>>)>(reply.clone())
            .map_err(|_| unexpected_reply("SCAN", &reply))
    }

    /// The slot ranges of a Cluster and their masters (`CLUSTER SLOTS`).
    pub async fn cluster_slots(&mut self) -> Result<Vec<SlotRange>> {
        let SharedConn::Cluster(conn) = self else {
            return Ok(Vec::new());
        };
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await
            .map_err(map_redis)?;
        parse_cluster_slots(&reply).ok_or_else(|| unexpected_reply("CLUSTER SLOTS", &reply))
    }
}

/// A failed connect as a cloakroom error. A TLS client that hears nothing
/// back within the connect timeout has most likely sent its handshake to a
/// plain-text port (a plain Redis waits for a line that never comes): say so.
fn connect_error(options: &RedisOptions, err: redis::RedisError) -> cloakroom_core::Error {
    if options.is_tls() && err.is_timeout() {
        return cloakroom_core::Error::unavailable(format!(
            "{err}: no TLS handshake within {CONNECT_TIMEOUT:?}; is the server serving TLS on that port?"
        ));
    }
    map_redis(err)
}

fn parse_cluster_slots(reply: &Value) -> Option<Vec<SlotRange>> {
    let Value::Array(ranges) = reply else { return None };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(parts) = range else { return None };
        let start: u16 = redis::from_redis_value_ref(parts.first()?).ok()?;
        let end: u16 = redis::from_redis_value_ref(parts.get(1)?).ok()?;
        let Value::Array(master) = parts.get(2)? else {
            return None;
        };
        let host: String = redis::from_redis_value_ref(master.first()?).ok()?;
        let port: u16 = redis::from_redis_value_ref(master.get(1)?).ok()?;
        out.push(SlotRange {
            start,
            end,
            host,
            port,
        });
    }
    out.sort_by_key(|r| r.start);
    Some(out)
}

/// The distinct masters of a slot map, in a stable order (by address), so a
/// listing cursor can name a node by its index.
pub(crate) fn masters(slots: &[SlotRange]) -> Vec<SlotRange> {
    let mut masters: Vec<SlotRange> = Vec::new();
    for r in slots {
        if !masters.iter().any(|m| m.host == r.host && m.port == r.port) {
            masters.push(r.clone());
        }
    }
    masters.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    masters
}

impl ConnectionLike for SharedConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            SharedConn::Single(c) => c.req_packed_command(cmd),
            SharedConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            SharedConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            SharedConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            SharedConn::Single(c) => c.get_db(),
            SharedConn::Cluster(c) => c.get_db(),
        }
    }
}
