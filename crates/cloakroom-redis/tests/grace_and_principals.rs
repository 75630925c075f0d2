//! What the conformance suite cannot see from outside about expired records
//! kept for sweepers (`expired_grace`), the principal sets and rotation: the
//! keys on the server, on one node and on a Cluster. Real servers only
//! (`CLOAKROOM_REDIS_URL`, `CLOAKROOM_REDIS_CLUSTER_URL`); an unreachable one
//! is skipped with the command that starts it, unless
//! `CLOAKROOM_REQUIRE_BACKENDS=1`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cloakroom_conformance::support::{skip_or_fail, Server};
use cloakroom_core::{
    Error, Finish, Finished, LockOptions, Namespace, Principal, RecordWrite, SessionId, SessionKey,
    SessionStore, StoreUrl, Then, Timestamp,
};
use cloakroom_redis::{RedisOptions, RedisStore};
use redis::aio::ConnectionLike;
use redis::AsyncCommands;

const HOUR: Duration = Duration::from_secs(3600);

fn options(server: Server) -> RedisOptions {
    RedisOptions::from_url(&StoreUrl::parse(&server.url()).unwrap()).unwrap()
}

async fn connect(server: Server, options: RedisOptions) -> Option<RedisStore> {
    let store = RedisStore::new(options).unwrap();
    let connected = store.migrate().await.map_err(|e| server.unreachable(e));
    skip_or_fail(connected).map(|()| store)
}

async fn single() -> Option<RedisStore> {
    connect(Server::Redis, options(Server::Redis)).await
}

async fn cluster() -> Option<RedisStore> {
    connect(Server::RedisCluster, options(Server::RedisCluster).cluster(true)).await
}

/// A raw connection to the single node.
async fn raw_single(store: &RedisStore) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(store.options().nodes()[0].as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

/// A raw Cluster connection (follows every key to its node).
async fn raw_cluster(store: &RedisStore) -> redis::cluster_async::ClusterConnection {
    let client = redis::cluster::ClusterClient::new(store.options().nodes().to_vec()).unwrap();
    client.get_async_connection().await.unwrap()
}

fn namespace() -> Namespace {
    Namespace::new(&format!("gp-{}", &SessionId::generate().as_str()[..16])).unwrap()
}

fn principal(name: &str) -> Principal {
    Principal::new(name).unwrap()
}

fn write(data: &[u8], who: Option<&Principal>, ttl: Duration) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(ttl),
        principal: who.cloned(),
    }
}

/// A write that expired a minute ago: kept for the grace, never live.
fn expired(data: &[u8], who: Option<&Principal>) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        expires: now.saturating_sub(Duration::from_secs(60)),
        ..write(data, who, HOUR)
    }
}

fn opts() -> LockOptions {
    LockOptions::new(Duration::from_secs(30), Duration::from_secs(1))
}

/// Sweep the whole namespace, `limit` keys per call; the deleted records.
async fn sweep_all(store: &RedisStore, ns: &Namespace, limit: usize) -> Vec<cloakroom_core::SweptRecord> {
    let (mut all, mut cursor, mut calls) = (Vec::new(), None, 0);
    let now = Timestamp::now();
    loop {
        let batch = store.sweep_expired(ns, now, cursor, limit).await.unwrap();
        assert!(
            batch.deleted.len() <= limit,
            "a sweep call deleted more than its limit"
        );
        all.extend(batch.deleted);
        calls += 1;
        assert!(calls < 10_000, "the sweep never ends");
        match batch.next {
            Some(next) => cursor = Some(next),
            None => return all,
        }
    }
}

async fn is_member<C: ConnectionLike + Send + Sync>(raw: &mut C, set: &str, id: &SessionId) -> bool {
    raw.sismember(set, id.as_str()).await.unwrap()
}

