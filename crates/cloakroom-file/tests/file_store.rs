//! File-store specific behaviour: what the generic suite cannot see because
//! it never looks at the disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use cloakroom_conformance::support::TempDir;
use cloakroom_core::{
    Cursor, Error, Finish, Finished, LockOptions, Namespace, RecordWrite, SessionId, SessionKey,
    SessionStore, Then, Timestamp,
};
use cloakroom_file::{FileOptions, FileStore};

fn temp() -> TempDir {
    TempDir::new("file-store").unwrap()
}

/// A store without fsync: atomicity, which these tests check, does not
/// depend on it.
fn fast_store(root: &Path) -> FileStore {
    FileStore::new(FileOptions::new(root).durable(false)).unwrap()
}

fn durable_store(root: &Path) -> FileStore {
    FileStore::new(FileOptions::new(root)).unwrap()
}

fn write(data: &[u8]) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_secs(3600)),
    }
}

fn expired(data: &[u8]) -> RecordWrite {
    RecordWrite {
        expires: Timestamp::now().saturating_sub(Duration::from_secs(1)),
        ..write(data)
    }
}

fn key(ns: &str) -> SessionKey {
    SessionKey::new(Namespace::new(ns).unwrap(), SessionId::generate())
}

fn data_path(root: &Path, key: &SessionKey) -> PathBuf {
    let id = key.id.as_str();
    root.join(key.namespace.as_str()).join(&id[..2]).join(id)
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

/// Every path under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_create_nothing_outside_the_root() {
    let outer = temp();
    let root = outer.path().join("root");
    let store = fast_store(&root);
    store.migrate().await.unwrap();

    let hostile = [
        "../../../../etc/passwd",
        "../escape",
        "..",
        "/abs/path",
        "a/b",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/..",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\0",
        "%2e%2e%2f%2e%2e%2fescape",
    ];
    for text in hostile {
        assert!(SessionId::parse(text).is_err(), "id {text:?} parsed");
        assert!(Namespace::new(text).is_err(), "namespace {text:?} parsed");
    }
    // Cursors come back from callers too: a forged one is refused, not joined.
    let ns = Namespace::new("app").unwrap();
    for text in hostile {
        let cursor = Some(Cursor(text.to_owned()));
        assert!(matches!(
            store.list_ids(&ns, cursor.clone(), 10).await,
            Err(Error::Config(_))
        ));
        assert!(matches!(
            store.sweep_expired(&ns, Timestamp::now(), cursor, 10).await,
            Err(Error::Config(_))
        ));
    }
    // Ordinary use, for contrast: it does write, and only under the root.
    let k = key("app");
    store.create(&k, write(b"x")).await.unwrap();
    let g = store.lock(&key("app"), opts(5_000, 1_000)).await.unwrap();
    g.save_and_unlock(write(b"y")).await.unwrap();

    let everything = walk(outer.path());
    assert!(!everything.is_empty());
    for path in &everything {
        assert!(path.starts_with(&root), "{} is outside the root", path.display());
    }
    assert!(data_path(&root, &k).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_torn_records_are_corrupt_and_leave_the_lock_free() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"some session bytes")).await.unwrap();
    let path = data_path(dir.path(), &k);
    let full = fs::read(&path).unwrap();

    // Zero bytes is what a reader sees between a truncate and the write
    // that follows it, were records rewritten in place.
    for len in [0, 1, 10, 47, 48, 60, full.len() - 1] {
        fs::write(&path, &full[..len]).unwrap();
        match store.load(&k).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("a {len}-byte prefix must be Corrupt, got {other:?}"),
        }
        match store.lock(&k, opts(5_000, 500)).await {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("locking a {len}-byte prefix must be Corrupt, got {other:?}"),
        }
    }
    // Garbage after a valid file (a torn append) is caught too.
    let mut longer = full.clone();
    longer.extend_from_slice(b"tail");
    fs::write(&path, &longer).unwrap();
    assert!(matches!(store.load(&k).await, Err(Error::Corrupt { .. })));

    // The failed locks released: the record can still be deleted under a
    // lock, which is how an operator gets rid of it.
    fs::write(&path, &full[..5]).unwrap();
    assert!(store.delete(&k).await.is_ok());
    assert!(store.load(&k).await.unwrap().is_none());
    let g = store.lock(&k, opts(5_000, 500)).await.unwrap();
    assert!(g.record().is_none());
    g.unlock().await.unwrap();
}

