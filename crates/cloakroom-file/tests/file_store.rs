//! File-store specific behaviour: what the generic suite cannot see because
//! it never looks at the disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use cloakroom_conformance::support::TempDir;
use cloakroom_core::{
    Acquired, Cursor, Error, Finish, Finished, LockKind, LockOptions, Namespace, Principal, RecordWrite,
    SessionId, SessionKey, SessionStore, SweepBatch, Then, Timestamp,
};
use cloakroom_file::{FileOptions, FileStore};

/// A store root in a fresh temporary directory: one level down, so that
/// the owner files the store keeps beside its root (`<root>-owners/`) are
/// inside the temporary directory too.
struct Root {
    _dir: TempDir,
    path: PathBuf,
}

impl Root {
    fn path(&self) -> &Path {
        &self.path
    }
}

fn temp() -> Root {
    let dir = TempDir::new("file-store").unwrap();
    let path = dir.path().join("sessions");
    Root { _dir: dir, path }
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
        principal: None,
    }
}

fn write_as(data: &[u8], principal: &Principal) -> RecordWrite {
    RecordWrite {
        principal: Some(principal.clone()),
        ..write(data)
    }
}

/// The ids a sweep batch deleted.
fn swept_ids(batch: &SweepBatch) -> Vec<SessionId> {
    batch.deleted.iter().map(|swept| swept.id.clone()).collect()
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

    // Besides the root: only this store's owner file, in `<root>-owners/`.
    let owners = outer.path().join("root-owners");
    let everything = walk(outer.path());
    assert!(!everything.is_empty());
    for path in &everything {
        assert!(
            path.starts_with(&root) || path.starts_with(&owners),
            "{} is outside the root",
            path.display()
        );
    }
    let owner_files: Vec<_> = fs::read_dir(&owners).unwrap().collect();
    assert_eq!(owner_files.len(), 1, "{owner_files:?}");
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
    assert_eq!(swept_ids(&batch), vec![k.id.clone()]);
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
    // Nor does one on a saved session: the lease is gone with the release.
    let k = key("app");
    let g = store.lock(&k, opts(5_000, 500)).await.unwrap();
    assert_eq!(count_locks(), 1);
    g.save_and_unlock(expired(b"soon gone")).await.unwrap();
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
    // A holder that never came back (forgotten here, as a frozen or killed
    // process would) leaves a lease that the sweep removes once it ran out,
    // with or without a record.
    std::mem::forget(store.lock(&key("app"), opts(50, 500)).await.unwrap());
    let saved = key("app");
    store.create(&saved, write(b"live")).await.unwrap();
    std::mem::forget(store.lock(&saved, opts(50, 500)).await.unwrap());
    assert_eq!(count_locks(), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let batch = store
        .sweep_expired(&k.namespace, Timestamp::now(), None, 10)
        .await
        .unwrap();
    assert_eq!(swept_ids(&batch), vec![k.id.clone()]);
    assert_eq!(count_locks(), 0);
    assert_eq!(store.load(&saved).await.unwrap().unwrap().data, b"live");
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

/// An id that falls in the shard directory `shard` (two id characters), so
/// that tests can pile sessions into a few shards.
fn id_in_shard(shard: &str) -> SessionId {
    let random = SessionId::generate();
    SessionId::parse(&format!("{shard}{}", &random.as_str()[2..])).unwrap()
}

fn lock_path(root: &Path, key: &SessionKey) -> PathBuf {
    let mut path = data_path(root, key).into_os_string();
    path.push(".lock");
    PathBuf::from(path)
}

/// The lock is a lease on disk, not something a process holds: another
/// store (another process) is told how long the lease has left, gets the
/// session once it ran out and not before, and the holder that slept
/// through its lease (a frozen process) writes nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_goes_to_the_next_store_and_fences_the_late_holder() {
    let dir = temp();
    let (first, second) = (fast_store(dir.path()), fast_store(dir.path()));
    assert_eq!(first.capabilities().lock, LockKind::Lease);
    let k = key("app");
    first.create(&k, write(b"v1")).await.unwrap();

    let lease = Duration::from_millis(400);
    let mut late = first
        .lock(&k, LockOptions::new(lease, Duration::ZERO))
        .await
        .unwrap();
    let locked = Instant::now();
    match second.try_lock(&k, opts(30_000, 0)).await.unwrap() {
        Acquired::Busy { retry_in: Some(left) } => assert!(left <= lease && left > lease / 2, "{left:?}"),
        other => panic!("a held lease must be busy with its time left: {other:?}"),
    }
    let mut next = second.lock(&k, opts(30_000, 5_000)).await.unwrap();
    let took_over = locked.elapsed();
    assert!(
        took_over >= lease - Duration::from_millis(50),
        "taken after {took_over:?}"
    );
    assert!(
        took_over < lease + Duration::from_secs(2),
        "taken after {took_over:?}"
    );
    assert_eq!(next.record().map(|r| r.version), Some(1));
    assert_eq!(
        next.finish(Finish::Save(write(b"v2")), Then::Keep).await.unwrap(),
        Finished::Saved { version: 2 }
    );

    assert!(matches!(late.renew(lease).await, Err(Error::LeaseLost)));
    assert!(matches!(
        late.finish(Finish::Save(write(b"late")), Then::Release).await,
        Err(Error::LeaseLost)
    ));
    assert!(matches!(
        late.finish(Finish::Delete, Then::Release).await,
        Err(Error::LeaseLost)
    ));
    drop(late);
    // The late holder neither wrote nor released the new holder's lock.
    let seen = first.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (2, &b"v2"[..]));
    assert!(matches!(
        first.lock(&k, opts(30_000, 100)).await,
        Err(Error::LockTimeout { .. })
    ));
    next.renew(Duration::from_secs(30)).await.unwrap();
    next.unlock().await.unwrap();
    first
        .lock(&k, opts(30_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// A lease whose holder's store is gone (its owner file exists and nobody
/// holds its `flock`: the process was killed) is taken over at once,
/// whatever the lease says; one whose store is alive is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_lease_is_taken_over_at_once() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"v1")).await.unwrap();
    let owners = {
        let mut path = dir.path().as_os_str().to_owned();
        path.push("-owners");
        PathBuf::from(path)
    };
    // The owner file of a process that died without removing it.
    fs::create_dir_all(&owners).unwrap();
    fs::write(owners.join("DEADDEADDEADDEAD"), b"").unwrap();
    let until = Timestamp::now().saturating_add(Duration::from_secs(600));
    let dead = format!(
        "DEADDEADDEADDEAD.{} {}\n",
        SessionId::generate(),
        until.as_millis()
    );
    fs::write(lock_path(dir.path(), &k), dead).unwrap();

    let started = Instant::now();
    let g = store
        .lock(&k, opts(30_000, 0))
        .await
        .expect("a dead holder's lock is free");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(g.record().map(|r| r.version), Some(1));
    g.unlock().await.unwrap();

    // A live store's lease is respected for as long as it lasts.
    let other = fast_store(dir.path());
    let held = other.lock(&k, opts(60_000, 0)).await.unwrap();
    assert!(matches!(
        store.try_lock(&k, opts(30_000, 0)).await.unwrap(),
        Acquired::Busy { retry_in: Some(_) }
    ));
    held.unlock().await.unwrap();
}

/// A lock file that holds no lease (torn by a crash mid-write, or written
/// by someone else) does not lock the session, and is never trusted as a
/// token of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_lock_file_locks_nothing() {
    let dir = temp();
    let store = fast_store(dir.path());
    let k = key("app");
    store.create(&k, write(b"v1")).await.unwrap();
    for junk in [&b""[..], b"half-a-tok", b"\xff\xfe 12\n", &[b'x'; 10_000][..]] {
        fs::write(lock_path(dir.path(), &k), junk).unwrap();
        let g = store.lock(&k, opts(30_000, 0)).await.unwrap();
        g.save_and_unlock(write(b"again")).await.unwrap();
    }
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 5);
}

