//! What every test suite of the workspace shares: where the test servers
//! are, whether a missing one skips or fails, and opening a store for a
//! test.
//!
//! A server's URL comes from its environment variable (`CLOAKROOM_POSTGRES_URL`,
//! …) or the default that `.ci/run` and `docker-compose.yml` provide. A server
//! that does not answer skips the test with the command that starts it —
//! unless `CLOAKROOM_REQUIRE_BACKENDS=1` (as in CI), where it fails.
//!
//! Every server comes twice: in plain text ([`Server::ALL`]; the SQL ones
//! with TLS turned off in the URL, so that plain text stays tested when the
//! driver could encrypt) and over TLS ([`Server::TLS`]), verified against
//! the test CA that `scripts/tls-servers.sh` makes in `CLOAKROOM_TLS_DIR`
//! (default `/tmp/cloakroom-tls`, see [`tls_ca`]).
//!
//! ```ignore
//! use cloakroom_conformance::support::{connect, Server};
//!
//! async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
//!     connect(Server::Postgres, PostgresStore::from_url).await
//! }
//! ```

use std::fmt;
use std::sync::Arc;

use cloakroom_core::{
    async_trait, Acquired, Capabilities, Cursor, IdPage, LockGuard, LockOptions, Namespace, Record,
    RecordWrite, SessionKey, SessionStore, SweepBatch, Timestamp,
};

pub use crate::counting::CountingStore;
use crate::Unreachable;

/// A server the test suites use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Server {
    /// PostgreSQL, `CLOAKROOM_POSTGRES_URL`.
    Postgres,
    /// MySQL or MariaDB, `CLOAKROOM_MYSQL_URL`.
    Mysql,
    /// One Redis node, `CLOAKROOM_REDIS_URL`.
    Redis,
    /// A Redis Cluster, `CLOAKROOM_REDIS_CLUSTER_URL`.
    RedisCluster,
    /// PostgreSQL over TLS, verified (`verify-full`) against the test CA,
    /// `CLOAKROOM_POSTGRES_TLS_URL`.
    PostgresTls,
    /// MySQL or MariaDB over TLS, verified (`VERIFY_IDENTITY`) against the
    /// test CA, `CLOAKROOM_MYSQL_TLS_URL`.
    MysqlTls,
    /// One TLS-only Redis node (port 6380), `CLOAKROOM_REDIS_TLS_URL`.
    RedisTls,
    /// A TLS-only Redis Cluster (ports 7100-7102),
    /// `CLOAKROOM_REDIS_CLUSTER_TLS_URL`.
    RedisClusterTls,
}

impl Server {
    /// Every server in plain text, for suites that run against each.
    pub const ALL: [Server; 4] = [
        Server::Postgres,
        Server::Mysql,
        Server::Redis,
        Server::RedisCluster,
    ];

    /// The same servers over TLS (the `tls` features' suites).
    pub const TLS: [Server; 4] = [
        Server::PostgresTls,
        Server::MysqlTls,
        Server::RedisTls,
        Server::RedisClusterTls,
    ];

