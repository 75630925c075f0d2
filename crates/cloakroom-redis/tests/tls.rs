//! TLS that must fail, and fail with the cause in the message, never hang:
//! a server certificate signed by a CA the store does not trust (one node
//! and Cluster), a host name the certificate does not name, TLS asked of a
//! plain-text server, and a `tls_ca` file that cannot be read. Run on the
//! TLS test servers (`scripts/tls-servers.sh start`,
//! `scripts/redis-cluster.sh start tls`) and the plain Redis; the whole
//! conformance suite over TLS is in `conformance_*_tls.rs`.
#![cfg(feature = "tls")]

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cloakroom_conformance::support::{skip_or_fail, Server, TempDir};
use cloakroom_core::{Error, LockOptions, Namespace, SessionId, SessionKey, SessionStore, StoreUrl};
use cloakroom_redis::{RedisOptions, RedisStore};
use tokio::net::{TcpListener, TcpStream};

/// No bad-TLS case may take longer than this.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<T>(work: impl Future<Output = cloakroom_core::Result<T>>) -> cloakroom_core::Result<T> {
    tokio::time::timeout(BOUND, work)
        .await
        .unwrap_or_else(|_| panic!("no answer within {BOUND:?}"))
}

/// The options of `server`'s test URL.
fn options(server: Server) -> RedisOptions {
    RedisOptions::from_url(&StoreUrl::parse(&server.url()).unwrap()).unwrap()
}

/// Whether `server` answers with its test URL; if not the test is skipped
/// (or fails when backends are required).
async fn reachable(server: Server) -> bool {
    let open = async {
        let store = RedisStore::new(options(server)).map_err(|e| server.unreachable(e))?;
        bounded(store.migrate()).await.map_err(|e| server.unreachable(e))
    };
    skip_or_fail(open.await).is_some()
}

/// The error of connecting a store with `options`, within [`BOUND`].
async fn failure(options: RedisOptions) -> Error {
    let shown = format!("{options:?}");
    let store = RedisStore::new(options).unwrap();
    match bounded(store.migrate()).await {
        Ok(()) => panic!("{shown}: connected"),
        Err(e) => {
            eprintln!("{shown}: {e}");
            e
        }
    }
}

fn assert_unavailable_for(err: &Error, cause: &[&str]) {
    let text = err.to_string().to_lowercase();
    assert!(
        matches!(err, Error::Unavailable { .. }) && cause.iter().any(|c| text.contains(c)),
        "expected Unavailable naming one of {cause:?}, got {err:?} ({err})"
    );
}

/// A CA of our own, made now, that no server's certificate comes from.
fn untrusted_ca(dir: &TempDir) -> std::path::PathBuf {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cloakroom untrusted test CA");
    let cert = params.self_signed(&key).unwrap();
    let path = dir.path().join("untrusted-ca.pem");
    std::fs::write(&path, cert.pem()).unwrap();
    path
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

#[tokio::test]
async fn untrusted_certificates_are_refused() {
    let dir = TempDir::new("redis-tls").unwrap();
    let untrusted = untrusted_ca(&dir);
    for server in [Server::RedisTls, Server::RedisClusterTls] {
        if !reachable(server).await {
            continue;
        }
        let err = failure(options(server).tls_ca(&untrusted)).await;
        assert_unavailable_for(&err, &["certificate"]);
    }
}

/// Without `tls_ca`, the built-in webpki roots are trusted, and the test CA
/// is not among them.
#[tokio::test]
async fn the_built_in_roots_do_not_trust_a_private_ca() {
    if !reachable(Server::RedisTls).await {
        return;
    }
    let mut without_ca = options(Server::RedisTls);
    without_ca.tls_ca = None;
    let err = failure(without_ca).await;
    assert_unavailable_for(&err, &["certificate"]);
}

#[tokio::test]
async fn a_host_the_certificate_does_not_name_is_refused() {
    if !reachable(Server::RedisTls).await {
        return;
    }
    let url = StoreUrl::parse(&Server::RedisTls.url()).unwrap();
    let Some(proxy) = other_name_for(url.hosts()[0].clone()).await else {
        return;
    };
    let ca = options(Server::RedisTls)
        .tls_ca
        .expect("the TLS test URL names its CA");
    let err = failure(RedisOptions::new(format!("rediss://{proxy}")).tls_ca(ca)).await;
    assert_unavailable_for(&err, &["not valid for name", "notvalidforname"]);
}

/// `rediss://` to the plain-text Redis: the handshake goes unanswered (the
/// server waits for the end of a command line) until the connect timeout,
/// and the error says what that most likely means. Never plain text.
#[tokio::test]
async fn tls_asked_of_a_plain_text_server_is_refused() {
    if !reachable(Server::Redis).await || !reachable(Server::RedisTls).await {
        return;
    }
    let plain = StoreUrl::parse(&Server::Redis.url()).unwrap();
    let ca = options(Server::RedisTls)
        .tls_ca
        .expect("the TLS test URL names its CA");
    let err = failure(RedisOptions::new(format!("rediss://{}", plain.hosts()[0])).tls_ca(ca)).await;
    assert_unavailable_for(&err, &["tls handshake"]);
}

#[tokio::test]
async fn an_unreadable_ca_file_is_a_config_error_naming_it() {
    let missing = "/nonexistent/cloakroom/ca.pem";
    for server in [Server::RedisTls, Server::RedisClusterTls] {
        // Building the store does not read it.
        let store = RedisStore::new(options(server).tls_ca(missing)).unwrap();
        let err = bounded(store.migrate()).await.unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains(missing)),
            "{server:?}: expected a Config error naming {missing}, got {err:?}"
        );
    }
    // A file that holds no certificate is named the same way.
    let dir = TempDir::new("redis-tls").unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let store = RedisStore::new(options(Server::RedisTls).tls_ca(&empty)).unwrap();
    let err = bounded(store.migrate()).await.unwrap_err();
    let shown = empty.display().to_string();
    assert!(
        matches!(&err, Error::Config(m) if m.contains(&shown) && m.contains("no PEM certificate")),
        "{err:?}"
    );
}

/// A waiter blocks (`BLPOP`) on a dedicated connection of its own, over TLS
/// like the others, to the node of the session's slot: the release wakes it
/// at once, on one node and on the Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_over_tls() {
    for server in [Server::RedisTls, Server::RedisClusterTls] {
        if !reachable(server).await {
            continue;
        }
        let store = RedisStore::new(options(server)).unwrap();
        let key = SessionKey::new(
            Namespace::new(&format!("tls-{}", &SessionId::generate().as_str()[..12])).unwrap(),
            SessionId::generate(),
        );
        let lease = Duration::from_secs(30);
        let holder = store
            .lock(&key, LockOptions::new(lease, Duration::from_secs(1)))
            .await
            .unwrap();
        let waiter = {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                let guard = store
                    .lock(&key, LockOptions::new(lease, Duration::from_secs(10)))
                    .await;
                (Instant::now(), guard.map(drop))
            })
        };
        // Long enough for the waiter to be blocked on its wake list.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "{server:?}: the waiter got a held lock");
        let released = Instant::now();
        holder.unlock().await.unwrap();
        let (acquired, outcome) = tokio::time::timeout(BOUND, waiter).await.unwrap().unwrap();
        outcome.unwrap();
        // Without the wake-up, the waiter's next look is ~700 ms later.
        let handoff = acquired.duration_since(released);
        assert!(
            handoff < Duration::from_millis(500),
            "{server:?}: hand-off took {handoff:?}: the wake-up did not arrive"
        );
    }
}