/// Sweeps remove shard directories that emptied, with their mutex and lock
/// files, while other tasks (on other stores, as other processes would be)
/// keep creating, locking and deleting sessions in the same few shards: no
/// create fails, each one is loadable once acknowledged, those kept are all
/// there at the end, and once everything is deleted a sweep leaves no
/// shard directory behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sweeps_remove_empty_shards_without_losing_concurrent_creates() {
    const SHARDS: [&str; 2] = ["Aa", "Bb"];
    let dir = temp();
    let ns = Namespace::new("app").unwrap();
    let sweeper_store = fast_store(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let sweeper = {
        let (store, ns, stop) = (sweeper_store.clone(), ns.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sweeps = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut cursor = None;
                loop {
                    let batch = store
                        .sweep_expired(&ns, Timestamp::now(), cursor, 1_000)
                        .await
                        .unwrap();
                    cursor = batch.next;
                    if cursor.is_none() {
                        break;
                    }
                }
                sweeps += 1;
            }
            sweeps
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8usize {
        let store = fast_store(dir.path());
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..200usize {
                let shard = SHARDS[(t + round) % SHARDS.len()];
                let k = SessionKey::new(ns.clone(), id_in_shard(shard));
                match round % 3 {
                    // Created, there, deleted: the shard empties again.
                    0 => {
                        store.create(&k, write(b"brief")).await.unwrap();
                        assert!(store.load(&k).await.unwrap().is_some(), "{k} lost");
                        assert!(store.delete(&k).await.unwrap(), "{k} lost");
                    }
                    // Expired: the sweep deletes it.
                    1 => {
                        store.create(&k, expired(b"old")).await.unwrap();
                    }
                    // A lock on a new session: a lock file comes and goes.
                    _ => {
                        let g = store.lock(&k, opts(30_000, 5_000)).await.unwrap();
                        g.save_and_unlock(write(b"locked")).await.unwrap();
                        assert!(store.load(&k).await.unwrap().is_some(), "{k} lost");
                        assert!(store.delete(&k).await.unwrap(), "{k} lost");
                    }
                }
            }
            // The last creates stay, while the others still churn.
            let mut kept = Vec::new();
            for shard in SHARDS {
                let k = SessionKey::new(ns.clone(), id_in_shard(shard));
                store.create(&k, write(b"keep")).await.unwrap();
                kept.push(k);
            }
            kept
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.extend(task.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let sweeps = sweeper.await.unwrap();
    assert!(sweeps > 1, "the sweeper ran only {sweeps} times");

    let store = fast_store(dir.path());
    for k in &kept {
        assert!(store.load(k).await.unwrap().is_some(), "{k} was lost");
    }
    assert_eq!(store.count(&ns).await.unwrap(), kept.len() as u64);
    for k in &kept {
        assert!(store.delete(k).await.unwrap());
    }
    let batch = store
        .sweep_expired(&ns, Timestamp::now(), None, 10_000)
        .await
        .unwrap();
    assert!(batch.next.is_none());
    let left: Vec<_> = fs::read_dir(dir.path().join("app"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "shard directories left: {left:?}");
}

/// A claim dropped while it runs (a cancelled request waiting for its
/// lock) leaves the session free, not locked for a whole lease by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_claim_leaves_the_session_free() {
    let dir = temp();
    let store = fast_store(dir.path());
    for _ in 0..20 {
        let k = key("app");
        {
            let mut claim = store.try_lock(&k, opts(60_000, 0));
            let _ = std::future::poll_fn(|cx| Poll::Ready(claim.as_mut().poll(cx))).await;
        }
        let g = store
            .lock(&k, opts(60_000, 2_000))
            .await
            .expect("a cancelled claim must not keep the session locked");
        g.unlock().await.unwrap();
    }
}

fn principal_dir(root: &Path, ns: &str, principal: &Principal) -> PathBuf {
    root.join(ns).join("principals").join(principal.digest())
}

fn marker_path(root: &Path, key: &SessionKey, principal: &Principal) -> PathBuf {
    principal_dir(root, key.namespace.as_str(), principal).join(key.id.as_str())
}

async fn listed(store: &FileStore, ns: &Namespace, principal: &Principal) -> Vec<SessionId> {
    store
        .list_by_principal(ns, principal)
        .await
        .unwrap()
        .into_iter()
        .map(|summary| summary.id)
        .collect()
}

/// The index is one empty marker per record in a directory named by the
/// principal's digest: the principal's text never names a file, listing
/// and counting do not take the index for sessions, and the markers and
/// directories go when the sessions do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_is_a_marker_directory_named_by_digest() {
    let dir = temp();
    let store = durable_store(dir.path());
    let alice = Principal::new("alice/../../etc ' OR 1=1 --").unwrap();
    let ns = Namespace::new("app").unwrap();
    let (first, second, anonymous) = (key("app"), key("app"), key("app"));
    store.create(&first, write_as(b"1", &alice)).await.unwrap();
    store.create(&second, write_as(b"2", &alice)).await.unwrap();
    store.create(&anonymous, write(b"3")).await.unwrap();

    for k in [&first, &second] {
        let marker = marker_path(dir.path(), k, &alice);
        assert_eq!(fs::read(&marker).unwrap(), b"", "{}", marker.display());
    }
    for path in walk(dir.path()) {
        let path = path.to_string_lossy();
        assert!(!path.contains("alice") && !path.contains("etc"), "{path}");
    }
    assert_eq!(store.count(&ns).await.unwrap(), 3);
    assert_eq!(store.list_ids(&ns, None, 100).await.unwrap().ids.len(), 3);
    let batch = store
        .sweep_expired(&ns, Timestamp::now(), None, 100)
        .await
        .unwrap();
    assert!(batch.deleted.is_empty());
    assert!(
        marker_path(dir.path(), &first, &alice).is_file(),
        "a sweep of live records took a marker"
    );

    // A save without the principal takes its marker; a delete the last one,
    // and the directories with it.
    store.save(&first, write(b"1'"), Some(1)).await.unwrap();
    assert!(!marker_path(dir.path(), &first, &alice).exists());
    assert_eq!(listed(&store, &ns, &alice).await, vec![second.id.clone()]);
    assert!(store.delete(&second).await.unwrap());
    assert!(listed(&store, &ns, &alice).await.is_empty());
    assert!(!dir.path().join("app").join("principals").exists());
}

/// What a crash between a marker step and a record write leaves (a marker
/// without its record, a marker of a record now someone else's), markers of
/// expired records, and names that are not ours: none is listed, the stale
/// markers are removed (without leaving a shard behind), foreign files stay.
/// A corrupt record behind a marker is skipped, its marker kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_markers_are_not_listed_and_are_cleaned_up() {
    let dir = temp();
    let store = fast_store(dir.path());
    let ns = Namespace::new("app").unwrap();
    let (alice, bob) = (Principal::new("alice").unwrap(), Principal::new("bob").unwrap());
    let alices = principal_dir(dir.path(), "app", &alice);

    // Every record in shard "Aa", so that shard "Zz" stays free.
    let in_aa = || SessionKey::new(ns.clone(), id_in_shard("Aa"));
    let live = in_aa();
    store.create(&live, write_as(b"live", &alice)).await.unwrap();
    // Marked, then the process died before the record was written.
    let never_written = SessionKey::new(ns.clone(), id_in_shard("Zz"));
    fs::write(marker_path(dir.path(), &never_written, &alice), b"").unwrap();
    // Re-saved to bob, then the process died before alice's marker went.
    let moved = in_aa();
    store.create(&moved, write_as(b"moved", &bob)).await.unwrap();
    fs::write(marker_path(dir.path(), &moved, &alice), b"").unwrap();
    let expired_key = in_aa();
    store
        .create(
            &expired_key,
            RecordWrite {
                principal: Some(alice.clone()),
                ..expired(b"old")
            },
        )
        .await
        .unwrap();
    let corrupt = in_aa();
    store
        .create(&corrupt, write_as(b"soon torn", &alice))
        .await
        .unwrap();
    fs::write(data_path(dir.path(), &corrupt), b"CLKR torn").unwrap();
    fs::write(alices.join("README"), b"keep me").unwrap();

    assert_eq!(listed(&store, &ns, &alice).await, vec![live.id.clone()]);
    let mut left: Vec<String> = fs::read_dir(&alices)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let mut expected = vec![live.id.to_string(), corrupt.id.to_string(), "README".to_owned()];
    expected.sort();
    assert_eq!(left, expected, "stale markers were not removed");
    assert!(
        !dir.path().join("app").join("Zz").exists(),
        "the cleanup left the shard it made for its mutex"
    );
    assert_eq!(listed(&store, &ns, &bob).await, vec![moved.id.clone()]);
    assert_eq!(fs::read(alices.join("README")).unwrap(), b"keep me");
    // The expired record is still the sweep's to hand over.
    let batch = store
        .sweep_expired(&ns, Timestamp::now(), None, 100)
        .await
        .unwrap();
    assert_eq!(swept_ids(&batch), vec![expired_key.id.clone()]);
    assert_eq!(batch.deleted[0].record.principal.as_ref(), Some(&alice));
}

/// A sweep returns each record as it was stored and removes its marker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_returns_the_records_and_drops_their_markers() {
    let dir = temp();
    let store = fast_store(dir.path());
    let ns = Namespace::new("app").unwrap();
    let carol = Principal::new("carol").unwrap();
    let k = key("app");
    let stored = store
        .create(
            &k,
            RecordWrite {
                principal: Some(carol.clone()),
                ..expired(b"carol's cart")
            },
        )
        .await
        .unwrap();
    assert!(marker_path(dir.path(), &k, &carol).is_file());
    let batch = store
        .sweep_expired(&ns, Timestamp::now(), None, 100)
        .await
        .unwrap();
    assert_eq!(batch.deleted.len(), 1);
    assert_eq!(batch.deleted[0].id, k.id);
    assert_eq!(batch.deleted[0].record, stored);
    assert!(!marker_path(dir.path(), &k, &carol).exists());
    assert!(!principal_dir(dir.path(), "app", &carol).exists());
}

