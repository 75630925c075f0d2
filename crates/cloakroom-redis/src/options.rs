//! [`RedisOptions`]: where the server is and how the store uses it, from a
//! `redis://` / `redis+cluster://` URL or built in code.

use std::fmt;

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::Deserialize;

use crate::keys::{KeyLayout, DEFAULT_PREFIX};

/// Default number of multiplexed connections a store spreads its requests
/// over (waiters' blocking connections come on top).
pub const DEFAULT_CONNECTIONS: usize = 4;

/// The most multiplexed connections one store opens.
const MAX_CONNECTIONS: usize = 64;

/// Query keys that are redis-rs's, not cloakroom's: they stay in the node
/// URLs handed to redis-rs. Its TCP URL parser reads no other key.
const DRIVER_KEYS: &[&str] = &["protocol"];

/// Where and how a [`RedisStore`](crate::RedisStore) connects.
///
/// From a URL with [`from_url`](Self::from_url), or in code:
///
/// ```
/// use cloakroom_redis::RedisOptions;
///
/// let options = RedisOptions::new("redis://127.0.0.1:6379/2")
///     .prefix("shop:")
///     .connections(8);
/// let cluster = RedisOptions::new_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
/// assert!(cluster.cluster);
/// # drop(options);
/// ```
///
/// Out-of-range values are caught by [`validate`](Self::validate), which
/// [`from_url`](Self::from_url) and [`RedisStore::new`](crate::RedisStore::new)
/// both call, so a value is refused the same way wherever it came from.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default = "RedisOptions::unset", deny_unknown_fields)]
pub struct RedisOptions {
    /// redis-rs connection URLs (`redis://[user:pass@]host:port[/db]`) of
    /// the server, or of the Cluster seed nodes.
    #[serde(skip)]
    nodes: Vec<String>,
    /// Put before every key (default [`DEFAULT_PREFIX`]); no `{` or `}`.
    pub prefix: String,
    /// Refuse records larger than this many bytes with `TooLarge` (default
    /// [`DEFAULT_MAX_RECORD_BYTES`]).
    pub max_record_bytes: usize,
    /// Spread requests over this many multiplexed connections, 1 to 64
    /// (default [`DEFAULT_CONNECTIONS`]). One connection is serialised
    /// through one socket and one reader task; a few let the client parse
    /// replies in parallel and the server batch more work per wake-up.
    pub connections: usize,
    /// Connect with the Cluster client (follows slot moves).
    pub cluster: bool,
}

impl RedisOptions {
    /// The defaults, with no node yet.
    fn unset() -> Self {
        RedisOptions {
            nodes: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            connections: DEFAULT_CONNECTIONS,
            cluster: false,
        }
    }

    /// One node, reached at a redis-rs connection URL
    /// (`redis://[user:pass@]host:port[/db]`). With [`cluster(true)`](Self::cluster)
    /// the node is a Cluster seed instead.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            nodes: vec![url.into()],
            ..RedisOptions::unset()
        }
    }

    /// A Redis Cluster, reached through these seed node URLs.
    pub fn new_cluster<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        RedisOptions {
            nodes: nodes.into_iter().map(Into::into).collect(),
            cluster: true,
            ..RedisOptions::unset()
        }
    }

    /// Read a store URL (see the crate docs):
    /// `redis://[user:pass@]host[:port][/db][?options]` for one node,
    /// `redis+cluster://[user:pass@]host:port[,host:port…][?options]` (or
    /// `redis://…?cluster=true`) for a Cluster. `protocol` is passed on to
    /// redis-rs; any other key that is not an option is an error naming it.
    /// `rediss://` is [`Error::Unsupported`]: TLS is not compiled in.
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("{} store URL: {why}", url.scheme()));
        let cluster_scheme = match url.scheme() {
            "redis" => false,
            "redis+cluster" => true,
            "rediss" | "rediss+cluster" => {
                return Err(Error::Unsupported(
                    "TLS redis urls (rediss://) are not compiled in".into(),
                ))
            }
            _ => return Err(bad("the scheme must be redis:// or redis+cluster://")),
        };
        if url.hosts().is_empty() {
            return Err(bad("missing host"));
        }
        let (mut options, driver): (RedisOptions, _) = url.split_options(DRIVER_KEYS)?;
        options.cluster |= cluster_scheme;
        let path = url.raw_path();
        if options.cluster && !matches!(path, "" | "/") {
            return Err(bad("a cluster url takes no database path"));
        }
        let userinfo = url.userinfo().map(|u| format!("{u}@")).unwrap_or_default();
        let query = if driver.is_empty() {
            String::new()
        } else {
            let mut query = url::form_urlencoded::Serializer::for_suffix(String::from("?"), 1);
            query.extend_pairs(&driver);
            query.finish()
        };
        options.nodes = url
            .hosts()
            .iter()
            .map(|host| format!("redis://{userinfo}{host}{path}{query}"))
            .collect();
        options.validate()?;
        Ok(options)
    }

    /// Put `prefix` before every key.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Refuse records larger than `limit` bytes with `TooLarge`.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// Spread requests over `n` multiplexed connections (1 to 64).
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n;
        self
    }

    /// Reach the nodes with the Cluster client (for a plain `redis://` URL
    /// that names a Cluster node).
    pub fn cluster(mut self, cluster: bool) -> Self {
        self.cluster = cluster;
        self
    }

    /// The redis-rs URLs of the server or of the Cluster seed nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Check every option; out-of-range values are [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(Error::Config(format!("redis options: {why}")));
        if self.nodes.is_empty() || self.nodes.iter().any(String::is_empty) {
            return bad("a node URL is missing".into());
        }
        if self.nodes.len() > 1 && !self.cluster {
            return bad("several nodes need redis+cluster:// (or cluster=true)".into());
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return bad(format!(
                "connections must be from 1 to {MAX_CONNECTIONS}, got {}",
                self.connections
            ));
        }
        KeyLayout::new(&self.prefix).map(drop)
    }
}

