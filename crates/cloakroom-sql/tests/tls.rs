//! TLS that must fail, and fail with the cause in the message, never hang:
//! a server certificate signed by a CA the store does not trust (in the
//! strict mode of the test URL and in the chain-only `verify-ca` /
//! `VERIFY_CA`), a host name the certificate does not name
//! (`verify-full` / `VERIFY_IDENTITY`), and a CA file that cannot be read. Run on the TLS test servers (`scripts/tls-servers.sh
//! start`); the whole conformance suite over TLS is in
//! `conformance_*_tls.rs`.
//!
//! "TLS demanded from a plain-text server" is not tested here: both test
//! servers accept TLS and plain text alike on one port, so there is no
//! plain-only server to ask (the Redis tests do it against the plain Redis).
#![cfg(all(feature = "tls", feature = "postgres", feature = "mysql"))]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cloakroom_conformance::support::{skip_or_fail, Server, TempDir};
use cloakroom_core::{Error, SessionStore, StoreUrl};
use cloakroom_sql::{MysqlStore, PostgresStore};
use tokio::net::{TcpListener, TcpStream};

/// No bad-TLS case may take longer than this.
const BOUND: Duration = Duration::from_secs(20);

/// One of the two servers over TLS: how to open its store, and the query
/// key of its CA file.
struct Db {
    server: Server,
    ca_key: &'static [&'static str],
    open: fn(&str) -> cloakroom_core::Result<Arc<dyn SessionStore>>,
}

const POSTGRES: Db = Db {
    server: Server::PostgresTls,
    ca_key: &["sslrootcert", "ssl-root-cert", "ssl-ca"],
    open: |url| Ok(Arc::new(PostgresStore::from_url(url)?)),
};

const MYSQL: Db = Db {
    server: Server::MysqlTls,
    ca_key: &["ssl-ca", "sslca"],
    open: |url| Ok(Arc::new(MysqlStore::from_url(url)?)),
};

impl Db {
    /// Whether the TLS server answers with the test URL; if not the test is
    /// skipped (or fails when backends are required).
    async fn reachable(&self) -> bool {
        let server = self.server;
        let open = async {
            let store = (self.open)(&server.url()).map_err(|e| server.unreachable(e))?;
            bounded(store.migrate()).await.map_err(|e| server.unreachable(e))
        };
        skip_or_fail(open.await).is_some()
    }

    /// The test URL with its CA file replaced by `ca` and, if given, its
    /// host by `host` and its TLS mode by `mode`.
    fn url_with(&self, ca: &str, host: Option<&str>, mode: Option<&str>) -> String {
        let url = StoreUrl::parse(&self.server.url()).unwrap();
        let query: Vec<(String, String)> = url
            .query()
            .iter()
            .map(|(key, value)| {
                let value = if self.ca_key.contains(&key.as_str()) {
                    ca.to_owned()
                } else if matches!(key.as_str(), "sslmode" | "ssl-mode") {
                    mode.unwrap_or(value).to_owned()
                } else {
                    value.clone()
                };
                (key.clone(), value)
            })
            .collect();
        let text = url.to_driver_url(url.scheme(), &query);
        match host {
            Some(host) => text.replacen(&url.hosts()[0], host, 1),
            None => text,
        }
    }

    /// The test URL's CA file.
    fn ca(&self) -> String {
        let url = StoreUrl::parse(&self.server.url()).unwrap();
        let found = url
            .query()
            .iter()
            .find(|(key, _)| self.ca_key.contains(&key.as_str()));
        found
            .map(|(_, value)| value.clone())
            .expect("the TLS test URL names its CA file")
    }

    /// `host:port` of the test URL.
    fn address(&self) -> String {
        StoreUrl::parse(&self.server.url()).unwrap().hosts()[0].clone()
    }

    /// The error of `migrate` on a store at `url`, within [`BOUND`].
    async fn failure(&self, url: &str) -> Error {
        let store = (self.open)(url).unwrap();
        match bounded(store.migrate()).await {
            Ok(()) => panic!("{url}: connected"),
            Err(e) => {
                eprintln!("{url}: {e}");
                e
            }
        }
    }
}

async fn bounded<T>(work: impl Future<Output = cloakroom_core::Result<T>>) -> cloakroom_core::Result<T> {
    tokio::time::timeout(BOUND, work)
        .await
        .unwrap_or_else(|_| panic!("no answer within {BOUND:?}"))
}