/// A holder's delete takes the marker, a holder's save puts it back, and a
/// save over an expired record of another principal takes that one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_writes_keep_the_index_right() {
    let dir = temp();
    let store = fast_store(dir.path());
    let ns = Namespace::new("app").unwrap();
    let (dave, erin) = (Principal::new("dave").unwrap(), Principal::new("erin").unwrap());
    let k = key("app");
    store.create(&k, write_as(b"v1", &dave)).await.unwrap();

    let mut g = store.lock(&k, opts(30_000, 1_000)).await.unwrap();
    assert_eq!(g.record().and_then(|r| r.principal.clone()), Some(dave.clone()));
    assert_eq!(
        g.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: true }
    );
    assert!(!marker_path(dir.path(), &k, &dave).exists());
    assert!(listed(&store, &ns, &dave).await.is_empty());
    g.finish(Finish::Save(write_as(b"again", &dave)), Then::Release)
        .await
        .unwrap();
    assert_eq!(listed(&store, &ns, &dave).await, vec![k.id.clone()]);

    let old = key("app");
    store
        .create(
            &old,
            RecordWrite {
                principal: Some(erin.clone()),
                ..expired(b"erin's, expired")
            },
        )
        .await
        .unwrap();
    let g = store.lock(&old, opts(30_000, 1_000)).await.unwrap();
    assert!(g.record().is_none());
    g.save_and_unlock(write_as(b"dave's now", &dave)).await.unwrap();
    assert!(!marker_path(dir.path(), &old, &erin).exists());
    let mut daves = listed(&store, &ns, &dave).await;
    daves.sort();
    let mut expected = vec![k.id.clone(), old.id.clone()];
    expected.sort();
    assert_eq!(daves, expected);
}