    /// A short name for messages (`"postgres"`).
    pub fn name(self) -> &'static str {
        match self {
            Server::Postgres => "postgres",
            Server::Mysql => "mysql",
            Server::Redis => "redis",
            Server::RedisCluster => "redis cluster",
            Server::PostgresTls => "postgres (tls)",
            Server::MysqlTls => "mysql (tls)",
            Server::RedisTls => "redis (tls)",
            Server::RedisClusterTls => "redis cluster (tls)",
        }
    }

    /// The environment variable that overrides the URL.
    pub fn env_var(self) -> &'static str {
        match self {
            Server::Postgres => "CLOAKROOM_POSTGRES_URL",
            Server::Mysql => "CLOAKROOM_MYSQL_URL",
            Server::Redis => "CLOAKROOM_REDIS_URL",
            Server::RedisCluster => "CLOAKROOM_REDIS_CLUSTER_URL",
            Server::PostgresTls => "CLOAKROOM_POSTGRES_TLS_URL",
            Server::MysqlTls => "CLOAKROOM_MYSQL_TLS_URL",
            Server::RedisTls => "CLOAKROOM_REDIS_TLS_URL",
            Server::RedisClusterTls => "CLOAKROOM_REDIS_CLUSTER_TLS_URL",
        }
    }

    /// Whether this is one of the TLS servers.
    pub fn is_tls(self) -> bool {
        Server::TLS.contains(&self)
    }

    /// The URL used when the variable is not set. The plain SQL servers'
    /// turn TLS off (both servers also accept TLS, and the driver would
    /// otherwise use it when compiled with it); the TLS servers' trust the
    /// test CA, [`tls_ca`], and check that the certificate names the host.
    pub fn default_url(self) -> String {
        let ca = query_value(&tls_ca().to_string_lossy());
        match self {
            Server::Postgres => "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into(),
            Server::Mysql => "mysql://root@127.0.0.1:3306/test?ssl-mode=DISABLED".into(),
            Server::Redis => "redis://127.0.0.1:6379".into(),
            Server::RedisCluster => "redis+cluster://127.0.0.1:7000".into(),
            Server::PostgresTls => {
                format!("postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={ca}")
            }
            Server::MysqlTls => {
                format!("mysql://root@localhost:3306/test?ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}")
            }
            Server::RedisTls => format!("rediss://localhost:6380?tls_ca={ca}"),
            // The Cluster's nodes announce themselves by IP address, which
            // the certificate names too.
            Server::RedisClusterTls => {
                format!("rediss+cluster://127.0.0.1:7100,127.0.0.1:7101,127.0.0.1:7102?tls_ca={ca}")
            }
        }
    }

    /// The store URL of this server for the tests.
    pub fn url(self) -> String {
        std::env::var(self.env_var())
            .ok()
            .filter(|url| !url.is_empty())
            .unwrap_or_else(|| self.default_url())
    }

    /// The command that starts the server on a developer machine.
    pub fn start_with(self) -> &'static str {
        match self {
            Server::Postgres => "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
            Server::Mysql => "start-stop-daemon --start --background --exec /usr/sbin/mariadbd",
            Server::Redis => "redis-server --daemonize yes --save ''",
            Server::RedisCluster => "scripts/redis-cluster.sh start",
            Server::PostgresTls | Server::MysqlTls | Server::RedisTls => "scripts/tls-servers.sh start",
            Server::RedisClusterTls => "scripts/tls-servers.sh certs && scripts/redis-cluster.sh start tls",
        }
    }

    /// An [`Unreachable`] for this server.
    pub fn unreachable(self, reason: impl fmt::Display) -> Unreachable {
        Unreachable::new(self.name(), reason.to_string(), self.start_with())
    }
}

/// The directory of the test certificates: `CLOAKROOM_TLS_DIR`, or
/// `/tmp/cloakroom-tls` (where `scripts/tls-servers.sh` writes them).
pub fn tls_dir() -> std::path::PathBuf {
    std::env::var_os("CLOAKROOM_TLS_DIR")
        .filter(|dir| !dir.is_empty())
        .map_or_else(|| "/tmp/cloakroom-tls".into(), Into::into)
}

/// The test CA every TLS server's certificate is signed by
/// (`ca.pem` in [`tls_dir`]); the certificate names `localhost` and
/// `127.0.0.1`.
pub fn tls_ca() -> std::path::PathBuf {
    tls_dir().join("ca.pem")
}