/// A record past `expires` stays in Redis for `expired_grace` (its key
/// expires at `expires + grace`) but is missing for every operation; a sweep
/// deletes it, unless locked, hands it back with data and principal, and
/// drops it from its principal's set.
async fn expired_records_wait_for_the_sweeper<C: ConnectionLike + Send + Sync>(
    store: RedisStore,
    mut raw: C,
) {
    assert!(!store.capabilities().expires_natively);
    let ns = namespace();
    let carol = principal("carol");
    let set = store.principal_set(&ns, &carol);
    let short = Duration::from_millis(300);
    let [lapsing, locked, live] = [0, 1, 2].map(|_| SessionKey::new(ns.clone(), SessionId::generate()));
    for key in [&lapsing, &locked] {
        store
            .create(key, write(b"gone soon", Some(&carol), short))
            .await
            .unwrap();
    }
    store
        .create(&live, write(b"live", Some(&carol), HOUR))
        .await
        .unwrap();
    let already = SessionKey::new(ns.clone(), SessionId::generate());
    store
        .create(&already, expired(b"born expired", None))
        .await
        .unwrap();

    let pttl: i64 = raw.pttl(&store.session_keys(&lapsing).record).await.unwrap();
    let grace = store.options().expired_grace.as_millis() as i64;
    assert!(
        pttl > grace - 5_000 && pttl <= grace + 300,
        "the record key does not expire at expires + grace: PTTL {pttl}"
    );
    let set_pttl: i64 = raw.pttl(&set).await.unwrap();
    assert!(
        set_pttl >= pttl,
        "the principal's set ({set_pttl}) dies before its record ({pttl})"
    );

    let guard = store.lock(&locked, opts()).await.unwrap();
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    for key in [&lapsing, &locked, &already] {
        let kept: bool = raw.exists(&store.session_keys(key).record).await.unwrap();
        assert!(kept, "an expired record was dropped before its grace ran out");
        assert_eq!(store.load(key).await.unwrap(), None, "an expired record loaded");
        assert!(!store
            .touch(key, Timestamp::now(), Timestamp::now().saturating_add(HOUR))
            .await
            .unwrap());
        assert!(matches!(
            store.save(key, write(b"x", None, HOUR), None).await,
            Err(Error::Gone)
        ));
    }
    assert_eq!(store.count(&ns).await.unwrap(), 1);
    assert_eq!(
        store.list_ids(&ns, None, 100).await.unwrap().ids,
        vec![live.id.clone()]
    );
    let listed: Vec<SessionId> = store
        .list_by_principal(&ns, &carol)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![live.id.clone()]);

    let swept = sweep_all(&store, &ns, 1).await;
    let mut got: Vec<(SessionId, Vec<u8>, Option<Principal>)> = swept
        .into_iter()
        .map(|s| (s.id, s.record.data, s.record.principal))
        .collect();
    got.sort();
    let mut want = vec![
        (lapsing.id.clone(), b"gone soon".to_vec(), Some(carol.clone())),
        (already.id.clone(), b"born expired".to_vec(), None),
    ];
    want.sort();
    assert_eq!(
        got, want,
        "the sweep deletes the expired, unlocked records, as stored"
    );
    let left: bool = raw.exists(&store.session_keys(&lapsing).record).await.unwrap();
    assert!(!left, "the swept record is still there");
    assert!(
        !is_member(&mut raw, &set, &lapsing.id).await,
        "the swept id stayed in its set"
    );
    // The listing above already dropped the expired one from the set.
    assert!(!is_member(&mut raw, &set, &locked.id).await);

    guard.unlock().await.unwrap();
    let swept = sweep_all(&store, &ns, 100).await;
    assert_eq!(
        swept.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![locked.id.clone()]
    );
    assert!(!is_member(&mut raw, &set, &locked.id).await);
    assert!(sweep_all(&store, &ns, 100).await.is_empty());
    assert_eq!(store.count(&ns).await.unwrap(), 1);
    store.delete(&live).await.unwrap();
    let set_left: bool = raw.exists(&set).await.unwrap();
    assert!(
        !set_left,
        "the set of a principal without sessions is left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_wait_for_the_sweeper_single() {
    let Some(store) = single().await else { return };
    let raw = raw_single(&store).await;
    expired_records_wait_for_the_sweeper(store, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_wait_for_the_sweeper_cluster() {
    let Some(store) = cluster().await else { return };
    let raw = raw_cluster(&store).await;
    expired_records_wait_for_the_sweeper(store, raw).await;
}

/// A sweep walks every master, a few keys per call, and its cursor neither
/// repeats nor skips a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_sweep_pages_through_every_master() {
    let Some(store) = cluster().await else { return };
    let ns = namespace();
    let mut doomed = BTreeSet::new();
    for i in 0..150u8 {
        let key = SessionKey::new(ns.clone(), SessionId::generate());
        let who = principal(&format!("user-{}", i % 3));
        store.create(&key, expired(&[i], Some(&who))).await.unwrap();
        doomed.insert(key.id);
    }
    for _ in 0..20 {
        let key = SessionKey::new(ns.clone(), SessionId::generate());
        store.create(&key, write(b"live", None, HOUR)).await.unwrap();
    }
    let swept = sweep_all(&store, &ns, 7).await;
    let ids: BTreeSet<SessionId> = swept.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids.len(), swept.len(), "a record was swept twice");
    assert_eq!(ids, doomed, "the sweep missed records");
    assert_eq!(store.count(&ns).await.unwrap(), 20);
    for i in 0..3 {
        let who = principal(&format!("user-{i}"));
        assert!(store.list_by_principal(&ns, &who).await.unwrap().is_empty());
    }
}