/// The file store does not rotate atomically: it says so, and a
/// `Finish::Rotate` sent anyway is `Unsupported`, writes nothing and frees
/// the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_unsupported_and_changes_nothing() {
    let dir = temp();
    let store = fast_store(dir.path());
    assert!(!store.capabilities().rotates_atomically);
    let ns = Namespace::new("app").unwrap();
    let grace = Principal::new("grace").unwrap();
    let k = key("app");
    store.create(&k, write_as(b"v1", &grace)).await.unwrap();
    let to = SessionId::generate();
    for then in [Then::Keep, Then::Release] {
        let mut g = store.lock(&k, opts(30_000, 1_000)).await.unwrap();
        let rotate = Finish::Rotate {
            to: to.clone(),
            write: write_as(b"moved", &grace),
        };
        match g.finish(rotate, then).await {
            Err(Error::Unsupported(_)) => {}
            other => panic!("a rotation must be Unsupported, got {other:?}"),
        }
        assert!(matches!(
            g.finish(Finish::Nothing, Then::Release).await,
            Err(Error::LeaseLost)
        ));
        drop(g);
        store
            .lock(&k, opts(30_000, 0))
            .await
            .expect("the refused rotation released the lock")
            .unlock()
            .await
            .unwrap();
    }
    let record = store.load(&k).await.unwrap().unwrap();
    assert_eq!((record.version, record.data.as_slice()), (1, &b"v1"[..]));
    let target = SessionKey::new(ns.clone(), to);
    assert!(store.load(&target).await.unwrap().is_none());
    assert!(!data_path(dir.path(), &target).exists());
    assert_eq!(listed(&store, &ns, &grace).await, vec![k.id.clone()]);
}