/// A CA of our own, made now, that no server's certificate comes from.
fn untrusted_ca(dir: &TempDir) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cloakroom untrusted test CA");
    let cert = params.self_signed(&key).unwrap();
    let path = dir.path().join("untrusted-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path.to_string_lossy().into_owned()
}

fn assert_unavailable_for(err: &Error, cause: &[&str]) {
    let text = err.to_string().to_lowercase();
    assert!(
        matches!(err, Error::Unavailable { .. }) && cause.iter().any(|c| text.contains(c)),
        "expected Unavailable naming one of {cause:?}, got {err:?} ({err})"
    );
}

async fn untrusted_certificates_are_refused(db: Db, verify_chain_only: &str) {
    if !db.reachable().await {
        return;
    }
    let dir = TempDir::new("sql-tls").unwrap();
    let untrusted = untrusted_ca(&dir);
    for mode in [None, Some(verify_chain_only)] {
        let err = db.failure(&db.url_with(&untrusted, None, mode)).await;
        assert_unavailable_for(&err, &["certificate"]);
    }
}

/// Forwards every connection made to a port of `127.0.0.2` to `target`: the
/// same server, reached under an address its certificate does not name.
/// `None` if the machine cannot listen there.
async fn other_name_for(target: String) -> Option<SocketAddr> {
    let listener = match TcpListener::bind("127.0.0.2:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("SKIPPED: cannot listen on 127.0.0.2 ({e})");
            return None;
        }
    };
    let address = listener.local_addr().ok()?;
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    Some(address)
}

async fn a_host_the_certificate_does_not_name_is_refused(db: Db, verify_chain_only: &str) {
    if !db.reachable().await {
        return;
    }
    let Some(proxy) = other_name_for(db.address()).await else {
        return;
    };
    let host = proxy.to_string();
    let name_mismatch = ["not valid for name", "notvalidforname"];
    // The strict mode of the test URL checks the name: refused.
    let err = db.failure(&db.url_with(&db.ca(), Some(&host), None)).await;
    assert_unavailable_for(&err, &name_mismatch);
    // The chain-only mode should not check the name, but sqlx 0.8.6 with
    // rustls 0.23.24 or later does (sqlx issue #3793: its verifier misses
    // rustls' `NotValidForNameContext`), so for now it refuses as well.
    // Either way it is never anything but this outcome or a connection.
    let store = (db.open)(&db.url_with(&db.ca(), Some(&host), Some(verify_chain_only))).unwrap();
    if let Err(err) = bounded(store.migrate()).await {
        assert_unavailable_for(&err, &name_mismatch);
    }
}

async fn an_unreadable_ca_file_is_a_config_error_naming_it(db: Db) {
    if !db.reachable().await {
        return;
    }
    let missing = "/nonexistent/cloakroom/ca.pem";
    let err = db.failure(&db.url_with(missing, None, None)).await;
    assert!(
        matches!(&err, Error::Config(m) if m.contains(missing)),
        "expected a Config error naming {missing}, got {err:?}"
    );
}

#[tokio::test]
async fn postgres_untrusted_certificates_are_refused() {
    untrusted_certificates_are_refused(POSTGRES, "verify-ca").await;
}

#[tokio::test]
async fn mysql_untrusted_certificates_are_refused() {
    untrusted_certificates_are_refused(MYSQL, "VERIFY_CA").await;
}

#[tokio::test]
async fn postgres_a_host_the_certificate_does_not_name_is_refused() {
    a_host_the_certificate_does_not_name_is_refused(POSTGRES, "verify-ca").await;
}

#[tokio::test]
async fn mysql_a_host_the_certificate_does_not_name_is_refused() {
    a_host_the_certificate_does_not_name_is_refused(MYSQL, "VERIFY_CA").await;
}

#[tokio::test]
async fn postgres_an_unreadable_ca_file_is_a_config_error_naming_it() {
    an_unreadable_ca_file_is_a_config_error_naming_it(POSTGRES).await;
}

#[tokio::test]
async fn mysql_an_unreadable_ca_file_is_a_config_error_naming_it() {
    an_unreadable_ca_file_is_a_config_error_naming_it(MYSQL).await;
}
