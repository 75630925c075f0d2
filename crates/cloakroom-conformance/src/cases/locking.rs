//! Locks, leases and fencing: waits are bounded, locks are always released,
//! and a holder past its lease cannot overwrite newer data.

use std::time::{Duration, Instant};

use cloakroom_core::{Error, Timestamp};

use super::{must, opts, SLACK};
use crate::record::write_with;
use crate::Fixture;

/// A waiter gives up with `LockTimeout` within the asked bound.
pub async fn lock_wait_times_out_within_the_bound(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"x")).await, "create");
    let holder = must(s.lock(&key, opts(30_000, 1_000)).await, "lock");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    match s.lock(&key, opts(30_000, 300)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("a waiter on a held lock must get LockTimeout, got {other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= wait,
        "gave up after {waited:?}, before the asked {wait:?}"
    );
    assert!(
        waited <= wait + SLACK,
        "gave up after {waited:?}, far past the asked {wait:?}"
    );
    must(holder.unlock().await, "unlock");
    let again = must(
        s.lock(&key, opts(30_000, 2_000)).await,
        "the lock must be free after unlock",
    );
    must(again.unlock().await, "unlock");
}

/// A lock on a session that does not exist yet is still a lock (a row-lock
/// backend must create the row to lock), and committing under it creates
/// the session.
pub async fn lock_on_a_missing_session_locks_and_creates(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    let guard = must(s.lock(&key, opts(30_000, 1_000)).await, "lock missing");
    assert_eq!(guard.record(), None, "a missing session locks with no record");
    match s.lock(&key, opts(30_000, 200)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("a lock on a missing session locked nothing: second lock gave {other:?}"),
    }
    assert_eq!(
        must(s.load(&key).await, "load"),
        None,
        "locking created a visible record"
    );
    assert_eq!(
        must(s.count(&f.namespace).await, "count"),
        0,
        "a lock placeholder is counted"
    );
    let v = must(
        guard.save_and_unlock(write_with(b"born locked")).await,
        "save under lock",
    );
    assert_eq!(v, 1, "a record created under a lock starts at version 1");
    let r = must(s.load(&key).await, "load").expect("record created under the lock");
    assert_eq!((r.data.as_slice(), r.version), (b"born locked".as_slice(), 1));

    // An abandoned lock on a missing key leaves nothing behind.
    let ghost = f.new_key();
    let g = must(s.lock(&ghost, opts(30_000, 1_000)).await, "lock ghost");
    must(g.unlock().await, "unlock ghost");
    assert_eq!(must(s.load(&ghost).await, "load ghost"), None);
    let ids = must(s.list_ids(&f.namespace, None, 100).await, "list").ids;
    assert_eq!(
        ids,
        vec![key.id.clone()],
        "a released lock on a missing key left a listed record"
    );
}

/// A holder whose lease ran out loses the
/// lock to the next waiter, and its late save fails with `LeaseLost` and
/// changes nothing.
pub async fn expired_lease_fences_the_late_writer(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"original")).await, "create");
    let mut stale = must(s.lock(&key, opts(300, 1_000)).await, "lock with a short lease");
    let started = Instant::now();
    let fresh = must(
        s.lock(&key, opts(30_000, 10_000)).await,
        "a waiter must get the lock once the holder's lease ran out",
    );
    assert!(
        started.elapsed() <= Duration::from_millis(300) + SLACK,
        "the waiter got the lock {:?} after a 300 ms lease",
        started.elapsed()
    );
    assert_eq!(
        fresh.record().map(|r| r.data.as_slice()),
        Some(b"original".as_slice())
    );
    must(
        fresh.save_and_unlock(write_with(b"newer")).await,
        "the new holder saves",
    );

    match stale.renew(Duration::from_secs(30)).await {
        Err(Error::LeaseLost) => {}
        other => panic!("renewing a lapsed lease must be LeaseLost, got {other:?}"),
    }
    match stale.save_and_unlock(write_with(b"stale")).await {
        Err(Error::LeaseLost) => {}
        other => panic!("a save after the lease ran out must be LeaseLost, got {other:?}"),
    }
    let r = must(s.load(&key).await, "load").expect("record");
    assert_eq!(r.data, b"newer", "the stale holder overwrote newer data");
    assert_eq!(r.version, 2);

    // Nobody took the lock, but the lease still ran out: the holder cannot
    // know it is safe, so the save is refused all the same.
    let lapsed = must(s.lock(&key, opts(200, 1_000)).await, "lock");
    tokio::time::sleep(Duration::from_millis(700)).await;
    match lapsed.save_and_unlock(write_with(b"late")).await {
        Err(Error::LeaseLost) => {}
        other => panic!("a save past the lease must be LeaseLost even uncontended, got {other:?}"),
    }
    assert_eq!(must(s.load(&key).await, "load").expect("record").data, b"newer");
}

/// Dropping a guard releases the lock promptly (not by lease expiry).
pub async fn dropped_guard_releases_the_lock(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"x")).await, "create");
    let guard = must(s.lock(&key, opts(60_000, 1_000)).await, "lock");
    drop(guard);
    let started = Instant::now();
    let again = must(s.lock(&key, opts(60_000, 5_000)).await, "lock after drop");
    assert!(
        started.elapsed() <= SLACK,
        "the lock came free {:?} after drop; a 60 s lease suggests it was not released",
        started.elapsed()
    );
    must(again.unlock().await, "unlock");
}