/// A record file written before principals (format 1) loads as a record
/// without a principal, and its next write makes it format 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_1_record_file_still_loads() {
    let dir = temp();
    let store = fast_store(dir.path());
    let ns = Namespace::new("app").unwrap();
    let k = key("app");
    // Made with the store, so the shard exists; then replaced by an old file.
    store.create(&k, write(b"placeholder")).await.unwrap();
    let now = Timestamp::now();
    let expires = now.saturating_add(Duration::from_secs(3600));
    let mut old = Vec::new();
    old.extend_from_slice(b"CLKR");
    old.extend_from_slice(&1u16.to_le_bytes());
    old.extend_from_slice(&[0, 0]);
    old.extend_from_slice(&4u64.to_le_bytes());
    for t in [now, now, expires] {
        old.extend_from_slice(&t.as_millis().to_le_bytes());
    }
    old.extend_from_slice(&3u64.to_le_bytes());
    old.extend_from_slice(b"old");
    let sum = old.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    old.extend_from_slice(&sum.to_le_bytes());
    fs::write(data_path(dir.path(), &k), &old).unwrap();

    let record = store.load(&k).await.unwrap().unwrap();
    assert_eq!(
        (record.version, record.data.as_slice(), record.principal),
        (4, &b"old"[..], None)
    );
    assert_eq!(record.expires, expires);
    let frank = Principal::new("frank").unwrap();
    assert_eq!(
        store.save(&k, write_as(b"new", &frank), Some(4)).await.unwrap(),
        5
    );
    let rewritten = fs::read(data_path(dir.path(), &k)).unwrap();
    assert_eq!(&rewritten[4..6], &2u16.to_le_bytes());
    assert_eq!(listed(&store, &ns, &frank).await, vec![k.id.clone()]);
}

