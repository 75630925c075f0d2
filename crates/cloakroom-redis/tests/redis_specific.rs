//! What the conformance suite cannot see from outside: the key layout, the
//! token fence, Cluster slots, native expiry and wake-ups. Real servers only
//! (`CLOAKROOM_REDIS_URL`, `CLOAKROOM_REDIS_CLUSTER_URL`); an unreachable one
//! is skipped with the command that starts it, unless
//! `CLOAKROOM_REQUIRE_BACKENDS=1`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_conformance::support::{skip_or_fail, Server};
use cloakroom_core::{
    Error, Finish, Finished, LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore,
    StoreUrl, Then, Timestamp,
};
use cloakroom_redis::{RedisOptions, RedisStore};
use redis::AsyncCommands;

/// The options of `server`'s test URL.
fn options(server: Server) -> RedisOptions {
    RedisOptions::from_url(&StoreUrl::parse(&server.url()).unwrap()).unwrap()
}

/// A store on `server` with `options`, connected; `None` (skipped) if the
/// server does not answer.
async fn connect(server: Server, options: RedisOptions) -> Option<RedisStore> {
    let store = RedisStore::new(options).unwrap();
    let connected = store.migrate().await.map_err(|e| server.unreachable(e));
    skip_or_fail(connected).map(|()| store)
}

async fn single() -> Option<RedisStore> {
    connect(Server::Redis, options(Server::Redis)).await
}

/// The Cluster, with the Cluster client even for a plain `redis://` URL of
/// one of its nodes.
async fn cluster() -> Option<RedisStore> {
    connect(Server::RedisCluster, options(Server::RedisCluster).cluster(true)).await
}

/// A raw connection to the store's (first) node, for looking behind its back.
async fn raw(store: &RedisStore) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(store.options().nodes()[0].as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn namespace() -> Namespace {
    Namespace::new(&format!("rt-{}", &SessionId::generate().as_str()[..16])).unwrap()
}

fn write(data: &[u8], ttl: Duration) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(ttl),
        principal: None,
    }
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_after_the_lock_key_vanished_is_lease_lost_and_changes_nothing() {
    let Some(store) = single().await else { return };
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    store
        .create(&key, write(b"original", Duration::from_secs(60)))
        .await
        .unwrap();
    let keys = store.session_keys(&key);
    let (record_key, lock_key) = (keys.record, keys.lock);

    // The lock key deleted under the holder (an operator, a failover that lost it).
    let guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let deleted: i64 = raw.del(&lock_key).await.unwrap();
    assert_eq!(deleted, 1, "the lock key should exist while held");
    match guard
        .save_and_unlock(write(b"late", Duration::from_secs(60)))
        .await
    {
        Err(Error::LeaseLost) => {}
        other => panic!("a save without the lock key must be LeaseLost, got {other:?}"),
    }
    let r = store.load(&key).await.unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.version), (b"original".as_slice(), 1));

    // The lock key taken over by another token (lease ran out, someone else
    // locked): the late save fails and the new holder's lock survives.
    let guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let _: () = raw.set(&lock_key, "someone-else").await.unwrap();
    match guard
        .save_and_unlock(write(b"late", Duration::from_secs(60)))
        .await
    {
        Err(Error::LeaseLost) => {}
        other => panic!("a save under a stolen lock must be LeaseLost, got {other:?}"),
    }
    let holder: Option<String> = raw.get(&lock_key).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some("someone-else"),
        "the fenced release freed another's lock"
    );
    let data: Vec<u8> = raw.hget(&record_key, "data").await.unwrap();
    assert_eq!(data, b"original");
    let _: () = raw.del(&lock_key).await.unwrap();

    // The lease expired by Redis itself.
    let mut guard = store.lock(&key, opts(100, 1_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        guard.renew(Duration::from_secs(5)).await,
        Err(Error::LeaseLost)
    ));
    match guard
        .save_and_unlock(write(b"late", Duration::from_secs(60)))
        .await
    {
        Err(Error::LeaseLost) => {}
        other => panic!("a save after the lease expired must be LeaseLost, got {other:?}"),
    }
    let r = store.load(&key).await.unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.version), (b"original".as_slice(), 1));
    store.delete(&key).await.unwrap();
}

