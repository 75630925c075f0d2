//! Two background sweepers — two application instances — on one store:
//! each expired session is deleted, and its expiry listener run, exactly
//! once; a session whose lock is held past its expiry is left until it is
//! released, and one renewed before it expired is never deleted.
//!
//! Redis is here too: it keeps an expired record for `expired_grace` (1 h
//! by default) for a sweep to find and hand to the expiry listeners.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom::{
    async_trait, LockOptions, Manager, Namespace, RecordWrite, SessionId, SessionListener, SessionStore,
    Timestamp,
};
use cloakroom_conformance::support::{skip_or_fail, Server, TempDir};
use cloakroom_conformance::{expired_write, Unreachable};

const EXPIRED: u64 = 50;

#[derive(Default)]
struct Expiries(AtomicU64);

#[async_trait]
impl SessionListener for Expiries {
    async fn on_expire(&self, _ended: &cloakroom::EndedSession) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn expiring_in(ms: u64) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: b"held".to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_millis(ms)),
        principal: None,
    }
}

/// Two instances of the store `url` names, each with its own connections.
async fn two(url: &str, server: Option<Server>) -> Option<(Arc<dyn SessionStore>, Arc<dyn SessionStore>)> {
    let unreachable = |e: cloakroom::Error| match server {
        Some(server) => server.unreachable(e),
        None => Unreachable::new("local store", e.to_string(), "a writable temporary directory"),
    };
    let open = || async {
        let store = cloakroom::registry().open(url).map_err(unreachable)?;
        store.migrate().await.map_err(unreachable)?;
        Ok::<_, Unreachable>(store)
    };
    let pair = async { Ok((open().await?, open().await?)) };
    skip_or_fail(pair.await)
}

async fn two_sweepers_share_one_store(url: &str, server: Option<Server>) {
    let Some((first, second)) = two(url, server).await else {
        return;
    };
    let namespace = Namespace::new(&format!("sweepers-{}", &SessionId::generate().as_str()[..12])).unwrap();
    let expiries = Arc::new(Expiries::default());
    let manager = |store: &Arc<dyn SessionStore>| {
        Manager::builder(Arc::clone(store), namespace.clone())
            .listener(expiries.clone())
            .build()
            .unwrap()
    };
    let (one, other) = (manager(&first), manager(&second));
    for _ in 0..EXPIRED {
        let key = one.key(&SessionId::generate());
        first.create(&key, expired_write(b"old")).await.unwrap();
    }
    // One session expires while its lock is held (in the other instance);
    // one is renewed by another writer before it expires.
    let (held, renewed) = (one.key(&SessionId::generate()), one.key(&SessionId::generate()));
    for key in [&held, &renewed] {
        first.create(key, expiring_in(300)).await.unwrap();
    }
    let lease = LockOptions::new(Duration::from_secs(30), Duration::from_secs(5));
    let guard = second.lock(&held, lease).await.unwrap();
    let in_an_hour = Timestamp::now().saturating_add(Duration::from_secs(3600));
    assert!(first.touch(&renewed, Timestamp::now(), in_an_hour).await.unwrap());
    tokio::time::sleep(Duration::from_millis(400)).await;

    let sweepers = [
        one.spawn_sweeper(Duration::from_millis(10)),
        other.spawn_sweeper(Duration::from_millis(10)),
    ];
    let swept = || expiries.0.load(Ordering::SeqCst);
    let runs = |s: &[cloakroom::Sweeper; 2]| s.iter().map(|s| s.stats().runs).sum::<u64>();
    let give_up = Instant::now() + Duration::from_secs(20);
    while swept() < EXPIRED && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More sweeps by both while the expired session is still held.
    let later = runs(&sweepers) + 6;
    while runs(&sweepers) < later && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        swept(),
        EXPIRED,
        "the expired sessions, and not the held one, were swept"
    );
    assert_eq!(
        guard.record().map(|r| r.data.as_slice()),
        Some(b"held".as_slice())
    );
    guard.unlock().await.unwrap();
    // Released, it is an expired session like the others: swept once.
    while swept() < EXPIRED + 1 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let later = runs(&sweepers) + 6;
    while runs(&sweepers) < later && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let [a, b] = sweepers;
    let (a_stats, b_stats) = (a.stats(), b.stats());
    a.shutdown().await;
    b.shutdown().await;
    println!("{url}: sweepers {a_stats:?} / {b_stats:?}");

    assert_eq!(
        swept(),
        EXPIRED + 1,
        "one expiry listener call per expired session"
    );
    assert_eq!(
        a_stats.deleted + b_stats.deleted,
        EXPIRED + 1,
        "each expired session deleted once"
    );
    assert!(a_stats.runs > 0 && b_stats.runs > 0, "both sweepers ran");
    assert!(
        first.load(&renewed).await.unwrap().is_some(),
        "the renewed session was swept"
    );
    assert_eq!(second.count(&namespace).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file() {
    let dir = TempDir::new("sweepers-file").unwrap();
    let url = format!("file://{}?durable=false", dir.path().display());
    two_sweepers_share_one_store(&url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite() {
    let dir = TempDir::new("sweepers-sqlite").unwrap();
    let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
    two_sweepers_share_one_store(&url, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres() {
    two_sweepers_share_one_store(&Server::Postgres.url(), Some(Server::Postgres)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mysql() {
    two_sweepers_share_one_store(&Server::Mysql.url(), Some(Server::Mysql)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis() {
    two_sweepers_share_one_store(&Server::Redis.url(), Some(Server::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster() {
    two_sweepers_share_one_store(&Server::RedisCluster.url(), Some(Server::RedisCluster)).await;
}