/// Writers moving records between principals, deleting and recreating them
/// (so principal directories empty and come back), race listings that
/// clean up stale markers: a listing never removes the marker of a record
/// that a writer has just given that principal, so at the end every record
/// is listed under its principal and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_racing_writers_never_lose_a_marker() {
    let dir = temp();
    let ns = Namespace::new("app").unwrap();
    let principals = [Principal::new("p0").unwrap(), Principal::new("p1").unwrap()];
    let stop = Arc::new(AtomicBool::new(false));
    let mut listers = Vec::new();
    for _ in 0..2 {
        let (store, ns, principals, stop) = (
            fast_store(dir.path()),
            ns.clone(),
            principals.clone(),
            stop.clone(),
        );
        listers.push(tokio::spawn(async move {
            let mut listings = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for p in &principals {
                    store.list_by_principal(&ns, p).await.unwrap();
                }
                listings += 1;
            }
            listings
        }));
    }
    let mut writers = Vec::new();
    for t in 0..4usize {
        let (store, ns, principals) = (fast_store(dir.path()), ns.clone(), principals.clone());
        writers.push(tokio::spawn(async move {
            let k = SessionKey::new(ns, id_in_shard(["Aa", "Bb"][t % 2]));
            store.create(&k, write_as(b"0", &principals[0])).await.unwrap();
            for round in 1..150usize {
                let p = &principals[(t + round) % 2];
                match round % 5 {
                    0 => {
                        store.delete(&k).await.unwrap();
                        store.create(&k, write_as(b"again", p)).await.unwrap();
                    }
                    1 => {
                        store.save(&k, write(b"nobody's"), None).await.unwrap();
                    }
                    _ => {
                        let g = store.lock(&k, opts(30_000, 5_000)).await.unwrap();
                        g.save_and_unlock(write_as(b"locked", p)).await.unwrap();
                    }
                }
            }
            k
        }));
    }
    let mut keys = Vec::new();
    for w in writers {
        keys.push(w.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for l in listers {
        assert!(l.await.unwrap() > 0);
    }
    let store = fast_store(dir.path());
    for p in &principals {
        let mut got = listed(&store, &ns, p).await;
        got.sort();
        let mut expected = Vec::new();
        for k in &keys {
            if store.load(k).await.unwrap().unwrap().principal.as_ref() == Some(p) {
                expected.push(k.id.clone());
            }
        }
        expected.sort();
        assert_eq!(got, expected, "{p}");
    }
}
