//! Two independent instances of one store over the same storage: what two
//! application processes (or two hosts) sharing a database see. Nothing is
//! shared between the instances but the storage, so in-process shortcuts
//! (wake-up registries, caches, connection state) cannot hide a lock that
//! does not hold across them.

use std::time::{Duration, Instant};

use cloakroom_core::{Error, Manager};

use super::policies::{hits, spawn_increments, stored_session};
use super::{must, opts, SLACK};
use crate::record::{session_bytes, write_with};
use crate::TwoInstances;

/// Increments through two instances, alternating, end at the exact count.
pub async fn two_instances_lose_no_update(t: TwoInstances) {
    let manager = |store| {
        must(
            Manager::builder(store, t.namespace.clone())
                .lock_wait(Duration::from_secs(120))
                .touch_interval(Duration::ZERO)
                .build(),
            "manager",
        )
    };
    let (a, b) = (manager(t.first.clone()), manager(t.second.clone()));
    let id = stored_session(&a).await;
    let tasks: Vec<_> = (0..16)
        .map(|i| spawn_increments(if i % 2 == 0 { a.clone() } else { b.clone() }, id.clone(), 25))
        .collect();
    for task in tasks {
        must(task.await.expect("task panicked"), "serialized increment");
    }
    for (name, m) in [("first", &a), ("second", &b)] {
        assert_eq!(
            hits(m, &id).await,
            Some(400),
            "16 × 25 increments through two instances must end at exactly 400 (read through the {name})"
        );
    }
}

/// A lock taken through one instance excludes the other until it is
/// released, and the release lets the other in long before the lease would.
pub async fn a_lock_held_through_one_instance_blocks_the_other(t: TwoInstances) {
    let key = t.new_key();
    must(
        t.first.create(&key, write_with(&session_bytes(0))).await,
        "create",
    );
    let held = must(
        t.first.lock(&key, opts(30_000, 1_000)).await,
        "lock through the first",
    );
    match t.second.lock(&key, opts(30_000, 200)).await {
        Err(Error::LockTimeout { .. }) => {}
        Ok(_) => panic!("the second instance got a lock the first holds"),
        Err(e) => panic!("the second instance's wait must end in LockTimeout, got {e:?}"),
    }
    let waiter = {
        let (store, key) = (t.second.clone(), key.clone());
        tokio::spawn(async move {
            let guard = store.lock(&key, opts(30_000, 20_000)).await?;
            let at = Instant::now();
            guard.unlock().await?;
            Ok::<_, Error>(at)
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "the second instance got the lock while it was held"
    );
    let released = Instant::now();
    must(held.unlock().await, "release through the first");
    let acquired = must(waiter.await.expect("waiter panicked"), "lock through the second");
    let after = acquired.saturating_duration_since(released);
    // The lease is 30 s: a waiter that only got in when it ran out would be
    // far past this bound.
    assert!(
        after < SLACK,
        "the second instance got the lock {after:?} after the release"
    );
}
