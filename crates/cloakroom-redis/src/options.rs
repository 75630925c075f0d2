//! [`RedisOptions`]: where the server is and how the store uses it, from a
//! `redis://` / `redis+cluster://` (or, with the `tls` feature, `rediss://` /
//! `rediss+cluster://`) URL or built in code.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::Deserialize;

use crate::keys::{KeyLayout, DEFAULT_PREFIX};

/// Default number of multiplexed connections a store spreads its requests
/// over (waiters' blocking connections come on top).
pub const DEFAULT_CONNECTIONS: usize = 4;

/// The most multiplexed connections one store opens.
const MAX_CONNECTIONS: usize = 64;

/// Default [`RedisOptions::expired_grace`]: an hour, so that a sweeper
/// running every few minutes (or one that was down for a while) still finds
/// each expired record and can run expiry listeners on it.
pub const DEFAULT_EXPIRED_GRACE: Duration = Duration::from_secs(3600);

/// Longest [`RedisOptions::expired_grace`]: a week. Longer keeps dead
/// sessions' data in memory for no sweeper schedule anyone runs.
const MAX_EXPIRED_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

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
/// TLS (feature `tls`): node URLs with the `rediss://` scheme, and
/// [`tls_ca`](Self::tls_ca) for a private CA:
///
/// ```
/// # #[cfg(feature = "tls")] {
/// use cloakroom_redis::RedisOptions;
///
/// let options = RedisOptions::new("rediss://cache.internal:6380").tls_ca("/etc/ssl/private-ca.pem");
/// assert!(options.is_tls());
/// # options.validate().unwrap();
/// # }
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
    /// How long Redis keeps a record after its `expires` (default
    /// [`DEFAULT_EXPIRED_GRACE`], at most a week; `0s` allowed): its key
    /// expires at `expires + expired_grace`. Within that time the record is
    /// treated as missing by every operation, but a sweep can still find it,
    /// delete it and hand it to expiry listeners; after it, Redis drops the
    /// key by itself, unseen. Zero makes Redis drop records at `expires`
    /// (the capabilities then say `expires_natively`, and sweeps delete
    /// nothing).
    #[serde(with = "cloakroom_core::store_url::duration")]
    pub expired_grace: Duration,
    /// The CA (PEM file, one or more certificates) that TLS connections
    /// trust instead of the built-in webpki (Mozilla) roots. Read when the
    /// store connects, not when it is built. Only with `rediss://` nodes.
    pub tls_ca: Option<PathBuf>,
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
            expired_grace: DEFAULT_EXPIRED_GRACE,
            tls_ca: None,
        }
    }

    /// One node, reached at a redis-rs connection URL
    /// (`redis://[user:pass@]host:port[/db]`, or `rediss://…` for TLS). With
    /// [`cluster(true)`](Self::cluster) the node is a Cluster seed instead.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            nodes: vec![url.into()],
            ..RedisOptions::unset()
        }
    }

    /// A Redis Cluster, reached through these seed node URLs (all
    /// `redis://`, or all `rediss://` for TLS).
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
    /// `redis://…?cluster=true`) for a Cluster; `rediss://` and
    /// `rediss+cluster://` are the same over TLS (`tls_ca=/path/ca.pem` for a
    /// private CA). `protocol` is passed on to redis-rs; any other key that is
    /// not an option is an error naming it. Without the `tls` feature,
    /// `rediss://` is [`Error::Unsupported`], never a plain-text connection.
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        let bad = |why: &str| Error::Config(format!("{} store URL: {why}", url.scheme()));
        let (cluster_scheme, node_scheme) = match url.scheme() {
            "redis" => (false, "redis"),
            "redis+cluster" => (true, "redis"),
            "rediss" => (false, "rediss"),
            "rediss+cluster" => (true, "rediss"),
            _ => {
                return Err(bad(
                    "the scheme must be redis://, redis+cluster://, rediss:// or rediss+cluster://",
                ))
            }
        };
        if node_scheme == "rediss" {
            tls_compiled_in(url.scheme())?;
        }
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
            .map(|host| format!("{node_scheme}://{userinfo}{host}{path}{query}"))
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

    /// Keep records for `grace` past their expiry, for sweepers to find
    /// (see [`expired_grace`](Self::expired_grace)); `Duration::ZERO` lets
    /// Redis drop them at `expires`.
    pub fn expired_grace(mut self, grace: Duration) -> Self {
        self.expired_grace = grace;
        self
    }

    /// Trust the CA certificates in the PEM file at `path` (instead of the
    /// built-in webpki roots) for TLS connections. The file is read when the
    /// store connects; one that cannot be read then is [`Error::Config`]
    /// naming it.
    pub fn tls_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(path.into());
        self
    }

    /// The redis-rs URLs of the server or of the Cluster seed nodes.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// Whether the store connects over TLS (`rediss://` nodes).
    pub fn is_tls(&self) -> bool {
        self.nodes.first().is_some_and(|node| is_tls_node(node))
    }

    /// The CA file TLS connections trust, if not the built-in roots.
    pub(crate) fn tls_ca_path(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
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
        let tls = self.is_tls();
        if self.nodes.iter().any(|node| is_tls_node(node) != tls) {
            return bad("the nodes are either all rediss:// (TLS) or all redis://".into());
        }
        if tls {
            tls_compiled_in("rediss")?;
        }
        match &self.tls_ca {
            Some(_) if !tls => {
                return bad("tls_ca is for TLS connections: use rediss:// (or rediss+cluster://)".into())
            }
            Some(path) if path.as_os_str().is_empty() => return bad("tls_ca is an empty path".into()),
            _ => {}
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return bad(format!(
                "connections must be from 1 to {MAX_CONNECTIONS}, got {}",
                self.connections
            ));
        }
        if self.expired_grace > MAX_EXPIRED_GRACE {
            return bad(format!(
                "expired_grace must be at most 168h (a week), got {}s",
                self.expired_grace.as_secs()
            ));
        }
        if !self.expired_grace.subsec_nanos().is_multiple_of(1_000_000) {
            // Keys expire at whole milliseconds; a finer grace would be
            // rounded silently.
            return bad("expired_grace must be a whole number of milliseconds".into());
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
            .field("expired_grace", &self.expired_grace)
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

/// Whether a redis-rs node URL asks for TLS.
fn is_tls_node(node: &str) -> bool {
    node.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// `Ok` if TLS is compiled in; otherwise the [`Error::Unsupported`] that
/// names the feature, so that a TLS URL never connects in plain text.
fn tls_compiled_in(scheme: &str) -> Result<()> {
    if cfg!(feature = "tls") {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "{scheme}:// is Redis over TLS, which this build leaves out: turn on the `tls` \
             Cargo feature (of cloakroom, or of cloakroom-redis)"
        )))
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
        assert!(
            matches!(parse("redis://a?tls_ca=/ca.pem"), Err(Error::Config(m)) if m.contains("rediss://"))
        );
    }

    /// Without the feature, a TLS URL or node is refused, naming the
    /// feature; it never falls back to plain text.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_urls_name_the_missing_feature() {
        for url in ["rediss://a", "rediss+cluster://a:1,b:2", "REDISS://a"] {
            match parse(url) {
                Err(Error::Unsupported(m)) => assert!(m.contains("`tls`"), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let built = RedisOptions::new("rediss://a").validate().unwrap_err();
        assert!(
            matches!(&built, Error::Unsupported(m) if m.contains("`tls`")),
            "{built:?}"
        );
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_keep_their_scheme_and_ca() {
        let o = parse("rediss://u:p@localhost:6380/2?tls_ca=/etc/ca.pem&prefix=x:").unwrap();
        assert!(o.is_tls() && !o.cluster);
        assert_eq!(o.nodes(), ["rediss://u:p@localhost:6380/2"]);
        assert_eq!(o.tls_ca_path(), Some(Path::new("/etc/ca.pem")));
        let o = parse("rediss+cluster://127.0.0.1:7100,127.0.0.1:7101?tls_ca=%2Ftmp%2Fca.pem").unwrap();
        assert!(o.is_tls() && o.cluster);
        assert_eq!(o.nodes(), ["rediss://127.0.0.1:7100", "rediss://127.0.0.1:7101"]);
        assert_eq!(o.tls_ca_path(), Some(Path::new("/tmp/ca.pem")));
        // The system of roots: no tls_ca.
        let o = parse("rediss://h").unwrap();
        assert!(o.is_tls() && o.tls_ca.is_none());
        assert!(!parse("redis://h").unwrap().is_tls());
        // Mixed schemes are refused.
        let mixed = RedisOptions::new_cluster(["rediss://a:1", "redis://b:2"]).validate();
        assert!(matches!(mixed, Err(Error::Config(m)) if m.contains("all rediss://")));
        // The builder's CA takes a non-TLS node no more than the URL does.
        let plain = RedisOptions::new("redis://a").tls_ca("/ca.pem").validate();
        assert!(matches!(plain, Err(Error::Config(m)) if m.contains("rediss://")));
        RedisOptions::new("rediss://a")
            .tls_ca("/ca.pem")
            .validate()
            .unwrap();
        assert!(matches!(parse("rediss://a?tls_ca="), Err(Error::Config(m)) if m.contains("tls_ca")));
    }

    #[test]
    fn expired_grace_is_a_duration_option_defaulting_to_an_hour() {
        assert_eq!(parse("redis://a").unwrap().expired_grace, DEFAULT_EXPIRED_GRACE);
        assert_eq!(DEFAULT_EXPIRED_GRACE, Duration::from_secs(3600));
        for (text, want) in [
            ("0s", Duration::ZERO),
            ("0ms", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("90s", Duration::from_secs(90)),
            ("15m", Duration::from_secs(900)),
            ("2h", Duration::from_secs(7200)),
            ("168h", Duration::from_secs(7 * 24 * 3600)),
        ] {
            let o = parse(&format!("redis://a?expired_grace={text}")).unwrap();
            assert_eq!(o.expired_grace, want, "{text}");
            // Not a driver option: it stays out of the node URL.
            assert_eq!(o.nodes(), ["redis://a"], "{text}");
        }
        let o = parse("redis+cluster://a:1,b:2?expired_grace=30s&prefix=x:").unwrap();
        assert_eq!(o.expired_grace, Duration::from_secs(30));
        assert!(format!("{o:?}").contains("expired_grace: 30s"), "{o:?}");
    }

    #[test]
    fn bad_expired_graces_are_config_errors() {
        for (url, says) in [
            ("redis://a?expired_grace=soon", "duration"),
            ("redis://a?expired_grace=10", "duration"),
            ("redis://a?expired_grace=-1s", "duration"),
            ("redis://a?expired_grace=1d", "duration"),
            ("redis://a?expired_grace=", "duration"),
            ("redis://a?expired_grace=169h", "at most 168h"),
            ("redis://a?expired_grace=99999999999999999999h", "duration"),
        ] {
            match parse(url) {
                Err(Error::Config(message)) => assert!(message.contains(says), "{url}: {message}"),
                other => panic!("{url}: expected a Config error, got {other:?}"),
            }
        }
        let built = RedisOptions::new("redis://a")
            .expired_grace(Duration::from_secs(169 * 3600))
            .validate()
            .unwrap_err();
        let from_url = parse("redis://a?expired_grace=169h").unwrap_err();
        assert_eq!(built.to_string(), from_url.to_string());
        let sub_milli = RedisOptions::new("redis://a")
            .expired_grace(Duration::from_micros(1500))
            .validate();
        assert!(matches!(sub_milli, Err(Error::Config(m)) if m.contains("milliseconds")));
        RedisOptions::new("redis://a")
            .expired_grace(Duration::ZERO)
            .validate()
            .unwrap();
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
