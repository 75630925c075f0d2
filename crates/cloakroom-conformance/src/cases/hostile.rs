//! Hostile and broken input: ids that are not ids, values full of
//! metacharacters, stored bytes that are not a record, oversize sessions,
//! and stores that leak (hashed ids, sealed data).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cloakroom_core::{list_ids, Error, Key, Keyring, Namespace, RecordWrite, SessionData, SessionId};
use futures::TryStreamExt;

use super::{must, opts};
use crate::record::write_with;
use crate::Fixture;

/// Hostile ids and namespaces fail the strict parse with `InvalidId`, so
/// no backend ever sees them, and the store is left empty.
pub async fn hostile_ids_are_rejected_before_the_store(f: Fixture) {
    let huge = "A".repeat(10_000);
    let hostile = [
        "",
        "../../etc/passwd",
        "..%2F..%2Fetc%2Fpasswd",
        "' OR 1=1 --",
        "'; DROP TABLE sessions; --",
        "{ns:id}",
        "*",
        huge.as_str(),
        "ÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅÅ",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\0",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",
    ];
    for text in hostile {
        match SessionId::parse(text) {
            Err(Error::InvalidId { .. }) => {}
            other => panic!("id {:?} must be InvalidId, got {other:?}", text.get(..40)),
        }
        if !text.is_empty() && text.len() <= 64 && text.bytes().all(|b| b.is_ascii_alphanumeric()) {
            continue;
        }
        assert!(
            Namespace::new(text).is_err(),
            "namespace {:?} was accepted",
            text.get(..40)
        );
    }
    assert_eq!(must(f.store.count(&f.namespace).await, "count"), 0);
}

/// Values full of SQL, Lua, path and key metacharacters are data, stored and
/// read back byte for byte: no store builds a query or a path from them.
pub async fn metacharacters_in_values_round_trip(f: Fixture) {
    let m = must(f.manager().build(), "manager");
    let nasty = [
        "'; DROP TABLE sessions; --",
        "\" OR \"\"=\"",
        "1; DELETE FROM sessions WHERE 1=1",
        "$1 $2 ? ?? :name @p1",
        "{ns:id}:lock * [a-z] \\",
        "../../etc/passwd\0after-nul",
        "redis.call('FLUSHALL')",
        "émoji 🍪 – ünïcödé",
    ];
    let mut s = must(m.open(None).await, "open");
    for (i, v) in nasty.iter().enumerate() {
        must(s.insert(&format!("k{i}"), v), "insert");
        must(s.insert(v, &i), "a metacharacter key");
    }
    let bin: Vec<u8> = (0..=255).collect();
    must(s.insert("bytes", &bin), "insert bytes");
    let id = s.id().clone();
    must(s.commit().await, "commit");
    let r = must(m.open_read_only(&id).await, "read").expect("session");
    for (i, v) in nasty.iter().enumerate() {
        assert_eq!(
            must(r.get::<String>(&format!("k{i}")), "get").as_deref(),
            Some(*v)
        );
        assert_eq!(must(r.get::<usize>(v), "get by nasty key"), Some(i));
    }
    assert_eq!(must(r.get::<Vec<u8>>("bytes"), "bytes"), Some(bin));
}

/// Stored bytes that are not a record are `Corrupt` — not a
/// panic — and the lock taken to read them is released.
pub async fn corrupt_record_is_reported_and_unlocked(f: Fixture) {
    let m = must(f.manager().lock_wait(Duration::from_secs(2)).build(), "manager");
    for garbage in [
        &b""[..],
        b"\x80\x04\x95pickled",
        b"CLK\x09future",
        b"CLK\x01\xdd\xff\xff\xff\xff",
    ] {
        let key = f.new_key();
        must(f.store.create(&key, write_with(garbage)).await, "create garbage");
        match m.open(Some(&key.id)).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("opening {garbage:?} must be Corrupt, got {other:?}"),
        }
        match m.open_read_only(&key.id).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("reading {garbage:?} must be Corrupt, got {other:?}"),
        }
        let g = must(
            f.store.lock(&key, opts(30_000, 2_000)).await,
            "the lock must be free after Corrupt",
        );
        must(g.unlock().await, "unlock");
    }
}

