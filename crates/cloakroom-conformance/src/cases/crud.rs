//! Load, create, save, delete, touch, expiry and namespaces: records without locks.

use std::time::Duration;

use cloakroom_core::{Error, Namespace, SessionKey, Timestamp};

use super::must;
use crate::record::{expired_write, session_bytes, write_expiring_in, write_with};
use crate::Fixture;

/// Create, load, save (compare-and-set) and delete round-trip with versions and times.
pub async fn crud_round_trip(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    assert_eq!(
        must(s.load(&key).await, "load missing"),
        None,
        "a missing key loads as None"
    );

    let w = write_with(b"first");
    let created = must(s.create(&key, w.clone()).await, "create");
    assert_eq!(created.version, 1, "a created record starts at version 1");
    let loaded = must(s.load(&key).await, "load").expect("created record must load");
    assert_eq!(loaded.data, b"first");
    assert_eq!(loaded.version, 1);
    assert_eq!(
        (loaded.created, loaded.expires),
        (w.created, w.expires),
        "times are stored as given"
    );

    let mut w2 = write_with(b"second");
    w2.created = Timestamp::from_millis(1);
    let v = must(s.save(&key, w2.clone(), Some(1)).await, "save at version 1");
    assert_eq!(v, 2, "save returns old version + 1");
    let loaded = must(s.load(&key).await, "load after save").expect("saved record must load");
    assert_eq!(
        (loaded.data.as_slice(), loaded.version),
        (b"second".as_slice(), 2)
    );
    assert_eq!(loaded.created, w.created, "save keeps the creation time");
    assert_eq!(loaded.expires, w2.expires, "save stores the new expiry");

    assert!(
        must(s.delete(&key).await, "delete"),
        "delete of a live record reports true"
    );
    assert_eq!(
        must(s.load(&key).await, "load deleted"),
        None,
        "a deleted record is gone"
    );
    assert!(
        !must(s.delete(&key).await, "delete again"),
        "delete of a missing record reports false"
    );
}

/// Create never overwrites a live record, and save never creates.
pub async fn create_does_not_overwrite_a_live_record(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"one")).await, "create");
    match s.create(&key, write_with(b"two")).await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("create over a live record must be Conflict, got {other:?}"),
    }
    let loaded = must(s.load(&key).await, "load").expect("record");
    assert_eq!(loaded.data, b"one", "the live record is untouched");

    let missing = f.new_key();
    for expected in [None, Some(1)] {
        match s.save(&missing, write_with(b"x"), expected).await {
            Err(Error::Gone) => {}
            other => panic!("save of a missing record must be Gone (never an upsert), got {other:?}"),
        }
    }
    assert_eq!(
        must(s.load(&missing).await, "load"),
        None,
        "a save must not create a record"
    );
}

/// Touch changes expiry and access time without rewriting data or
/// bumping the version.
pub async fn touch_changes_expiry_not_data_or_version(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    let w = write_with(&session_bytes(7));
    must(s.create(&key, w.clone()).await, "create");
    let accessed = w.accessed.saturating_add(Duration::from_secs(5));
    let expires = w.expires.saturating_add(Duration::from_secs(3600));
    assert!(
        must(s.touch(&key, accessed, expires).await, "touch"),
        "touch of a live record reports true"
    );
    let r = must(s.load(&key).await, "load").expect("record");
    assert_eq!(r.version, 1, "touch must not bump the version");
    assert_eq!(r.data, w.data, "touch must not change the data");
    assert_eq!(
        (r.accessed, r.expires),
        (accessed, expires),
        "touch stores the new times"
    );
    assert!(
        !must(s.touch(&f.new_key(), accessed, expires).await, "touch missing"),
        "touch of a missing record reports false"
    );
}

/// An expired record is never returned, swept or not, and behaves
/// like a missing one everywhere.
pub async fn expired_records_are_never_returned(f: Fixture) {
    let s = &f.store;
    let old = f.new_key();
    must(s.create(&old, expired_write(b"stale")).await, "create expired");
    assert_eq!(
        must(s.load(&old).await, "load expired"),
        None,
        "load returned an expired record"
    );
    match s.save(&old, write_with(b"revive"), None).await {
        Err(Error::Gone) => {}
        other => panic!("save of an expired record must be Gone, got {other:?}"),
    }
    assert!(
        !must(s.touch(&old, Timestamp::now(), Timestamp::now()).await, "touch"),
        "touched an expired record"
    );
    let guard = must(s.lock(&old, super::opts(5_000, 2_000)).await, "lock expired");
    assert_eq!(guard.record(), None, "lock returned an expired record");
    must(guard.unlock().await, "unlock");

    let short = f.new_key();
    must(
        s.create(&short, write_expiring_in(b"short", Duration::from_millis(400)))
            .await,
        "create short",
    );
    assert!(
        must(s.load(&short).await, "load short").is_some(),
        "a live record must load"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        must(s.load(&short).await, "load"),
        None,
        "a record past its expiry was returned"
    );
    assert_eq!(
        must(s.count(&f.namespace).await, "count"),
        0,
        "count includes expired records"
    );
    let page = must(s.list_ids(&f.namespace, None, 100).await, "list");
    assert!(
        page.ids.is_empty(),
        "listing includes expired records: {:?}",
        page.ids
    );

    let fresh = must(
        s.create(&old, write_with(b"new life")).await,
        "create over expired",
    );
    assert_eq!(
        fresh.version, 1,
        "create over an expired record starts a new record at version 1"
    );
}

/// The same id in two namespaces is two sessions: several applications can
/// share one store and never see each other's data.
pub async fn namespaces_are_isolated(f: Fixture) {
    let s = &f.store;
    let other_ns = Namespace::new(&format!("{}-b", f.namespace)).expect("valid namespace");
    let a = f.new_key();
    let b = SessionKey::new(other_ns.clone(), a.id.clone());
    must(s.create(&a, write_with(b"from a")).await, "create a");
    assert_eq!(
        must(s.load(&b).await, "load b"),
        None,
        "namespace b sees namespace a's record"
    );
    must(s.create(&b, write_with(b"from b")).await, "create b");
    assert_eq!(must(s.load(&a).await, "load a").expect("a").data, b"from a");
    assert!(must(s.delete(&b).await, "delete b"));
    assert!(
        must(s.load(&a).await, "load a").is_some(),
        "deleting in b removed a's record"
    );
    let listed = must(s.list_ids(&other_ns, None, 100).await, "list b");
    assert!(listed.ids.is_empty(), "namespace b lists a's ids");
    assert_eq!(must(s.count(&f.namespace).await, "count a"), 1);
}