/// Without a grace (`expired_grace=0s`), Redis drops a record at its
/// `expires` and a sweep has nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_lock_has_a_lease_and_every_record_a_native_expiry() {
    let Some(store) = connect(
        Server::Redis,
        options(Server::Redis).expired_grace(Duration::ZERO),
    )
    .await
    else {
        return;
    };
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    let keys = store.session_keys(&key);
    let (record_key, lock_key) = (keys.record, keys.lock);

    let guard = store.lock(&key, opts(5_000, 1_000)).await.unwrap();
    let pttl: i64 = raw.pttl(&lock_key).await.unwrap();
    assert!((1..=5_000).contains(&pttl), "lock PTTL {pttl} is not the lease");
    let exists: bool = raw.exists(&record_key).await.unwrap();
    assert!(!exists, "a lock on a missing session created the record key");
    guard
        .save_and_unlock(write(b"x", Duration::from_millis(400)))
        .await
        .unwrap();

    let pttl: i64 = raw.pttl(&record_key).await.unwrap();
    assert!(
        (1..=400).contains(&pttl),
        "record PTTL {pttl} does not follow `expires`"
    );
    let wake_keys: i64 = raw.exists(&[&keys.wake, &keys.waiting]).await.unwrap();
    assert_eq!(wake_keys, 0, "a release nobody waited for left wake-up keys");
    let lock_left: bool = raw.exists(&lock_key).await.unwrap();
    assert!(!lock_left, "save_and_unlock left the lock key");

    tokio::time::sleep(Duration::from_millis(600)).await;
    let exists: bool = raw.exists(&record_key).await.unwrap();
    assert!(!exists, "Redis did not expire the record at `expires`");
    let batch = store
        .sweep_expired(&key.namespace, Timestamp::now(), None, 100)
        .await
        .unwrap();
    assert!(batch.deleted.is_empty() && batch.next.is_none());
    assert!(store.capabilities().expires_natively);
}