/// A session over the size limit is refused with `TooLarge` and the
/// stored version stays as it was.
pub async fn oversize_record_is_refused_and_nothing_written(f: Fixture) {
    let m = must(f.manager().max_record_bytes(4096).build(), "manager");
    let mut s = must(m.open(None).await, "open");
    must(s.insert("small", "ok"), "insert");
    let id = s.id().clone();
    must(s.commit().await, "commit");
    let before = must(f.store.load(&f.key(&id)).await, "load").expect("record");

    let mut s = must(m.open(Some(&id)).await, "open");
    must(s.insert("big", &"x".repeat(5000)), "insert");
    match s.commit().await {
        Err(Error::TooLarge { size, limit: 4096 }) if size > 4096 => {}
        other => panic!("a 5 kB session under a 4 kB limit must be TooLarge, got {other:?}"),
    }
    let after = must(f.store.load(&f.key(&id)).await, "load").expect("record");
    assert_eq!(after, before, "a refused oversize commit changed the record");
    let g = must(
        f.store.lock(&f.key(&id), opts(30_000, 2_000)).await,
        "TooLarge must release the lock",
    );
    must(g.unlock().await, "unlock");

    // The store enforces its own advertised limit too.
    let limit = f.store.capabilities().max_record_bytes;
    if limit <= 16 * 1024 * 1024 {
        match f
            .store
            .create(&f.new_key(), write_with(&vec![0u8; limit + 1]))
            .await
        {
            Err(Error::TooLarge { .. }) => {}
            other => {
                panic!("a record over the store's own {limit}-byte limit must be TooLarge, got {other:?}")
            }
        }
    }
}

