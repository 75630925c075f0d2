//! The lock engine over the store: local queue, early hand-off, group
//! commit, fairness between processes, and the store's own wake-up.
//!
//! Every case here goes through [`Manager`](cloakroom_core::Manager), whose
//! lock engine queues the requests of one process; two managers over one
//! store stand for two processes (each has its own engine).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloakroom_core::Error;

use super::policies::{hits, stored_session};
use super::{must, opts};
use crate::Fixture;

/// Waiters of one process are served in the order they arrived.
pub async fn local_waiters_are_served_in_arrival_order(f: Fixture) {
    let m = must(f.manager().lock_wait(Duration::from_secs(30)).build(), "manager");
    let id = stored_session(&m).await;
    let holder = must(m.open(Some(&id)).await, "open the holder");
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..8usize {
        let (m, id, order) = (m.clone(), id.clone(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let mut s = m.open(Some(&id)).await?;
            order.lock().expect("order").push(n);
            let h: u64 = s.get("hits")?.unwrap_or(0);
            s.insert("hits", &(h + 1))?;
            s.commit().await.map(|_| ())
        }));
        // Each waiter is queued before the next arrives.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    must(holder.commit().await, "commit the holder");
    for t in tasks {
        must(t.await.expect("waiter panicked"), "waiter");
    }
    assert_eq!(
        *order.lock().expect("order"),
        (0..8).collect::<Vec<_>>(),
        "waiters of one process must get the session in arrival order"
    );
    assert_eq!(hits(&m, &id).await, Some(8));
}

/// A waiter handed the session in memory sees what the previous holder
/// committed, every key of it, and its own commit builds on it.
pub async fn handed_off_waiter_sees_the_previous_holders_data(f: Fixture) {
    let m = must(f.manager().lock_wait(Duration::from_secs(30)).build(), "manager");
    let id = stored_session(&m).await;
    for round in 0..5u64 {
        let mut holder = must(m.open(Some(&id)).await, "open the holder");
        let waiter = {
            let (m, id) = (m.clone(), id.clone());
            tokio::spawn(async move {
                let s = m.open(Some(&id)).await?;
                let note: Option<String> = s.get("note")?;
                let h: Option<u64> = s.get("hits")?;
                s.rollback().await?;
                Ok::<_, Error>((note, h))
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        must(holder.insert("note", &format!("from round {round}")), "insert");
        must(holder.insert("hits", &(round + 1)), "insert");
        must(holder.commit().await, "commit the holder");
        let (note, h) = must(waiter.await.expect("waiter panicked"), "waiter");
        assert_eq!(
            note.as_deref(),
            Some(format!("from round {round}").as_str()),
            "the next holder must see the previous holder's commit"
        );
        assert_eq!(h, Some(round + 1));
    }
}

/// Hand-off does not starve other processes: while one manager keeps a
/// session busy with a queue that never drains, another manager over the
/// same store (another process, in effect) still gets the session.
pub async fn a_busy_local_queue_lets_another_process_in(f: Fixture) {
    let busy = must(f.manager().lock_wait(Duration::from_secs(60)).build(), "manager");
    let other = must(f.manager().lock_wait(Duration::from_secs(20)).build(), "manager");
    let id = stored_session(&busy).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..6)
        .map(|_| {
            let (m, id, stop, done) = (busy.clone(), id.clone(), Arc::clone(&stop), Arc::clone(&done));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut s = m.open(Some(&id)).await?;
                    let h: u64 = s.get("hits")?.unwrap_or(0);
                    s.insert("hits", &(h + 1))?;
                    s.commit().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(())
            })
        })
        .collect();
    // Let the busy queue get going, then ask from the other "process".
    let warm = Instant::now();
    while done.load(Ordering::Relaxed) < 20 && warm.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outside = other.open(Some(&id)).await;
    let busy_meanwhile = done.load(Ordering::Relaxed);
    let mut s = match outside {
        Ok(s) => s,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            panic!("another process must get a busy session within its wait, got {e:?}")
        }
    };
    let h: u64 = must(s.get("hits"), "hits").unwrap_or(0);
    must(s.insert("hits", &(h + 1)), "insert");
    must(s.commit().await, "the other process commits");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        must(t.await.expect("busy task panicked"), "busy task");
    }
    let total = done.load(Ordering::Relaxed) as u64 + 1;
    assert!(busy_meanwhile >= 20, "the busy queue was running");
    assert_eq!(
        hits(&busy, &id).await,
        Some(total),
        "every commit of both processes must be counted"
    );
}

/// A group write that fails fails every commit it covered and every commit
/// built on them; nothing of a failed commit is visible; commits that
/// returned `Ok` are all there. A holder outlives the lease to make the
/// write fail (no renewal).
pub async fn a_failed_group_write_fails_every_commit_it_covered(f: Fixture) {
    let m = must(
        f.manager()
            .lease(Duration::from_millis(600))
            .renew_lease(false)
            .lock_wait(Duration::from_secs(30))
            .handoff(1000, Duration::from_secs(60))
            .touch_interval(Duration::ZERO)
            .build(),
        "manager",
    );
    let id = stored_session(&m).await;
    let first = must(m.open(Some(&id)).await, "open the first holder");
    let mut tasks = Vec::new();
    for n in 0..6usize {
        let (m, id) = (m.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = m.open(Some(&id)).await?;
            let h: u64 = s.get("hits")?.unwrap_or(0);
            if n == 1 {
                // Outlive the lease while holding the session.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            s.insert("hits", &(h + 1))?;
            s.commit().await.map(|_| ())
        }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut first = first;
    let h: u64 = must(first.get("hits"), "hits").unwrap_or(0);
    must(first.insert("hits", &(h + 1)), "insert");
    let mut ok = u64::from(first.commit().await.is_ok());
    let mut failed = 0u64;
    for t in tasks {
        match t.await.expect("task panicked") {
            Ok(()) => ok += 1,
            Err(Error::LeaseLost | Error::Gone | Error::Conflict { .. }) => failed += 1,
            Err(e) => panic!("a failed group write must report LeaseLost, Gone or Conflict, got {e:?}"),
        }
    }
    assert!(
        failed >= 1,
        "the commit of the holder that outlived its lease (and those built on it) must fail"
    );
    assert_eq!(
        hits(&m, &id).await,
        Some(ok),
        "the store must hold exactly the {ok} acknowledged commits ({failed} failed)"
    );
}

/// The store itself wakes a waiter promptly when the lock is released: no
/// fixed polling interval. The waiter has waited 100 ms when the lock is
/// released; a store that polls every 500 ms would hand it over ~400 ms
/// later, every round.
pub async fn a_release_wakes_the_stores_waiter_promptly(f: Fixture) {
    let mut delays = Vec::new();
    for _ in 0..3 {
        let key = f.new_key();
        let held = must(f.store.lock(&key, opts(30_000, 0)).await, "lock");
        let store = Arc::clone(&f.store);
        let k = key.clone();
        let waiter = tokio::spawn(async move {
            let g = store.lock(&k, opts(30_000, 20_000)).await;
            (Instant::now(), g)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = Instant::now();
        must(held.unlock().await, "unlock");
        let (woken, g) = waiter.await.expect("waiter panicked");
        must(must(g, "the waiter must get the lock").unlock().await, "unlock");
        delays.push(woken.saturating_duration_since(released));
    }
    delays.sort();
    let median = delays[1];
    assert!(
        median < Duration::from_millis(250),
        "a release must wake the waiter well before a 500 ms poll would; median hand-over {median:?} ({delays:?})"
    );
}