/// Node URLs with their passwords hidden.
impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self.nodes.iter().map(|node| hide_password(node)).collect();
        f.debug_struct("RedisOptions")
            .field("nodes", &nodes)
            .field("prefix", &self.prefix)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("connections", &self.connections)
            .field("cluster", &self.cluster)
            .finish()
    }
}

fn hide_password(node: &str) -> String {
    match url::Url::parse(node) {
        Ok(mut url) if url.password().is_some() => {
            // Only fails for URLs that cannot have a password.
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => node.to_owned(),
        Err(_) => "<not a URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<RedisOptions> {
        RedisOptions::from_url(&StoreUrl::parse(url)?)
    }

    #[test]
    fn single_node_url_keeps_db_and_strips_our_params() {
        let o = parse("redis://127.0.0.1:6379/3?prefix=app:&max_record_bytes=10").unwrap();
        assert!(!o.cluster);
        assert_eq!(o.nodes(), ["redis://127.0.0.1:6379/3"]);
        assert_eq!(o.prefix, "app:");
        assert_eq!(o.max_record_bytes, 10);
        assert_eq!(o.connections, DEFAULT_CONNECTIONS);
        let o = parse("redis://127.0.0.1:6379?connections=2&protocol=resp3").unwrap();
        assert_eq!(o.connections, 2);
        assert_eq!(o.nodes(), ["redis://127.0.0.1:6379?protocol=resp3"]);
        assert_eq!(o.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
    }

    #[test]
    fn cluster_url_lists_every_seed_node() {
        let o = parse("redis+cluster://u:p@127.0.0.1:7000,127.0.0.1:7001/?prefix=x").unwrap();
        assert!(o.cluster);
        assert_eq!(
            o.nodes(),
            ["redis://u:p@127.0.0.1:7000/", "redis://u:p@127.0.0.1:7001/"]
        );
        assert!(!format!("{o:?}").contains(":p@"), "{o:?}");
        for flag in ["true", "1", "yes", "on"] {
            let o = parse(&format!("redis://127.0.0.1:7000?cluster={flag}")).unwrap();
            assert!(o.cluster, "{flag}");
            assert_eq!(o.prefix, DEFAULT_PREFIX);
        }
        // `cluster=false` does not undo the scheme.
        assert!(
            parse("redis+cluster://127.0.0.1:7000?cluster=off")
                .unwrap()
                .cluster
        );
    }

    #[test]
    fn bad_urls_are_config_errors_naming_the_problem() {
        for (url, says) in [
            ("http://x", "scheme"),
            ("redis://", "host"),
            ("redis:x", "host"),
            ("redis://a:1,b:2", "several nodes"),
            ("redis+cluster://a:1/3", "database"),
            ("redis://a?prefix={x}", "prefix"),
            ("redis://a?max_record_bytes=lots", "lots"),
            ("redis://a?connections=0", "from 1 to 64"),
            ("redis://a?connections=65", "from 1 to 64"),
            ("redis://a?connections=many", "many"),
            ("redis://a?cluster=maybe", "maybe"),
            ("redis://a?colour=red", "colour"),
            ("redis://a?db=2", "db"),
        ] {
            match parse(url) {
                Err(Error::Config(message)) => assert!(message.contains(says), "{url}: {message}"),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        for url in ["rediss://a", "rediss+cluster://a:1,b:2"] {
            assert!(matches!(parse(url), Err(Error::Unsupported(_))), "{url}");
        }
    }

    #[test]
    fn the_builder_and_the_url_refuse_the_same_values_alike() {
        let from_url = parse("redis://127.0.0.1?connections=0").unwrap_err();
        let built = RedisOptions::new("redis://127.0.0.1")
            .connections(0)
            .validate()
            .unwrap_err();
        assert_eq!(from_url.to_string(), built.to_string());
        let built = RedisOptions::new("redis://127.0.0.1")
            .connections(65)
            .validate()
            .unwrap_err();
        assert!(built.to_string().contains("from 1 to 64"), "{built}");
        assert!(RedisOptions::new("redis://127.0.0.1")
            .prefix("a}")
            .validate()
            .is_err());
        assert!(RedisOptions::new_cluster(Vec::<String>::new())
            .validate()
            .is_err());
        assert!(RedisOptions::new_cluster(["redis://a", "redis://b"])
            .cluster(false)
            .validate()
            .is_err());
        let o = RedisOptions::new("redis://127.0.0.1:7000")
            .prefix("p:")
            .max_record_bytes(5)
            .connections(64)
            .cluster(true);
        o.validate().unwrap();
        assert_eq!(
            (o.prefix.as_str(), o.max_record_bytes, o.connections, o.cluster),
            ("p:", 5, 64, true)
        );
    }
}