/// Garbage in a cursor is a `Config` error, not a panic or a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_sweep_cursor_is_refused() {
    let Some(store) = single().await else { return };
    for bad in ["", "x", "0:zz", "0:0:not-an-id"] {
        let cursor = Some(cloakroom_core::Cursor(bad.into()));
        match store
            .sweep_expired(&namespace(), Timestamp::now(), cursor, 10)
            .await
        {
            Err(Error::Config(_)) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

/// The principal set on the server: named by digest, holding the stored
/// ids; a save that keeps the principal does not touch it, one that moves
/// the session moves the id, a touch past what the set was kept for
/// extends it, and a listing drops members that are not (or no longer)
/// sessions of that principal.
async fn principal_sets_follow_their_sessions<C: ConnectionLike + Send + Sync>(
    store: RedisStore,
    mut raw: C,
) {
    let ns = namespace();
    let (dave, erin) = (principal("dave ' OR 1=1 -- }{"), principal("erin"));
    let (dave_set, erin_set) = (store.principal_set(&ns, &dave), store.principal_set(&ns, &erin));
    assert!(
        dave_set.contains(&dave.digest()) && !dave_set.contains("OR 1=1"),
        "{dave_set}"
    );
    let key = SessionKey::new(ns.clone(), SessionId::generate());
    let record = store.session_keys(&key).record;
    store
        .create(&key, write(b"1", Some(&dave), Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(is_member(&mut raw, &dave_set, &key.id).await);
    let stored: Option<String> = raw.hget(&record, "principal").await.unwrap();
    assert_eq!(stored.as_deref(), Some(dave.as_str()));
    let indexed: i64 = raw.hget(&record, "indexed_until").await.unwrap();
    let record_pttl: i64 = raw.pttl(&record).await.unwrap();
    let set_pttl: i64 = raw.pttl(&dave_set).await.unwrap();
    assert!(
        set_pttl >= record_pttl,
        "set PTTL {set_pttl} < record PTTL {record_pttl}"
    );

    // Same principal, expiry within what the set is kept for: untouched.
    store
        .save(&key, write(b"2", Some(&dave), Duration::from_secs(30)), Some(1))
        .await
        .unwrap();
    let again: i64 = raw.hget(&record, "indexed_until").await.unwrap();
    assert_eq!(again, indexed, "a save that keeps the principal re-indexed it");

    // A touch far past it: the set is extended first.
    let far = Timestamp::now().saturating_add(Duration::from_secs(7 * 24 * 3600));
    assert!(store.touch(&key, Timestamp::now(), far).await.unwrap());
    let extended: i64 = raw.hget(&record, "indexed_until").await.unwrap();
    let key_expiry = far.as_millis() + store.options().expired_grace.as_millis() as i64;
    assert!(
        extended >= key_expiry,
        "indexed_until {extended} < key expiry {key_expiry}"
    );
    let record_pttl: i64 = raw.pttl(&record).await.unwrap();
    let set_pttl: i64 = raw.pttl(&dave_set).await.unwrap();
    assert!(
        set_pttl >= record_pttl,
        "set PTTL {set_pttl} < record PTTL {record_pttl}"
    );
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        loaded.principal.as_ref(),
        Some(&dave),
        "touch keeps the principal"
    );

    // To erin, through a guard: the id moves.
    let guard = store.lock(&key, opts()).await.unwrap();
    guard
        .save_and_unlock(write(b"3", Some(&erin), HOUR))
        .await
        .unwrap();
    assert!(
        !is_member(&mut raw, &dave_set, &key.id).await,
        "the id stayed in the old set"
    );
    assert!(is_member(&mut raw, &erin_set, &key.id).await);
    // To nobody: both fields go.
    store.save(&key, write(b"4", None, HOUR), None).await.unwrap();
    assert!(!is_member(&mut raw, &erin_set, &key.id).await);
    let fields: (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&record)
        .arg("principal")
        .arg("indexed_until")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(fields, (None, None));

    // Stale members: an id without a record, a record of another principal,
    // and something that is not an id at all.
    let ghost = SessionId::generate();
    let mine = SessionKey::new(ns.clone(), SessionId::generate());
    store
        .create(&mine, write(b"erin's", Some(&erin), HOUR))
        .await
        .unwrap();
    let _: i64 = raw
        .sadd(&erin_set, &[ghost.as_str(), key.id.as_str(), "not an id"])
        .await
        .unwrap();
    let listed: Vec<SessionId> = store
        .list_by_principal(&ns, &erin)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed, vec![mine.id.clone()]);
    let members: BTreeSet<String> = raw.smembers(&erin_set).await.unwrap();
    assert_eq!(
        members,
        BTreeSet::from([mine.id.as_str().to_owned()]),
        "stale members were kept"
    );
    assert_eq!(
        store.load(&key).await.unwrap().unwrap().data,
        b"4",
        "a listing changed a record"
    );

    store.delete(&mine).await.unwrap();
    store.delete(&key).await.unwrap();
    let left: bool = raw.exists(&erin_set).await.unwrap();
    assert!(!left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_sets_follow_their_sessions_single() {
    let Some(store) = single().await else { return };
    let raw = raw_single(&store).await;
    principal_sets_follow_their_sessions(store, raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_sets_follow_their_sessions_cluster() {
    let Some(store) = cluster().await else { return };
    let raw = raw_cluster(&store).await;
    principal_sets_follow_their_sessions(store, raw).await;
}

/// Sessions moved between two principals over and over, by unlocked saves
/// and guards, while listings of both run and drop what they find stale:
/// once it all settles, each listing is exactly the sessions that have that
/// principal. A removal racing a re-assignment must never lose a live one.
async fn the_index_survives_racing_reassignments(store: RedisStore) {
    let store = Arc::new(store);
    let ns = namespace();
    let (p, q) = (principal("p"), principal("q"));
    let keys: Vec<SessionKey> = (0..12)
        .map(|_| SessionKey::new(ns.clone(), SessionId::generate()))
        .collect();
    for key in &keys {
        store.create(key, write(b"0", Some(&p), HOUR)).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for (n, key) in keys.iter().enumerate() {
        let (store, key, p, q) = (Arc::clone(&store), key.clone(), p.clone(), q.clone());
        tasks.spawn(async move {
            for round in 0..30usize {
                let who = match (round + n) % 3 {
                    0 => Some(&p),
                    1 => Some(&q),
                    _ => None,
                };
                if round % 2 == 0 {
                    store.save(&key, write(b"u", who, HOUR), None).await.unwrap();
                } else {
                    let guard = store
                        .lock(
                            &key,
                            LockOptions::new(Duration::from_secs(30), Duration::from_secs(10)),
                        )
                        .await
                        .unwrap();
                    guard.save_and_unlock(write(b"g", who, HOUR)).await.unwrap();
                }
            }
        });
    }
    let listers: Vec<_> = [p.clone(), q.clone()]
        .into_iter()
        .map(|who| {
            let (store, ns, stop) = (Arc::clone(&store), ns.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    store.list_by_principal(&ns, &who).await.unwrap();
                }
            })
        })
        .collect();
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for lister in listers {
        lister.await.unwrap();
    }
    for who in [&p, &q] {
        let mut want = BTreeSet::new();
        for key in &keys {
            if store.load(key).await.unwrap().unwrap().principal.as_ref() == Some(who) {
                want.insert(key.id.clone());
            }
        }
        let listed: BTreeSet<SessionId> = store
            .list_by_principal(&ns, who)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(listed, want, "the listing of {who} lost or kept a session");
    }
    for key in &keys {
        store.delete(key).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_survives_racing_reassignments_single() {
    let Some(store) = single().await else { return };
    the_index_survives_racing_reassignments(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_survives_racing_reassignments_cluster() {
    let Some(store) = cluster().await else { return };
    the_index_survives_racing_reassignments(store).await;
}

/// On one node a rotation is one script: the new record at version 1 with
/// its principal indexed, the old one gone from Redis and from its set, the
/// lock kept or released as asked. A rotation onto a live id, or of a
/// session without a record, writes nothing and releases the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_rotation_is_one_step() {
    let Some(store) = single().await else { return };
    assert!(store.capabilities().rotates_atomically);
    let mut raw = raw_single(&store).await;
    let ns = namespace();
    let (frank, gina) = (principal("frank"), principal("gina"));
    let old = SessionKey::new(ns.clone(), SessionId::generate());
    store
        .create(&old, write(b"old", Some(&frank), HOUR))
        .await
        .unwrap();
    let to = SessionKey::new(ns.clone(), SessionId::generate());

    let mut guard = store.lock(&old, opts()).await.unwrap();
    let finished = guard
        .finish(
            Finish::Rotate {
                to: to.id.clone(),
                write: write(b"new", Some(&gina), HOUR),
            },
            Then::Keep,
        )
        .await
        .unwrap();
    assert_eq!(finished, Finished::Rotated);
    assert_eq!(
        guard.record(),
        None,
        "the guard still holds a record after rotating it away"
    );
    let old_keys = store.session_keys(&old);
    let (record_left, lock_held): (bool, bool) = (
        raw.exists(&old_keys.record).await.unwrap(),
        raw.exists(&old_keys.lock).await.unwrap(),
    );
    assert!(
        !record_left && lock_held,
        "old record {record_left}, lock held {lock_held}"
    );
    let moved = store.load(&to).await.unwrap().unwrap();
    assert_eq!((moved.data.as_slice(), moved.version), (b"new".as_slice(), 1));
    assert_eq!(moved.principal.as_ref(), Some(&gina));
    assert!(!is_member(&mut raw, &store.principal_set(&ns, &frank), &old.id).await);
    assert!(is_member(&mut raw, &store.principal_set(&ns, &gina), &to.id).await);
    // The guard holds no record now: another rotation is Gone, and releases.
    let again = guard
        .finish(
            Finish::Rotate {
                to: SessionId::generate(),
                write: write(b"x", None, HOUR),
            },
            Then::Keep,
        )
        .await;
    assert!(matches!(again, Err(Error::Gone)), "{again:?}");
    let lock_held: bool = raw.exists(&old_keys.lock).await.unwrap();
    assert!(!lock_held, "a failed rotation kept the lock");

    // Onto a live id: Conflict, nothing written, lock released.
    let taken = SessionKey::new(ns.clone(), SessionId::generate());
    store.create(&taken, write(b"taken", None, HOUR)).await.unwrap();
    let mut guard = store.lock(&to, opts()).await.unwrap();
    let refused = guard
        .finish(
            Finish::Rotate {
                to: taken.id.clone(),
                write: write(b"over", Some(&gina), HOUR),
            },
            Then::Release,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Conflict {
                expected: 0,
                found: 1
            })
        ),
        "{refused:?}"
    );
    assert_eq!(store.load(&taken).await.unwrap().unwrap().data, b"taken");
    assert_eq!(store.load(&to).await.unwrap().unwrap().data, b"new");
    let lock_held: bool = raw.exists(&store.session_keys(&to).lock).await.unwrap();
    assert!(!lock_held);
    for key in [&to, &taken] {
        store.delete(key).await.unwrap();
    }
}

/// On a Cluster the two ids are in different slots: no atomic rotation is
/// claimed, and a rotation sent anyway is `Unsupported`, writes nothing and
/// releases the lock (the lock engine rotates in two steps there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_refuses_a_one_step_rotation() {
    let Some(store) = cluster().await else { return };
    assert!(!store.capabilities().rotates_atomically);
    let mut raw = raw_cluster(&store).await;
    let ns = namespace();
    let old = SessionKey::new(ns.clone(), SessionId::generate());
    store.create(&old, write(b"old", None, HOUR)).await.unwrap();
    let to = SessionKey::new(ns.clone(), SessionId::generate());
    let mut guard = store.lock(&old, opts()).await.unwrap();
    let refused = guard
        .finish(
            Finish::Rotate {
                to: to.id.clone(),
                write: write(b"new", None, HOUR),
            },
            Then::Keep,
        )
        .await;
    assert!(matches!(refused, Err(Error::Unsupported(_))), "{refused:?}");
    assert_eq!(store.load(&old).await.unwrap().unwrap().data, b"old");
    assert_eq!(store.load(&to).await.unwrap(), None);
    let lock_held: bool = raw.exists(&store.session_keys(&old).lock).await.unwrap();
    assert!(!lock_held, "a refused rotation kept the lock");
    store.delete(&old).await.unwrap();
}