/// The wake-up protocol as the server sees it: a release nobody waited for
/// pushes nothing; a failed attempt raises the `waiting` flag (which expires
/// by itself), and the next release then leaves exactly one wake-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_pushes_a_wake_up_only_after_a_failed_attempt() {
    let Some(store) = single().await else { return };
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    let keys = store.session_keys(&key);

    let holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let flag: bool = raw.exists(&keys.waiting).await.unwrap();
    assert!(!flag, "an uncontended lock raised the waiting flag");
    holder.unlock().await.unwrap();
    let wake: bool = raw.exists(&keys.wake).await.unwrap();
    assert!(!wake, "a release nobody waited for pushed a wake-up");

    let holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    match store.lock(&key, opts(30_000, 50)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("a held lock must time out the second locker, got {other:?}"),
    }
    let flag_ttl: i64 = raw.pttl(&keys.waiting).await.unwrap();
    assert!(
        (1..=2_000).contains(&flag_ttl),
        "the waiting flag must be up and expire by itself, PTTL {flag_ttl}"
    );
    holder.unlock().await.unwrap();
    let wake_len: i64 = raw.llen(&keys.wake).await.unwrap();
    assert_eq!(
        wake_len, 1,
        "the release after a failed attempt must push one wake-up"
    );
    let wake_ttl: i64 = raw.pttl(&keys.wake).await.unwrap();
    assert!(
        wake_ttl > 0,
        "an uncollected wake-up must expire, PTTL {wake_ttl}"
    );
    let _: () = raw.del(&[&keys.wake, &keys.waiting]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_prefix_separates_stores() {
    let base = options(Server::Redis);
    let Some(a) = connect(Server::Redis, base.clone().prefix("cloakroom-test-a:")).await else {
        return;
    };
    let Some(b) = connect(Server::Redis, base.prefix("cloakroom-test-b:")).await else {
        return;
    };
    let ns = namespace();
    let key = SessionKey::new(ns.clone(), SessionId::generate());
    a.create(&key, write(b"a", Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(a.session_keys(&key).record.starts_with("cloakroom-test-a:{"));
    assert_eq!(b.load(&key).await.unwrap(), None);
    assert_eq!(b.count(&ns).await.unwrap(), 0);
    assert_eq!(a.count(&ns).await.unwrap(), 1);
    assert!(b.lock(&key, opts(1_000, 100)).await.unwrap().record().is_none());
    a.delete(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on loopback: nothing listens there. Opening does not notice;
    // the first operation does, and so does every later one.
    let store = RedisStore::from_url("redis://127.0.0.1:1").unwrap();
    for _ in 0..2 {
        match store.migrate().await {
            Err(Error::Unavailable { .. }) => {}
            other => panic!("connection refused must be Unavailable, got {other:?}"),
        }
    }
    let key = SessionKey::new(namespace(), SessionId::generate());
    match store.load(&key).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("connection refused must be Unavailable, got {other:?}"),
    }
    let cluster = RedisStore::from_url("redis+cluster://127.0.0.1:1,127.0.0.1:2").unwrap();
    match cluster.lock(&key, opts(1_000, 0)).await {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("an unreachable cluster must be Unavailable, got {other:?}"),
    }
}

/// A waiter blocked on a held lock proceeds as soon as the holder releases,
/// long before the holder's lease would have freed it.
async fn release_wakes_the_waiter(store: RedisStore) {
    let key = SessionKey::new(namespace(), SessionId::generate());
    let holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let waiter_store = store.clone();
    let waiter_key = key.clone();
    let waiter = tokio::spawn(async move {
        let guard = waiter_store
            .lock(&waiter_key, opts(30_000, 10_000))
            .await
            .unwrap();
        let at = Instant::now();
        guard.unlock().await.unwrap();
        at
    });
    // Let the waiter block on its wake list (the MAX_BLOCK fallback is 1 s,
    // so waking later than that would mean the notification did nothing).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter got a held lock");
    let released = Instant::now();
    holder.unlock().await.unwrap();
    let acquired = waiter.await.unwrap();
    let handoff = acquired.duration_since(released);
    // The fallback would wake the waiter ~700 ms after the release; 500 ms
    // tells the two apart with room for a loaded CI machine. (Latency itself
    // is measured by `cloakroom bench`, not asserted here.)
    assert!(
        handoff < Duration::from_millis(500),
        "hand-off took {handoff:?}: the wake-up did not arrive"
    );

    // Hand-off latency over many round trips between two tasks.
    let mut samples = Vec::new();
    for _ in 0..50 {
        let holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
        let s = store.clone();
        let k = key.clone();
        let waiter = tokio::spawn(async move {
            let g = s.lock(&k, opts(30_000, 5_000)).await.unwrap();
            let at = Instant::now();
            g.unlock().await.unwrap();
            at
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let released = Instant::now();
        holder.unlock().await.unwrap();
        samples.push(waiter.await.unwrap().duration_since(released));
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    eprintln!("hand-off p50 {p50:?}, max {:?}", samples[samples.len() - 1]);
    // Without the notification every hand-off waits for the 1 s fallback.
    assert!(
        p50 < Duration::from_millis(500),
        "hand-off p50 {p50:?}: waiters are not woken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_the_waiter_single() {
    if let Some(store) = single().await {
        release_wakes_the_waiter(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_wakes_the_waiter_cluster() {
    if let Some(store) = cluster().await {
        release_wakes_the_waiter(store).await;
    }
}

/// A holder that never releases (crashed) frees the lock when its lease runs
/// out, and the waiter notices then, not at its next fallback re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_frees_the_lock_at_its_lease() {
    let Some(store) = single().await else { return };
    let key = SessionKey::new(namespace(), SessionId::generate());
    let started = Instant::now();
    let crashed = store.lock(&key, opts(400, 1_000)).await.unwrap();
    std::mem::forget(crashed); // no Drop, no release: like a SIGKILLed process
    let guard = store.lock(&key, opts(30_000, 5_000)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350),
        "took a held lock after {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(900),
        "noticed the lapsed lease only after {waited:?}"
    );
    guard.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_one_session_share_a_cluster_slot() {
    let Some(store) = cluster().await else { return };
    let mut raw = raw(&store).await;
    let ns = namespace();
    for _ in 0..20 {
        let key = SessionKey::new(ns.clone(), SessionId::generate());
        let keys = store.session_keys(&key);
        let record = &keys.record;
        let mut slots = Vec::new();
        for k in [&keys.record, &keys.lock, &keys.waiting, &keys.wake] {
            let slot: i64 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query_async(&mut raw)
                .await
                .unwrap();
            slots.push(slot);
        }
        assert!(slots.iter().all(|s| *s == slots[0]), "{record}: slots {slots:?}");
    }
    // And sessions do spread over the masters: the cluster is really used.
    let mut distinct = std::collections::HashSet::new();
    for _ in 0..50 {
        let key = SessionKey::new(ns.clone(), SessionId::generate());
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(store.session_keys(&key).record)
            .query_async(&mut raw)
            .await
            .unwrap();
        distinct.insert(slot / 5462);
    }
    assert_eq!(
        distinct.len(),
        3,
        "50 sessions all landed on fewer than 3 masters' slot ranges"
    );
}

/// Listing walks every master, and pages that end in the middle of a SCAN
/// batch resume exactly where they stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_listing_of_ten_thousand_sessions_is_complete() {
    let Some(store) = cluster().await else { return };
    let store = Arc::new(store);
    let ns = namespace();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let store = Arc::clone(&store);
        let ns = ns.clone();
        tasks.spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..500 {
                let id = SessionId::generate();
                let key = SessionKey::new(ns.clone(), id.clone());
                store
                    .create(
                        &key,
                        write(format!("{chunk}").as_bytes(), Duration::from_secs(300)),
                    )
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        });
    }
    let mut created = std::collections::HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        created.extend(ids.unwrap());
    }
    assert_eq!(created.len(), 10_000);
    // Locks of other sessions in the namespace are not listed.
    let locked = store
        .lock(
            &SessionKey::new(ns.clone(), SessionId::generate()),
            opts(30_000, 1_000),
        )
        .await
        .unwrap();

    // Churn in another namespace while listing: keys come and go in the same
    // SCAN buckets, which must neither repeat nor hide an id of ours.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        tokio::spawn(async move {
            let other = namespace();
            let mut live = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = SessionKey::new(other.clone(), SessionId::generate());
                store
                    .create(&key, write(b"churn", Duration::from_secs(60)))
                    .await
                    .unwrap();
                live.push_back(key);
                if live.len() > 500 {
                    let old = live.pop_front().unwrap();
                    store.delete(&old).await.unwrap();
                }
            }
            for key in live {
                store.delete(&key).await.unwrap();
            }
        })
    };

    for limit in [997usize, 37] {
        let mut seen = std::collections::HashSet::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let page = store.list_ids(&ns, cursor, limit).await.unwrap();
            assert!(
                page.ids.len() <= limit,
                "page of {} over the limit {limit}",
                page.ids.len()
            );
            for id in page.ids {
                assert!(seen.insert(id), "an id was listed twice (limit {limit})");
            }
            pages += 1;
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, created, "listing with limit {limit} is incomplete");
        assert!(pages >= 10_000 / limit, "only {pages} pages");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.await.unwrap();
    assert_eq!(store.count(&ns).await.unwrap(), 10_000);
    locked.unlock().await.unwrap();

    // Clean up: delete through the store (each key in its own slot).
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<SessionId> = created.into_iter().collect();
    for chunk in ids.chunks(500) {
        let store = Arc::clone(&store);
        let ns = ns.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for id in chunk {
                assert!(store.delete(&SessionKey::new(ns.clone(), id)).await.unwrap());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(store.count(&ns).await.unwrap(), 0);
}

/// Holding on with `Then::Keep`: each write lands at once (visible to
/// `load`, durable), bumps the version the guard fences with, leaves the lock
/// key as it was (same token, lease not extended), and the final release
/// frees the lock for the next taker.
async fn keep_writes_then_release(store: RedisStore) {
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    let keys = store.session_keys(&key);
    let first = store
        .create(&key, write(b"v1", Duration::from_secs(60)))
        .await
        .unwrap();

    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let token = guard.lease().token.clone();
    let pttl_before: i64 = raw.pttl(&keys.lock).await.unwrap();
    let done = guard
        .finish(Finish::Save(write(b"v2", Duration::from_secs(60))), Then::Keep)
        .await
        .unwrap();
    assert_eq!(done, Finished::Saved { version: 2 });
    let held = guard.record().unwrap();
    assert_eq!((held.data.as_slice(), held.version), (b"v2".as_slice(), 2));
    assert_eq!(held.created, first.created, "a kept save changed `created`");
    // Durable while locked: the store, another connection, sees the write.
    let loaded = store.load(&key).await.unwrap().unwrap();
    assert_eq!((loaded.data.as_slice(), loaded.version), (b"v2".as_slice(), 2));
    assert_eq!(loaded.created, first.created);
    let holder: Option<String> = raw.get(&keys.lock).await.unwrap();
    assert_eq!(holder, Some(token), "a kept save gave up or changed the lock");
    let pttl_after: i64 = raw.pttl(&keys.lock).await.unwrap();
    assert!(
        0 < pttl_after && pttl_after <= pttl_before,
        "a kept save moved the lease: PTTL {pttl_before} -> {pttl_after}"
    );
    match store.lock(&key, opts(30_000, 0)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("the lock must still be held after a kept save, got {other:?}"),
    }

    let done = guard
        .finish(Finish::Save(write(b"v3", Duration::from_secs(60))), Then::Keep)
        .await
        .unwrap();
    assert_eq!(done, Finished::Saved { version: 3 });
    assert_eq!(guard.record().map(|r| r.version), Some(3));
    assert_eq!(
        guard.finish(Finish::Nothing, Then::Release).await.unwrap(),
        Finished::Nothing
    );
    let r = store.load(&key).await.unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.version), (b"v3".as_slice(), 3));
    let lock_left: bool = raw.exists(&keys.lock).await.unwrap();
    assert!(!lock_left, "the release after kept saves left the lock key");
    let next = store.lock(&key, opts(30_000, 0)).await.unwrap();
    assert_eq!(next.record().map(|r| r.version), Some(3));
    // The released guard is spent.
    assert!(matches!(
        guard.finish(Finish::Nothing, Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    next.unlock().await.unwrap();

    // Keep with a save, a touch, a delete and a save again, the last
    // released by a save: every step fenced against the one before.
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let later = Timestamp::now().saturating_add(Duration::from_secs(120));
    let now = Timestamp::now();
    assert_eq!(
        guard
            .finish(
                Finish::Touch {
                    accessed: now,
                    expires: later
                },
                Then::Keep
            )
            .await
            .unwrap(),
        Finished::Touched
    );
    let touched = guard.record().unwrap().clone();
    assert_eq!((touched.version, touched.expires), (3, later));
    assert_eq!(store.load(&key).await.unwrap(), Some(touched));
    assert_eq!(
        guard.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: true }
    );
    assert!(guard.record().is_none(), "record() after a kept delete");
    assert_eq!(store.load(&key).await.unwrap(), None);
    let exists: bool = raw.exists(&keys.record).await.unwrap();
    assert!(!exists, "a kept delete left the record hash");
    assert!(matches!(
        store.lock(&key, opts(30_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));
    // A save after a kept delete creates the session anew, at version 1.
    let fresh = write(b"again", Duration::from_secs(60));
    assert_eq!(
        guard
            .finish(Finish::Save(fresh.clone()), Then::Keep)
            .await
            .unwrap(),
        Finished::Saved { version: 1 }
    );
    assert_eq!(guard.record().map(|r| r.created), Some(fresh.created));
    assert_eq!(
        guard
            .finish(
                Finish::Save(write(b"last", Duration::from_secs(60))),
                Then::Release
            )
            .await
            .unwrap(),
        Finished::Saved { version: 2 }
    );
    let r = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (r.data.as_slice(), r.version, r.created),
        (b"last".as_slice(), 2, fresh.created)
    );
    store
        .lock(&key, opts(30_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();

    // A new session: kept saves from no record at all.
    let key = SessionKey::new(key.namespace.clone(), SessionId::generate());
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    for (data, version) in [(&b"n1"[..], 1), (b"n2", 2)] {
        assert_eq!(
            guard
                .finish(Finish::Save(write(data, Duration::from_secs(60))), Then::Keep)
                .await
                .unwrap(),
            Finished::Saved { version }
        );
        assert_eq!(store.load(&key).await.unwrap().map(|r| r.version), Some(version));
    }
    guard.unlock().await.unwrap();
    let r = store.load(&key).await.unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.version), (b"n2".as_slice(), 2));
    store
        .lock(&key, opts(30_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
    store.delete(&key).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_writes_then_release_single() {
    if let Some(store) = single().await {
        keep_writes_then_release(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_writes_then_release_cluster() {
    if let Some(store) = cluster().await {
        // A raw connection to one node cannot read another node's slots, so
        // on a Cluster the checks go through the store only.
        keep_writes_then_release_on_cluster(store).await;
    }
}

async fn keep_writes_then_release_on_cluster(store: RedisStore) {
    let key = SessionKey::new(namespace(), SessionId::generate());
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    for version in 1..=2u64 {
        let data = format!("c{version}");
        assert_eq!(
            guard
                .finish(
                    Finish::Save(write(data.as_bytes(), Duration::from_secs(60))),
                    Then::Keep
                )
                .await
                .unwrap(),
            Finished::Saved { version }
        );
        let r = store.load(&key).await.unwrap().unwrap();
        assert_eq!((r.data, r.version), (data.into_bytes(), version));
        assert!(matches!(
            store.lock(&key, opts(30_000, 0)).await,
            Err(Error::LockTimeout { .. })
        ));
    }
    assert_eq!(
        guard.finish(Finish::Nothing, Then::Release).await.unwrap(),
        Finished::Nothing
    );
    let next = store.lock(&key, opts(30_000, 0)).await.unwrap();
    assert_eq!(next.record().map(|r| r.version), Some(2));
    next.unlock().await.unwrap();
    store.delete(&key).await.unwrap();
}

/// The fence under Keep: once the lock key is gone or someone else's, a kept
/// write is `LeaseLost`, writes nothing, leaves the other lock alone, and
/// spends the guard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_after_the_lock_is_lost_is_lease_lost_and_writes_nothing() {
    let Some(store) = single().await else { return };
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    let keys = store.session_keys(&key);
    store
        .create(&key, write(b"original", Duration::from_secs(60)))
        .await
        .unwrap();
    let unchanged = |r: Option<cloakroom_core::Record>, version: u64, data: &[u8]| {
        let r = r.expect("the record vanished");
        assert_eq!((r.data.as_slice(), r.version), (data, version));
    };

    // The lock key deleted between two kept saves.
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    guard
        .finish(Finish::Save(write(b"kept", Duration::from_secs(60))), Then::Keep)
        .await
        .unwrap();
    let _: () = raw.del(&keys.lock).await.unwrap();
    for op in [
        Finish::Save(write(b"late", Duration::from_secs(60))),
        Finish::Touch {
            accessed: Timestamp::now(),
            expires: Timestamp::now().saturating_add(Duration::from_secs(600)),
        },
        Finish::Delete,
    ] {
        // The first call finds the fence; every later one a spent guard.
        match guard.finish(op, Then::Keep).await {
            Err(Error::LeaseLost) => {}
            other => panic!("a kept write without the lock key must be LeaseLost, got {other:?}"),
        }
    }
    unchanged(store.load(&key).await.unwrap(), 2, b"kept");
    let pttl: i64 = raw.pttl(&keys.record).await.unwrap();
    let grace = store.options().expired_grace.as_millis() as i64;
    assert!(
        pttl <= 60_000 + grace,
        "a fenced touch moved the expiry: PTTL {pttl}"
    );
    let lock_left: bool = raw.exists(&keys.lock).await.unwrap();
    assert!(!lock_left, "a fenced kept write re-created the lock key");

    // The lock key taken over by another token.
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let _: () = raw.set(&keys.lock, "someone-else").await.unwrap();
    match guard
        .finish(Finish::Save(write(b"late", Duration::from_secs(60))), Then::Keep)
        .await
    {
        Err(Error::LeaseLost) => {}
        other => panic!("a kept save under a stolen lock must be LeaseLost, got {other:?}"),
    }
    let holder: Option<String> = raw.get(&keys.lock).await.unwrap();
    assert_eq!(holder.as_deref(), Some("someone-else"));
    unchanged(store.load(&key).await.unwrap(), 2, b"kept");
    let _: () = raw.del(&keys.lock).await.unwrap();

    // The lease lapsed (Redis expired the lock key) after a kept save: the
    // holder kept the lock but not the lease.
    let mut guard = store.lock(&key, opts(150, 1_000)).await.unwrap();
    guard
        .finish(
            Finish::Save(write(b"in time", Duration::from_secs(60))),
            Then::Keep,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lock_left: bool = raw.exists(&keys.lock).await.unwrap();
    assert!(!lock_left, "a kept save extended the lease");
    match guard
        .finish(Finish::Save(write(b"late", Duration::from_secs(60))), Then::Keep)
        .await
    {
        Err(Error::LeaseLost) => {}
        other => panic!("a kept save after the lease lapsed must be LeaseLost, got {other:?}"),
    }
    unchanged(store.load(&key).await.unwrap(), 3, b"in time");

    // A kept write the record check refuses releases the lock and spends the
    // guard: an unlocked writer moved the version meanwhile.
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    store
        .save(&key, write(b"unlocked", Duration::from_secs(60)), None)
        .await
        .unwrap();
    match guard
        .finish(Finish::Save(write(b"stale", Duration::from_secs(60))), Then::Keep)
        .await
    {
        Err(Error::Conflict {
            expected: 3,
            found: 4,
        }) => {}
        other => panic!("a kept save over another version must be Conflict, got {other:?}"),
    }
    let lock_left: bool = raw.exists(&keys.lock).await.unwrap();
    assert!(!lock_left, "a failed kept save kept the lock");
    assert!(matches!(
        guard.finish(Finish::Nothing, Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    // And the record deleted meanwhile: Gone, lock released.
    let mut guard = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    store.delete(&key).await.unwrap();
    match guard
        .finish(
            Finish::Save(write(b"revived", Duration::from_secs(60))),
            Then::Keep,
        )
        .await
    {
        Err(Error::Gone) => {}
        other => panic!("a kept save of a deleted session must be Gone, got {other:?}"),
    }
    assert_eq!(store.load(&key).await.unwrap(), None);
    store
        .lock(&key, opts(30_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// A kept write frees nothing, so it wakes nobody: no wake-up is pushed and
/// a blocked waiter stays blocked until the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_does_not_wake_a_waiter() {
    let Some(store) = single().await else { return };
    let mut raw = raw(&store).await;
    let key = SessionKey::new(namespace(), SessionId::generate());
    let keys = store.session_keys(&key);

    // As the server sees it: the waiting flag is up, a kept save pushes
    // nothing, the release then pushes one wake-up.
    let mut holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    assert!(matches!(
        store.lock(&key, opts(30_000, 50)).await,
        Err(Error::LockTimeout { .. })
    ));
    let flag: bool = raw.exists(&keys.waiting).await.unwrap();
    assert!(flag, "a failed attempt must raise the waiting flag");
    for data in [&b"a"[..], b"b"] {
        holder
            .finish(Finish::Save(write(data, Duration::from_secs(60))), Then::Keep)
            .await
            .unwrap();
        let wake: bool = raw.exists(&keys.wake).await.unwrap();
        assert!(!wake, "a kept save pushed a wake-up");
    }
    holder.unlock().await.unwrap();
    let wake_len: i64 = raw.llen(&keys.wake).await.unwrap();
    assert_eq!(wake_len, 1, "the release must push one wake-up");
    let _: () = raw.del(&[&keys.wake, &keys.waiting]).await.unwrap();

    // A live waiter: blocked through kept saves, woken by the release, and it
    // then loads the last kept write.
    let mut holder = store.lock(&key, opts(30_000, 1_000)).await.unwrap();
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let guard = store.lock(&key, opts(30_000, 10_000)).await.unwrap();
            let at = Instant::now();
            let version = guard.record().map(|r| r.version);
            guard.unlock().await.unwrap();
            (at, version)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for version in 3..=5u64 {
        assert_eq!(
            holder
                .finish(Finish::Save(write(b"held", Duration::from_secs(60))), Then::Keep)
                .await
                .unwrap(),
            Finished::Saved { version }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "a kept save let the waiter in");
    }
    let released = Instant::now();
    holder.finish(Finish::Nothing, Then::Release).await.unwrap();
    let (acquired, version) = waiter.await.unwrap();
    assert_eq!(version, Some(5), "the waiter did not see the last kept save");
    let handoff = acquired.duration_since(released);
    assert!(
        handoff < Duration::from_millis(500),
        "hand-off took {handoff:?}: the release did not wake the waiter"
    );
    store.delete(&key).await.unwrap();
}