/// `text` percent-encoded for a URL query value (a path, say).
fn query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Whether unreachable backends fail instead of being skipped
/// (`CLOAKROOM_REQUIRE_BACKENDS` set to anything but empty or `0`).
pub fn backends_required() -> bool {
    std::env::var("CLOAKROOM_REQUIRE_BACKENDS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `Some(value)`, or for an unreachable backend: `None` after printing
/// `SKIPPED: …`, or a panic when backends are required.
pub fn skip_or_fail<T>(result: Result<T, Unreachable>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(u) if backends_required() => panic!(
            "{} is required (CLOAKROOM_REQUIRE_BACKENDS is set) but unreachable: {}\n  start it with: {}",
            u.backend, u.reason, u.start_with
        ),
        Err(u) => {
            eprintln!(
                "SKIPPED: {} unreachable ({}); start it with: {}",
                u.backend, u.reason, u.start_with
            );
            None
        }
    }
}

/// Open a store on `server` with `open` (given the server's test URL) and
/// create its schema; a failure on the way is [`Unreachable`]. Stores
/// connect lazily, so `migrate` is the first call that reaches the server.
pub async fn connect<S, F>(server: Server, open: F) -> Result<Arc<dyn SessionStore>, Unreachable>
where
    S: SessionStore + 'static,
    F: FnOnce(&str) -> cloakroom_core::Result<S>,
{
    let store = open(&server.url()).map_err(|e| server.unreachable(e))?;
    store.migrate().await.map_err(|e| server.unreachable(e))?;
    Ok(Arc::new(store))
}

/// A fresh directory under the system temporary directory, removed when
/// dropped, for the file and SQLite stores' tests.
#[derive(Debug)]
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    /// Create a new, empty, private (0700) directory named after `label`.
    pub fn new(label: &str) -> std::io::Result<Self> {
        let unique = cloakroom_core::SessionId::generate();
        let path = std::env::temp_dir().join(format!("cloakroom-{label}-{}", &unique.as_str()[..16]));
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&path)?;
        Ok(TempDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A store that keeps its temporary directory until the last store on it
/// is dropped, for suites that are handed only the store (the conformance
/// macros). Every call goes straight to the inner store.
#[derive(Debug)]
pub struct InTempDir<S> {
    store: S,
    _dir: Arc<TempDir>,
}

impl<S: SessionStore + 'static> InTempDir<S> {
    /// `store`, keeping `dir` alive as long as it lives.
    pub fn new(store: S, dir: Arc<TempDir>) -> Self {
        InTempDir { store, _dir: dir }
    }
}

#[async_trait]
impl<S: SessionStore + 'static> SessionStore for InTempDir<S> {
    fn capabilities(&self) -> Capabilities {
        self.store.capabilities()
    }

    async fn migrate(&self) -> cloakroom_core::Result<()> {
        self.store.migrate().await
    }

    async fn load(&self, key: &SessionKey) -> cloakroom_core::Result<Option<Record>> {
        self.store.load(key).await
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> cloakroom_core::Result<Record> {
        self.store.create(key, write).await
    }

    async fn save(
        &self,
        key: &SessionKey,
        write: RecordWrite,
        expected: Option<u64>,
    ) -> cloakroom_core::Result<u64> {
        self.store.save(key, write, expected).await
    }

    async fn delete(&self, key: &SessionKey) -> cloakroom_core::Result<bool> {
        self.store.delete(key).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        accessed: Timestamp,
        expires: Timestamp,
    ) -> cloakroom_core::Result<bool> {
        self.store.touch(key, accessed, expires).await
    }

    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> cloakroom_core::Result<Acquired> {
        self.store.try_lock(key, options).await
    }

    async fn lock(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> cloakroom_core::Result<Box<dyn LockGuard>> {
        self.store.lock(key, options).await
    }

    async fn list_ids(
        &self,
        namespace: &Namespace,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom_core::Result<IdPage> {
        self.store.list_ids(namespace, cursor, limit).await
    }

    async fn count(&self, namespace: &Namespace) -> cloakroom_core::Result<u64> {
        self.store.count(namespace).await
    }

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &cloakroom_core::Principal,
    ) -> cloakroom_core::Result<Vec<cloakroom_core::SessionSummary>> {
        self.store.list_by_principal(namespace, principal).await
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> cloakroom_core::Result<SweepBatch> {
        self.store.sweep_expired(namespace, now, cursor, limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_has_a_distinct_variable_and_a_parseable_default() {
        let all: Vec<Server> = Server::ALL.into_iter().chain(Server::TLS).collect();
        let mut vars: Vec<_> = all.iter().map(|s| s.env_var()).collect();
        vars.sort();
        vars.dedup();
        assert_eq!(vars.len(), 8);
        for server in all {
            let url = cloakroom_core::StoreUrl::parse(&server.default_url()).unwrap();
            assert_eq!(server.is_tls(), Server::TLS.contains(&server));
            if server.is_tls() {
                let ca = tls_ca().to_string_lossy().into_owned();
                assert!(url.query().iter().any(|(_, v)| *v == ca), "{server:?}: {url}");
            }
        }
        assert_eq!(query_value("/a b&c/ca.pem"), "/a%20b%26c/ca.pem");
    }

    #[test]
    fn temp_dirs_are_private_and_removed() {
        let dir = TempDir::new("support").unwrap();
        let path = dir.path().to_owned();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700);
        }
        drop(dir);
        assert!(!path.exists());
    }
}
