//! Store configuration and the `redis://` / `redis+cluster://` URLs.
//!
//! ```text
//! redis://[user:pass@]host[:port][/db][?prefix=app:&max_record_bytes=N&connections=N]
//! redis+cluster://[user:pass@]host:port[,host:port…][?prefix=…]
//! redis://host:port?cluster=true            (same as redis+cluster://)
//! ```
//!
//! `prefix` (default `cloakroom:`), `max_record_bytes` (default 4 MiB) and
//! `connections` (default 4) are cloakroom's; other query parameters are
//! passed on to redis-rs.

use cloakroom_core::{Error, Result};

use crate::keys::{KeyLayout, DEFAULT_PREFIX};

/// Default size limit of one encoded record.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;

/// Default number of multiplexed connections a store spreads its requests
/// over (waiters' blocking connections come on top).
pub const DEFAULT_CONNECTIONS: usize = 4;

/// Where and how to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://` URLs of the server, or of the Cluster seed nodes.
    pub(crate) nodes: Vec<String>,
    /// Connect with the Cluster client.
    pub(crate) cluster: bool,
    /// `user:pass@` (or empty), reused for the per-node connections waiters
    /// block on in a Cluster.
    pub(crate) userinfo: String,
    pub(crate) prefix: String,
    pub(crate) max_record_bytes: usize,
    pub(crate) connections: usize,
}

const MAX_CONNECTIONS: usize = 64;

impl RedisConfig {
    /// A single-node configuration for a redis-rs connection URL.
    pub fn single(url: &str) -> Self {
        RedisConfig {
            nodes: vec![url.to_owned()],
            cluster: false,
            userinfo: String::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            connections: DEFAULT_CONNECTIONS,
        }
    }

    /// Parse a cloakroom Redis URL (see the module docs).
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("redis url: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let mut cluster = match scheme {
            "redis" => false,
            "redis+cluster" => true,
            "rediss" | "rediss+cluster" => {
                return Err(Error::Unsupported(
                    "TLS redis urls (rediss://) are not compiled in".into(),
                ))
            }
            _ => return Err(bad("scheme must be redis:// or redis+cluster://")),
        };
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), authority),
        };
        if hosts.is_empty() {
            return Err(bad("missing host"));
        }

        let mut prefix = DEFAULT_PREFIX.to_owned();
        let mut max_record_bytes = DEFAULT_MAX_RECORD_BYTES;
        let mut connections = DEFAULT_CONNECTIONS;
        let mut passed_on = url::form_urlencoded::Serializer::new(String::new());
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*name {
                "prefix" => prefix = value.into_owned(),
                "max_record_bytes" => {
                    max_record_bytes = value
                        .parse()
                        .map_err(|_| bad("max_record_bytes is not a number"))?
                }
                "connections" => {
                    connections = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_CONNECTIONS).contains(n))
                        .ok_or_else(|| bad("connections must be a number from 1 to 64"))?
                }
                "cluster" => {
                    cluster = match &*value {
                        "true" | "1" | "yes" => true,
                        "false" | "0" | "no" => cluster,
                        _ => return Err(bad("cluster must be true or false")),
                    }
                }
                _ => {
                    passed_on.append_pair(&name, &value);
                }
            }
        }
        KeyLayout::new(&prefix)?;
        let passed_on = passed_on.finish();
        let query = if passed_on.is_empty() {
            String::new()
        } else {
            format!("?{passed_on}")
        };

        let nodes = if cluster {
            if !matches!(path, "" | "/") {
                return Err(bad("a cluster url takes no database path"));
            }
            hosts
                .split(',')
                .map(|host| {
                    if host.is_empty() {
                        Err(bad("empty host in the node list"))
                    } else {
                        Ok(format!("redis://{userinfo}{host}/{query}"))
                    }
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            if hosts.contains(',') {
                return Err(bad("several hosts need redis+cluster://"));
            }
            vec![format!("redis://{userinfo}{hosts}{path}{query}")]
        };
        Ok(RedisConfig {
            nodes,
            cluster,
            userinfo,
            prefix,
            max_record_bytes,
            connections,
        })
    }

    /// Connect to a Redis Cluster through these seed node URLs.
    pub fn cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisConfig::single("")
        }
    }

    /// The same nodes, reached with the Cluster client (for a plain
    /// `redis://` URL that names a Cluster node).
    pub fn into_cluster(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// Use `prefix` before every key (default `cloakroom:`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Refuse records larger than `limit` bytes with `TooLarge`.
    pub fn with_max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// Spread requests over `n` multiplexed connections (default
    /// [`DEFAULT_CONNECTIONS`], clamped to 1..=64). One connection is
    /// serialised through one socket and one reader task; a few let the
    /// client parse replies in parallel and the server batch more work per
    /// wake-up.
    pub fn with_connections(mut self, n: usize) -> Self {
        self.connections = n.clamp(1, MAX_CONNECTIONS);
        self
    }

    /// Whether this configuration connects to a Cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_node_url_keeps_db_and_strips_our_params() {
        let c = RedisConfig::from_url("redis://127.0.0.1:6379/3?prefix=app:&max_record_bytes=10").unwrap();
        assert!(!c.cluster);
        assert_eq!(c.nodes, vec!["redis://127.0.0.1:6379/3".to_owned()]);
        assert_eq!(c.prefix, "app:");
        assert_eq!(c.max_record_bytes, 10);
        assert_eq!(c.connections, DEFAULT_CONNECTIONS);
        let c = RedisConfig::from_url("redis://127.0.0.1:6379?connections=2&protocol=resp3").unwrap();
        assert_eq!(c.connections, 2);
        assert_eq!(c.nodes, vec!["redis://127.0.0.1:6379?protocol=resp3".to_owned()]);
    }

    #[test]
    fn cluster_url_lists_every_seed_node() {
        let c = RedisConfig::from_url("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001?prefix=x").unwrap();
        assert!(c.cluster);
        assert_eq!(
            c.nodes,
            vec![
                "redis://u:p@127.0.0.1:7000/".to_owned(),
                "redis://u:p@127.0.0.1:7001/".to_owned()
            ]
        );
        assert_eq!(c.userinfo, "u:p@");
        let c = RedisConfig::from_url("redis://127.0.0.1:7000?cluster=true").unwrap();
        assert!(c.cluster);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for url in [
            "http://x",
            "redis://",
            "redis://a:1,b:2",
            "redis://a?prefix={x}",
            "redis://a?max_record_bytes=lots",
            "redis://a?connections=0",
            "redis://a?connections=many",
        ] {
            assert!(
                matches!(RedisConfig::from_url(url), Err(Error::Config(_))),
                "{url}"
            );
        }
    }
}