/// A holder task that is cancelled or panics releases the lock.
pub async fn cancelled_and_panicking_holders_release_the_lock(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"x")).await, "create");

    let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
    let holder = {
        let (s, key) = (s.clone(), key.clone());
        tokio::spawn(async move {
            let _guard = s.lock(&key, opts(60_000, 1_000)).await.expect("lock");
            let _ = locked_tx.send(());
            std::future::pending::<()>().await;
        })
    };
    must(locked_rx.await, "holder locked");
    holder.abort();
    let _ = holder.await;
    let started = Instant::now();
    let g = must(
        s.lock(&key, opts(60_000, 5_000)).await,
        "lock after the holder was cancelled",
    );
    assert!(
        started.elapsed() <= SLACK,
        "a cancelled holder kept the lock {:?}",
        started.elapsed()
    );
    must(g.unlock().await, "unlock");

    let panicker = {
        let (s, key) = (s.clone(), key.clone());
        tokio::spawn(async move {
            let _guard = s.lock(&key, opts(60_000, 1_000)).await.expect("lock");
            panic!("handler panicked while holding the session (expected by the test)");
        })
    };
    assert!(panicker.await.is_err(), "the task should have panicked");
    let started = Instant::now();
    let g = must(
        s.lock(&key, opts(60_000, 5_000)).await,
        "lock after the holder panicked",
    );
    assert!(
        started.elapsed() <= SLACK,
        "a panicked holder kept the lock {:?}",
        started.elapsed()
    );
    must(g.unlock().await, "unlock");
}

/// A waiter that gives up (cancelled) does not hold up those behind it.
pub async fn cancelled_waiter_does_not_block_the_queue(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"x")).await, "create");
    let holder = must(s.lock(&key, opts(60_000, 1_000)).await, "lock");
    let quitter = {
        let (s, key) = (s.clone(), key.clone());
        tokio::spawn(async move { s.lock(&key, opts(60_000, 30_000)).await.map(drop) })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let patient = {
        let (s, key) = (s.clone(), key.clone());
        tokio::spawn(async move {
            let g = s.lock(&key, opts(60_000, 10_000)).await?;
            g.unlock().await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    quitter.abort();
    let _ = quitter.await;
    must(holder.unlock().await, "unlock");
    let started = Instant::now();
    must(
        patient.await.expect("task"),
        "the waiter behind a cancelled one must get the lock",
    );
    assert!(
        started.elapsed() <= SLACK,
        "hand-off took {:?} after a waiter was cancelled",
        started.elapsed()
    );
}

/// A session held longer than its lease is renewed in the
/// background, keeps others out, and commits fine.
pub async fn lease_is_renewed_while_a_session_is_held(f: Fixture) {
    let m = must(
        f.manager()
            // Renewal runs every lease/3, so a 1 s lease tolerates a renewal
            // 666 ms late on a loaded machine before the holder rightly loses it.
            .lease(Duration::from_secs(1))
            .lock_wait(Duration::from_secs(5))
            .build(),
        "manager",
    );
    let mut s = must(m.open(None).await, "open new");
    must(s.insert("n", &1u8), "insert");
    let id = s.id().clone();
    must(s.commit().await, "commit");

    let mut held = must(m.open(Some(&id)).await, "open");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match f.store.lock(&f.key(&id), opts(30_000, 300)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("a renewed lease must keep others out past its first term, got {other:?}"),
    }
    must(held.insert("n", &2u8), "insert");
    must(
        held.commit().await,
        "a renewed session must commit without LeaseLost",
    );
    let r = must(m.open_read_only(&id).await, "read").expect("session");
    assert_eq!(must(r.get::<u8>("n"), "n"), Some(2));
}

/// Touch and delete through the guard, each releasing the lock.
pub async fn guard_touch_and_delete(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    let w = write_with(b"data");
    must(s.create(&key, w.clone()).await, "create");
    let g = must(s.lock(&key, opts(30_000, 1_000)).await, "lock");
    let expires = w.expires.saturating_add(Duration::from_secs(600));
    must(
        g.touch_and_unlock(Timestamp::now(), expires).await,
        "touch_and_unlock",
    );
    let r = must(s.load(&key).await, "load").expect("record");
    assert_eq!(
        (r.version, r.expires, r.data.as_slice()),
        (1, expires, b"data".as_slice())
    );

    let g = must(
        s.lock(&key, opts(30_000, 2_000)).await,
        "touch_and_unlock must release",
    );
    assert!(
        must(g.delete_and_unlock().await, "delete_and_unlock"),
        "deleting a live record reports true"
    );
    assert_eq!(
        must(s.load(&key).await, "load"),
        None,
        "delete_and_unlock left the record"
    );
    let g = must(
        s.lock(&key, opts(30_000, 2_000)).await,
        "delete_and_unlock must release",
    );
    assert_eq!(g.record(), None);
    must(g.unlock().await, "unlock");
}