/// A writer that truncates in place lets readers see empty or half-written
/// files. With rename-over, a reader sees one whole version or another,
/// never a part.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_never_see_a_partial_file_during_concurrent_saves() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(&[0u8; 100])).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (store, k, done) = (store.clone(), k.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut seen = 0u64;
            while !done.load(Ordering::Relaxed) {
                let record = store
                    .load(&k)
                    .await
                    .expect("a load during saves failed")
                    .expect("record");
                // Version v has (v % 50 + 1) * 1000 bytes, all equal to v % 251.
                let fill = record.data[0];
                assert!(record.data.iter().all(|&b| b == fill), "mixed bytes in one read");
                if record.version > 1 {
                    assert_eq!(record.data.len(), ((record.version - 1) % 50 + 1) as usize * 1000);
                }
                seen += 1;
            }
            seen
        }));
    }
    let mut writers = Vec::new();
    for _ in 0..10 {
        let (store, k) = (store.clone(), k.clone());
        writers.push(tokio::spawn(async move {
            for _ in 0..100 {
                // Compare-and-set, so the length can be derived from the
                // version this save will get, which readers then check.
                loop {
                    let current = store.load(&k).await.unwrap().unwrap().version;
                    let len = (current % 50 + 1) as usize * 1000;
                    let data = vec![(current % 251) as u8; len];
                    match store.save(&k, write(&data), Some(current)).await {
                        Ok(_) => break,
                        Err(Error::Conflict { .. }) => continue,
                        Err(e) => panic!("save failed: {e}"),
                    }
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads > 0);
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 1001);
    // No temporary file survives a finished write.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_files_are_ignored_and_never_deleted() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, expired(b"old")).await.unwrap();
    let shard = data_path(dir.path(), &k).parent().unwrap().to_path_buf();
    let foreign = [
        shard.join("README"),
        shard.join("not-a-session-id"),
        shard.join(format!("{}.bak", k.id.as_str())),
        dir.path().join("app").join("notes.txt"),
    ];
    for f in &foreign {
        fs::write(f, b"keep me").unwrap();
    }
    let ns = k.namespace.clone();
    assert_eq!(store.count(&ns).await.unwrap(), 0);
    assert!(store.list_ids(&ns, None, 100).await.unwrap().ids.is_empty());
    let batch = store
        .sweep_expired(&ns, Timestamp::now(), None, 100)
        .await
        .unwrap();
    assert_eq!(batch.deleted, vec![k.id.clone()]);
    for f in &foreign {
        assert_eq!(fs::read(f).unwrap(), b"keep me", "{} was touched", f.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_files_do_not_pile_up() {
    let dir = temp();
    let store = fast_store(dir.path());
    let count_locks = || {
        walk(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().ends_with(".lock"))
            .count()
    };
    // A lock on a session that is never saved leaves nothing behind.
    for _ in 0..20 {
        let g = store.lock(&key("app"), opts(5_000, 500)).await.unwrap();
        g.unlock().await.unwrap();
    }
    assert_eq!(count_locks(), 0);
    // A saved session keeps its lock file while it exists ...
    let k = key("app");
    let g = store.lock(&k, opts(5_000, 500)).await.unwrap();
    g.save_and_unlock(expired(b"soon gone")).await.unwrap();
    assert_eq!(count_locks(), 1);
    // ... and the sweep that deletes it removes that too.
    let batch = store
        .sweep_expired(&k.namespace, Timestamp::now(), None, 10)
        .await
        .unwrap();
    assert_eq!(batch.deleted.len(), 1);
    assert_eq!(count_locks(), 0);
    // A guard dropped without unlocking (a cancelled request) is cleaned up
    // in the background.
    drop(store.lock(&key("app"), opts(5_000, 500)).await.unwrap());
    for _ in 0..100 {
        if count_locks() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count_locks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_work_and_are_reported() {
    let dir = temp();
    let store = durable_store(dir.path());
    assert!(store.capabilities().durable);
    assert!(store.capabilities().multi_process);
    let k = key("app");
    store.create(&k, write(b"durable")).await.unwrap();
    assert_eq!(store.save(&k, write(b"again"), Some(1)).await.unwrap(), 2);
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"again");
    assert!(store.delete(&k).await.unwrap());
    assert!(!fast_store(dir.path()).capabilities().durable);
}

/// Two kept saves and a release: each save bumps the version and stays
/// locked under the same lease, and the release frees the lock at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_saves_hold_the_lock_and_a_release_frees_it() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"v1")).await.unwrap();

    let mut g = store.lock(&k, opts(30_000, 1_000)).await.unwrap();
    let lease = g.lease().clone();
    assert_eq!(
        g.finish(Finish::Save(write(b"v2")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 2 }
    );
    let held = g.record().expect("the guard holds what it wrote");
    assert_eq!((held.version, held.data.as_slice()), (2, &b"v2"[..]));
    assert_eq!(g.lease(), &lease, "a kept write keeps the same lease");
    // Still locked between the writes.
    assert!(matches!(
        store.lock(&k, opts(30_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));

    assert_eq!(
        g.finish(Finish::Save(write(b"v3")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 3 }
    );
    assert_eq!(g.record().map(|r| r.version), Some(3));
    assert_eq!(
        g.finish(Finish::Nothing, Then::Release).await.unwrap(),
        Finished::Nothing
    );

    let record = store.load(&k).await.unwrap().unwrap();
    assert_eq!((record.version, record.data.as_slice()), (3, &b"v3"[..]));
    // Free at once, and the released guard is spent.
    let next = store.lock(&k, opts(30_000, 0)).await.unwrap();
    assert_eq!(next.record().map(|r| r.version), Some(3));
    assert!(matches!(
        g.finish(Finish::Save(write(b"late")), Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    next.unlock().await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 3);
}

/// A kept write is on disk when `finish` returns: `load` (here and through
/// another store on the same directory, as another process would) sees it
/// while the lock is still held. Durable mode, so the fsync path runs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_writes_are_visible_to_load_at_once() {
    let dir = temp();
    let store = durable_store(dir.path());
    let other = durable_store(dir.path());
    let k = key("app");

    // A new session: the kept save creates it at version 1.
    let mut g = store.lock(&k, opts(30_000, 1_000)).await.unwrap();
    assert!(g.record().is_none());
    assert_eq!(
        g.finish(Finish::Save(write(b"first")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 1 }
    );
    for s in [&store, &other] {
        let seen = s.load(&k).await.unwrap().expect("visible while locked");
        assert_eq!((seen.version, seen.data.as_slice()), (1, &b"first"[..]));
    }

    let expires = Timestamp::now().saturating_add(Duration::from_secs(7200));
    let accessed = Timestamp::now();
    assert_eq!(
        g.finish(Finish::Touch { accessed, expires }, Then::Keep)
            .await
            .unwrap(),
        Finished::Touched
    );
    let seen = other.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.expires), (1, expires));
    assert_eq!(g.record().map(|r| r.expires), Some(expires));

    assert_eq!(
        g.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: true }
    );
    assert!(g.record().is_none());
    assert!(other.load(&k).await.unwrap().is_none());
    // Still ours after the delete, and a save recreates it at version 1.
    assert!(matches!(
        other.lock(&k, opts(30_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));
    assert_eq!(
        g.finish(Finish::Save(write(b"again")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 1 }
    );
    assert_eq!(other.load(&k).await.unwrap().unwrap().data, b"again");
    g.unlock().await.unwrap();
    other
        .lock(&k, opts(30_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// A holder whose lease ran out (and whose lock someone else took) gets
/// `LeaseLost` from a kept write, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_after_the_lease_lapsed_is_lease_lost_and_writes_nothing() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"v1")).await.unwrap();

    let mut slow = store.lock(&k, opts(50, 1_000)).await.unwrap();
    assert_eq!(
        slow.finish(Finish::Save(write(b"v2")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 2 }
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fast = store.lock(&k, opts(30_000, 2_000)).await.unwrap();
    assert_eq!(fast.record().map(|r| r.version), Some(2));

    assert!(matches!(
        slow.finish(Finish::Save(write(b"stale")), Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    let record = store.load(&k).await.unwrap().unwrap();
    assert_eq!((record.version, record.data.as_slice()), (2, &b"v2"[..]));
    // The new holder is untouched by the stale one and writes on.
    assert!(matches!(
        store.lock(&k, opts(30_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));
    assert_eq!(
        fast.finish(Finish::Save(write(b"v3")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 3 }
    );
    fast.unlock().await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"v3");
}

/// A kept write whose `finish` is dropped midway (a cancelled request) gives
/// the guard up: the lock is freed when the write is done, not at the end of
/// a long lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_kept_write_frees_the_lock() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"v1")).await.unwrap();

    let mut g = store.lock(&k, opts(60_000, 1_000)).await.unwrap();
    // Poll the write once (it starts on the blocking pool), then drop it.
    let first_poll = {
        let mut write = g.finish(Finish::Save(write(b"v2")), Then::Keep);
        std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await
    };
    match first_poll {
        Poll::Pending => assert!(matches!(
            g.finish(Finish::Nothing, Then::Keep).await,
            Err(Error::LeaseLost)
        )),
        // The write was done at the first poll: nothing was cancelled.
        Poll::Ready(done) => {
            done.unwrap();
            g.finish(Finish::Nothing, Then::Release).await.unwrap();
        }
    }
    let next = store.lock(&k, opts(60_000, 2_000)).await.unwrap();
    // The write itself either happened whole or not at all.
    let version = next.record().map(|r| r.version);
    assert!(matches!(version, Some(1 | 2)), "{version:?}");
    next.unlock().await.unwrap();
    drop(g);
}

/// The opener and `from_url` build the store the URL describes without
/// touching the disk: the directory appears only on first use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_from_a_url_does_no_io() {
    let dir = temp();
    let root = dir.path().join("not-yet");
    let url = format!("file://{}?durable=false&max_record_bytes=1000", root.display());

    let store = FileStore::from_url(&url).unwrap();
    assert_eq!(
        store.options(),
        &FileOptions::new(&root).durable(false).max_record_bytes(1000)
    );
    let parsed = cloakroom_core::StoreUrl::parse(&url).unwrap();
    let opened = (cloakroom_file::OPENER.open)(&parsed).unwrap();
    assert_eq!(cloakroom_file::OPENER.schemes, &["file"]);
    let caps = opened.capabilities();
    assert!(caps.multi_process && !caps.durable);
    assert_eq!(caps.max_record_bytes, 1000);
    assert!(!root.exists());

    opened.migrate().await.unwrap();
    assert!(root.is_dir());
    assert!(matches!(
        FileStore::new(FileOptions::new("relative/dir")),
        Err(Error::Config(_))
    ));
}