/// Listing 10,000 sessions page by page returns each exactly once.
pub async fn listing_is_complete_with_ten_thousand_sessions(f: Fixture) {
    const N: usize = 10_000;
    let bytes = {
        let mut d = SessionData::new();
        must(d.insert("n", &1u8), "insert");
        Arc::new(d.encode())
    };
    let ids: Vec<SessionId> = (0..N).map(|_| SessionId::generate()).collect();
    let created: Vec<SessionId> = futures::stream::iter(ids.iter().cloned())
        .map(|id| {
            let (store, key, bytes) = (Arc::clone(&f.store), f.key(&id), Arc::clone(&bytes));
            async move { store.create(&key, write_with(&bytes)).await.map(|_| id) }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .unwrap_or_else(|e| panic!("creating {N} sessions: {e:?}"));
    assert_eq!(created.len(), N);

    let listed: Vec<SessionId> = must(
        list_ids(f.store.as_ref(), &f.namespace, 333).try_collect().await,
        "list",
    );
    let unique: HashSet<&SessionId> = listed.iter().collect();
    assert_eq!(unique.len(), listed.len(), "listing returned an id twice");
    assert_eq!(
        unique,
        ids.iter().collect::<HashSet<_>>(),
        "listing is not exactly the created ids"
    );
    assert_eq!(must(f.store.count(&f.namespace).await, "count"), N as u64);

    futures::stream::iter(ids)
        .map(|id| {
            let (store, key) = (Arc::clone(&f.store), f.key(&id));
            async move { store.delete(&key).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<bool>>()
        .await
        .unwrap_or_else(|e| panic!("cleaning up: {e:?}"));
}

use futures::StreamExt as _;

/// With `hash_ids`, the store holds only SHA-256 of each id, never the
/// bearer token itself (a leaked backup opens no session), and every
/// operation still works.
pub async fn hashed_ids_keep_no_bearer_token_in_the_store(f: Fixture) {
    let m = must(f.manager().hash_ids(true).build(), "manager");
    let mut s = must(m.open(None).await, "open");
    must(s.insert("user", "alice"), "insert");
    let id = s.id().clone();
    must(s.commit().await, "commit");

    assert_eq!(
        must(f.store.load(&f.key(&id)).await, "load raw id"),
        None,
        "the raw id is a store key"
    );
    assert!(must(f.store.load(&f.key(&id.hashed())).await, "load hashed").is_some());
    let listed = must(f.store.list_ids(&f.namespace, None, 10).await, "list").ids;
    assert_eq!(
        listed,
        vec![id.hashed()],
        "the listing must show only the hashed id"
    );

    let mut s = must(m.open(Some(&id)).await, "open by the cookie's id");
    assert_eq!(must(s.get::<String>("user"), "get").as_deref(), Some("alice"));
    s.cycle_id();
    let new = s.id().clone();
    must(s.commit().await, "commit cycled");
    assert!(
        must(m.open_read_only(&id).await, "old").is_none(),
        "the old id survived cycle_id"
    );
    let r = must(m.open_read_only(&new).await, "new").expect("the cycled session");
    assert_eq!(must(r.get::<String>("user"), "get").as_deref(), Some("alice"));
    assert!(
        must(m.delete(&new).await, "delete"),
        "delete by the cookie's id must work"
    );
    assert_eq!(must(f.store.count(&f.namespace).await, "count"), 0);
}

/// Whether `needle` occurs anywhere in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// With a keyring, the store holds session data only sealed: neither
/// values nor key names are in clear, the manager reads them back, a
/// manager with another key gets `Corrupt` (or `Decode`) and changes
/// nothing, and the record copied to another id does not open there.
pub async fn sealed_records_keep_no_value_in_clear(f: Fixture) {
    const MARKER: &str = "cloakroom-sealed-marker-5f0c2a";
    const FIELD: &str = "marker-field-name";
    let m = must(
        f.manager()
            .keyring(Keyring::new(Key::generate()))
            .lock_wait(Duration::from_secs(2))
            .build(),
        "manager with a keyring",
    );
    let mut s = must(m.open(None).await, "open");
    must(s.insert(FIELD, MARKER), "insert");
    let id = s.id().clone();
    must(s.commit().await, "commit");

    let raw = must(f.store.load(&f.key(&id)).await, "load raw").expect("the committed record");
    assert!(
        !contains(&raw.data, MARKER.as_bytes()),
        "the store holds the value in clear"
    );
    assert!(
        !contains(&raw.data, FIELD.as_bytes()),
        "the store holds the key name in clear"
    );
    assert!(Keyring::is_sealed(&raw.data), "the stored data is not sealed");

    let r = must(m.open_read_only(&id).await, "read only").expect("the sealed session");
    assert_eq!(must(r.get::<String>(FIELD), "get").as_deref(), Some(MARKER));
    let s = must(m.open(Some(&id)).await, "open sealed");
    assert_eq!(s.id(), &id, "a sealed session must open as itself");
    assert_eq!(must(s.get::<String>(FIELD), "get").as_deref(), Some(MARKER));
    must(s.rollback().await, "rollback");

    // Another key: an error on open, never a fresh session, nothing written.
    let wrong = must(
        f.manager()
            .keyring(Keyring::new(Key::generate()))
            .lock_wait(Duration::from_secs(2))
            .build(),
        "manager with another key",
    );
    match wrong.open(Some(&id)).await {
        Err(Error::Corrupt { .. } | Error::Decode { .. }) => {}
        other => panic!("opening with another key must be Corrupt, got {other:?}"),
    }
    match wrong.open_read_only(&id).await {
        Err(Error::Corrupt { .. } | Error::Decode { .. }) => {}
        other => panic!("reading with another key must be Corrupt, got {other:?}"),
    }
    let after = must(f.store.load(&f.key(&id)).await, "load after").expect("the record after a wrong key");
    assert_eq!(after.data, raw.data, "a wrong key changed the stored data");
    assert_eq!(after.version, raw.version, "a wrong key wrote a version");
    // The failed open gave the lock back.
    let s = must(m.open(Some(&id)).await, "open after a wrong key");
    assert_eq!(must(s.get::<String>(FIELD), "get").as_deref(), Some(MARKER));
    must(s.rollback().await, "rollback");

    // The same bytes under another id are bound to the first id.
    let moved = f.new_key();
    let copy = RecordWrite {
        data: raw.data.clone(),
        created: raw.created,
        accessed: raw.accessed,
        expires: raw.expires,
        principal: raw.principal.clone(),
    };
    must(f.store.create(&moved, copy).await, "create the copy");
    match m.open(Some(&moved.id)).await {
        Err(Error::Corrupt { .. } | Error::Decode { .. }) => {}
        other => panic!("a record moved to another id must not open, got {other:?}"),
    }
    match m.open_read_only(&moved.id).await {
        Err(Error::Corrupt { .. } | Error::Decode { .. }) => {}
        other => panic!("a record moved to another id must not be read, got {other:?}"),
    }
    let g = must(
        f.store.lock(&moved, opts(30_000, 2_000)).await,
        "the lock must be free after a moved record failed to open",
    );
    must(g.unlock().await, "unlock");
}
