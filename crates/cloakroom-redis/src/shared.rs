//! The store's shared, multiplexed connections: a [`ConnectionManager`] for
//! one node (reconnects by itself after a drop) or a Cluster connection
//! (follows slot moves and reconnects by itself). Everything except waiting
//! goes through them; a waiter blocks on a dedicated connection (`wait.rs`).

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use cloakroom_core::Result;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisFuture, ScriptInvocation, Value};

use crate::error::{map_redis, unexpected_reply};
use crate::options::RedisOptions;

/// Most commands [`concurrently`] has in flight at once.
const IN_FLIGHT: usize = 256;

/// One command on its own clone of a shared connection, owning everything
/// it needs (so a batch of them is `Send` whatever borrowed the ids they
/// were made from).
pub(crate) type Call<T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'static>>;

/// `cmd` on `conn`, as a [`Call`].
pub(crate) fn call<T: FromRedisValue + Send + 'static>(conn: &SharedConn, cmd: Cmd) -> Call<T> {
    let mut conn = conn.clone();
    Box::pin(async move { cmd.query_async::<T>(&mut conn).await.map_err(map_redis) })
}

/// A script invocation on `conn`, as a [`Call`].
pub(crate) fn call_script(conn: &SharedConn, invocation: ScriptInvocation<'static>) -> Call<Value> {
    let mut conn = conn.clone();
    Box::pin(async move {
        invocation
            .invoke_async::<Value>(&mut conn)
            .await
            .map_err(map_redis)
    })
}

/// Run `calls` (single-key commands) at the same time, at most
/// [`IN_FLIGHT`] at once, and return their outcomes in order. The
/// multiplexed connections pipeline concurrent requests, so a batch costs
/// about one round trip; a real `Pipeline` would not do on a Cluster, whose
/// client refuses one that spans slots.
pub(crate) async fn concurrently<T>(calls: Vec<Call<T>>) -> Vec<Result<T>> {
    let mut outputs = Vec::with_capacity(calls.len());
    let mut calls = calls.into_iter();
    loop {
        let batch: Vec<Call<T>> = calls.by_ref().take(IN_FLIGHT).collect();
        if batch.is_empty() {
            return outputs;
        }
        outputs.extend(join_all(batch).await);
    }
}

async fn join_all<T>(mut calls: Vec<Call<T>>) -> Vec<Result<T>> {
    let mut outputs: Vec<Option<Result<T>>> = calls.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (call, output) in calls.iter_mut().zip(outputs.iter_mut()) {
            // A finished future must not be polled again.
            if output.is_none() {
                match call.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Outcomes come back in the order of the calls, however they finish,
    /// past one batch of `IN_FLIGHT`, and the calls of a batch overlap.
    #[tokio::test]
    async fn concurrent_calls_keep_their_order() {
        let n = IN_FLIGHT * 2 + 7;
        let calls: Vec<Call<usize>> = (0..n)
            .map(|i| -> Call<usize> {
                Box::pin(async move {
                    // Later calls finish first within a batch.
                    let wait = (IN_FLIGHT - i % IN_FLIGHT) as u64;
                    tokio::time::sleep(Duration::from_micros(wait * 20)).await;
                    if i == 3 {
                        return Err(cloakroom_core::Error::backend("three"));
                    }
                    Ok(i)
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let outputs = concurrently(calls).await;
        assert_eq!(outputs.len(), n);
        for (i, output) in outputs.into_iter().enumerate() {
            match output {
                Ok(value) => assert_eq!(value, i),
                Err(_) => assert_eq!(i, 3),
            }
        }
        // Run one after another they would take over half a second.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert!(concurrently(Vec::<Call<()>>::new()).await.is_empty());
    }
}
