//! SQLite-store specific behaviour: what the generic suite cannot see because
//! it never looks inside the database.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cloakroom_conformance::support::TempDir;
use cloakroom_core::{
    Error, Finish, Finished, LockOptions, Namespace, Principal, RecordWrite, SessionId, SessionKey,
    SessionStore, StoreUrl, Then, Timestamp,
};
use cloakroom_sqlite::{SqliteOptions, SqliteStore, DEFAULT_TABLE};

fn temp() -> TempDir {
    TempDir::new("sqlite").unwrap()
}

fn db(dir: &Path) -> PathBuf {
    dir.join("sessions.db")
}

async fn store_at(path: &Path) -> SqliteStore {
    let store = SqliteStore::new(SqliteOptions::new(path)).unwrap();
    store.migrate().await.unwrap();
    store
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

fn key(ns: &str) -> SessionKey {
    SessionKey::new(Namespace::new(ns).unwrap(), SessionId::generate())
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

fn rows(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT COUNT(*) FROM {DEFAULT_TABLE}"), [], |r| r.get(0))
        .unwrap()
}

#[test]
fn table_names_with_metacharacters_are_rejected() {
    for bad in [
        "sessions; DROP TABLE users",
        "s\"x",
        "s'x",
        "a b",
        "a-b",
        "x/*",
        "",
        "1st",
        "sqlite_schema",
    ] {
        let options = SqliteOptions::new("/tmp/never-opened.db").table(bad);
        assert!(
            matches!(SqliteStore::new(options), Err(Error::Config(_))),
            "accepted table {bad:?}"
        );
        let url = format!("sqlite:///tmp/never-opened.db?table={}", url_encode(bad));
        assert!(
            matches!(SqliteStore::from_url(&url), Err(Error::Config(_))),
            "accepted {url}"
        );
    }
    assert!(!Path::new("/tmp/never-opened.db").exists());
}

fn url_encode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Building a store, from options, a URL or the opener, touches no file; the
/// first use opens the database, and one that failed to open is tried again
/// on the next use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opens_its_database_on_first_use_and_retries_a_failed_open() {
    let dir = temp();
    let missing = dir.path().join("not-yet");
    let path = db(&missing);
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::from_url(&url).unwrap();
    assert_eq!(store.options(), &SqliteOptions::new(&path));
    SqliteStore::new(SqliteOptions::new(&path)).unwrap();
    assert_eq!(cloakroom_sqlite::OPENER.schemes, ["sqlite"]);
    let opened = (cloakroom_sqlite::OPENER.open)(&StoreUrl::parse(&url).unwrap()).unwrap();
    assert!(opened.capabilities().multi_process);
    assert!(!missing.exists());

    // The directory is missing: each use fails, naming the file.
    match store.migrate().await {
        Err(e @ Error::Backend { .. }) => assert!(e.to_string().contains("sessions.db"), "{e}"),
        other => panic!("expected Backend, got {other:?}"),
    }
    assert!(matches!(
        store.load(&key("app")).await,
        Err(Error::Backend { .. })
    ));

    // Once it is there, the same store opens it.
    std::fs::create_dir(&missing).unwrap();
    store.migrate().await.unwrap();
    let k = key("app");
    store.create(&k, write(b"x")).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"x");
    assert_eq!(opened.load(&k).await.unwrap().unwrap().data, b"x");
}

/// Set in the child process that runs
/// `new_database_files_are_private_whatever_the_umask` under `umask 000`.
#[cfg(unix)]
const UMASK_CHILD: &str = "CLOAKROOM_SQLITE_TEST_UMASK_CHILD";

/// A database the store creates, and its `-wal` and `-shm` files, are
/// readable by their owner only even where the umask would let everyone
/// read them; an existing database keeps its mode.
#[cfg(unix)]
#[test]
fn new_database_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    if std::env::var_os(UMASK_CHILD).is_none() {
        // The umask belongs to the whole process and setting it from Rust
        // takes unsafe code: run this test again, alone, in a child process
        // that a shell starts under `umask 000`.
        let out = std::process::Command::new("sh")
            .args(["-c", "umask 000 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "new_database_files_are_private_whatever_the_umask",
                "--exact",
                "--test-threads=1",
            ])
            .env(UMASK_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test failed under umask 000:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }

    let mode = |path: &Path| {
        format!(
            "{:o}",
            std::fs::metadata(path).unwrap().permissions().mode() & 0o777
        )
    };
    let dir = temp();
    // The umask really lets everyone read: a file made the ordinary way is 0666.
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    assert_eq!(mode(&plain), "666", "the umask is not 000");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let path = db(dir.path());
        let store = store_at(&path).await;
        let k = key("app");
        store.create(&k, write(b"secret")).await.unwrap();
        assert!(store.load(&k).await.unwrap().is_some());
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", path.display()));
            assert_eq!(mode(&file), "600", "{}", file.display());
        }

        // An existing database keeps its mode (the store only warns).
        let shared = dir.path().join("shared.db");
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&shared)
            .unwrap();
        let store = store_at(&shared).await;
        store.create(&key("app"), write(b"x")).await.unwrap();
        assert_eq!(mode(&shared), "644");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_tables_are_separate_and_migrate_is_idempotent() {
    let dir = temp();
    let a = SqliteStore::new(SqliteOptions::new(db(dir.path())).table("app_a")).unwrap();
    let b = SqliteStore::from_url(&format!("sqlite://{}?table=app_b", db(dir.path()).display())).unwrap();
    for _ in 0..3 {
        a.migrate().await.unwrap();
        b.migrate().await.unwrap();
    }
    let k = key("app");
    a.create(&k, write(b"in a")).await.unwrap();
    assert!(b.load(&k).await.unwrap().is_none());
    assert_eq!(a.load(&k).await.unwrap().unwrap().data, b"in a");

    let conn = rusqlite::Connection::open(db(dir.path())).unwrap();
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let index: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'app_a' AND sql LIKE '%expires%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(index, 1, "no expiry index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_placeholders_are_invisible_and_cleaned_up() {
    let dir = temp();
    let path = db(dir.path());
    let store = store_at(&path).await;
    let k = key("app");
    let g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    assert!(g.record().is_none());
    assert_eq!(rows(&path), 1, "the lock needs a row to live in");
    assert!(store.load(&k).await.unwrap().is_none());
    assert_eq!(store.count(&k.namespace).await.unwrap(), 0);
    assert!(store
        .list_ids(&k.namespace, None, 10)
        .await
        .unwrap()
        .ids
        .is_empty());
    g.unlock().await.unwrap();
    assert_eq!(rows(&path), 0, "unlock must drop the placeholder");

    // A holder that vanished without unlocking (its guard leaked, as if its
    // process died) leaves a placeholder that the sweep removes after the lease.
    let lost = store.lock(&key("app"), opts(50, 100)).await.unwrap();
    std::mem::forget(lost);
    assert_eq!(rows(&path), 1);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let batch = store
        .sweep_expired(&k.namespace, Timestamp::now(), None, 10)
        .await
        .unwrap();
    assert!(batch.deleted.is_empty(), "a placeholder is not a session");
    assert_eq!(rows(&path), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_busy_past_the_timeout_is_unavailable() {
    let dir = temp();
    let path = db(dir.path());
    store_at(&path).await;
    let store = SqliteStore::new(SqliteOptions::new(&path).busy_timeout(Duration::from_millis(100))).unwrap();
    let k = key("app");
    store.create(&k, write(b"x")).await.unwrap();

    // Another "process" holds SQLite's write lock and does not let go.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    match store.save(&k, write(b"y"), None).await {
        Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Reads still work in WAL while the writer is stuck.
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"x");
    blocker.execute_batch("COMMIT").unwrap();
    assert_eq!(store.save(&k, write(b"y"), None).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bytes_in_data_are_bound_not_interpreted() {
    let dir = temp();
    let path = db(dir.path());
    let store = store_at(&path).await;
    let k = key("app");
    let evil = b"'); DROP TABLE cloakroom_sessions; --\0\xff".to_vec();
    store.create(&k, write(&evil)).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, evil);
    assert_eq!(rows(&path), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_holder_is_taken_over_after_its_lease() {
    let dir = temp();
    let a = store_at(&db(dir.path())).await;
    let b = store_at(&db(dir.path())).await;
    let k = key("app");
    a.create(&k, write(b"v1")).await.unwrap();
    // A leaked guard never releases: like a process frozen mid-request.
    let frozen = a.lock(&k, opts(300, 100)).await.unwrap();
    let started = Instant::now();
    let g = b.lock(&k, opts(10_000, 3_000)).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "took over too early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1_500),
        "took over too late: {waited:?}"
    );
    g.save_and_unlock(write(b"v2")).await.unwrap();
    assert!(matches!(
        frozen.save_and_unlock(write(b"late")).await,
        Err(Error::LeaseLost)
    ));
    assert_eq!(a.load(&k).await.unwrap().unwrap().data, b"v2");
}

/// Under steady concurrent writes SQLite's automatic checkpoint never gets to
/// start the WAL over (another pooled connection is always reading), so
/// without the store's own truncating checkpoint the `-wal` file grows by
/// every commit: about 40 MiB for these 4,800 writes, 21 GB in a million-
/// session sweep. With a 1 MiB limit it must stay within a few MiB, and
/// every write must still be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_concurrent_writes() {
    const LIMIT: u64 = 1 << 20;
    const TASKS: usize = 16;
    const SESSIONS_PER_TASK: usize = 150;
    let dir = temp();
    let path = db(dir.path());
    let store = SqliteStore::new(SqliteOptions::new(&path).max_wal_bytes(LIMIT)).unwrap();
    store.migrate().await.unwrap();
    let wal = dir.path().join("sessions.db-wal");
    let size = move || std::fs::metadata(&wal).map_or(0, |m| m.len());

    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (done, size) = (done.clone(), size.clone());
        async move {
            let mut peak = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(size());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            peak
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut keys = Vec::new();
            for _ in 0..SESSIONS_PER_TASK {
                let k = key("wal");
                store.create(&k, write(&[1; 1024])).await.unwrap();
                assert_eq!(store.save(&k, write(&[2; 1024]), Some(1)).await.unwrap(), 2);
                keys.push(k);
            }
            keys
        }));
    }
    let mut keys = Vec::new();
    for task in tasks {
        keys.extend(task.await.unwrap());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.await.unwrap().max(size());

    assert!(
        peak <= 8 * LIMIT,
        "the WAL reached {peak} bytes with a limit of {LIMIT}"
    );
    for k in &keys {
        let record = store.load(k).await.unwrap().expect("a write was lost");
        assert_eq!((record.version, record.data[0]), (2, 2));
    }
    assert_eq!(rows(&path), (TASKS * SESSIONS_PER_TASK) as i64);
}

/// `finish(.., Keep)` writes and keeps the lock with the same lease; a later
/// `Release` frees it. Two kept saves and a release add 2 to the version and
/// leave the last data, and nobody else gets the lock in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_saves_then_a_release() {
    let dir = temp();
    let store = store_at(&db(dir.path())).await;
    let k = key("keep");
    let created = store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    let deadline = g.lease().deadline;

    let first = g.finish(Finish::Save(write(b"first")), Then::Keep).await.unwrap();
    assert_eq!(first, Finished::Saved { version: 2 });
    let r = g.record().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (2, b"first".as_slice()));
    assert_eq!(r.created, created.created, "a save keeps the creation time");
    assert_eq!(g.lease().deadline, deadline, "Keep keeps the same lease");
    assert!(
        matches!(
            store.lock(&k, opts(10_000, 0)).await,
            Err(Error::LockTimeout { .. })
        ),
        "Keep released the lock"
    );

    let second = g
        .finish(Finish::Save(write(b"second")), Then::Keep)
        .await
        .unwrap();
    assert_eq!(second, Finished::Saved { version: 3 });
    assert_eq!(g.record().unwrap().version, 3);
    assert!(matches!(
        store.lock(&k, opts(10_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));

    assert_eq!(
        g.finish(Finish::Nothing, Then::Release).await.unwrap(),
        Finished::Nothing
    );
    let r = store.load(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (3, b"second".as_slice()));
    // Free at once: a second lock with no wait at all gets it.
    let again = store.lock(&k, opts(10_000, 0)).await.unwrap();
    assert_eq!(again.record().unwrap().version, 3);
    // The released guard is spent.
    assert!(matches!(
        g.finish(Finish::Save(write(b"late")), Then::Release).await,
        Err(Error::LeaseLost)
    ));
    again.unlock().await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"second");
}

/// A kept write is durable and visible when `finish` returns, to this store
/// and to another one on the same file (another process), while the lock is
/// still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_is_visible_at_once() {
    let dir = temp();
    let store = store_at(&db(dir.path())).await;
    let other = store_at(&db(dir.path())).await;
    let k = key("keep");
    store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    g.finish(Finish::Save(write(b"kept")), Then::Keep).await.unwrap();
    for s in [&store, &other] {
        let r = s.load(&k).await.unwrap().unwrap();
        assert_eq!((r.version, r.data.as_slice()), (2, b"kept".as_slice()));
    }
    // A touch under Keep moves the times and not the version.
    let expires = Timestamp::now().saturating_add(Duration::from_secs(7200));
    let touched = g
        .finish(
            Finish::Touch {
                accessed: Timestamp::now(),
                expires,
            },
            Then::Keep,
        )
        .await
        .unwrap();
    assert_eq!(touched, Finished::Touched);
    assert_eq!(g.record().unwrap().expires, expires);
    let r = other.load(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.expires), (2, expires));
    assert!(matches!(
        other.lock(&k, opts(10_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));
    g.finish(Finish::Nothing, Then::Release).await.unwrap();
    other
        .lock(&k, opts(10_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// Deleting under Keep keeps the lock on the now missing session; the next
/// save under it creates the record again at version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_delete_keeps_the_lock_and_a_save_recreates() {
    let dir = temp();
    let path = db(dir.path());
    let store = store_at(&path).await;
    let k = key("keep");
    store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    assert_eq!(
        g.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: true }
    );
    assert!(g.record().is_none());
    assert!(store.load(&k).await.unwrap().is_none());
    assert!(matches!(
        store.lock(&k, opts(10_000, 0)).await,
        Err(Error::LockTimeout { .. })
    ));
    assert_eq!(
        g.finish(Finish::Save(write(b"reborn")), Then::Release)
            .await
            .unwrap(),
        Finished::Saved { version: 1 }
    );
    let r = store.load(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (1, b"reborn".as_slice()));
    assert_eq!(rows(&path), 1);
}

/// Once the lease ran out, the next kept write is `LeaseLost`, writes
/// nothing, and spends the guard; the lock is free for others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_lease_fences_a_kept_write() {
    let dir = temp();
    let store = store_at(&db(dir.path())).await;
    let k = key("keep");
    store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(300, 100)).await.unwrap();
    g.finish(Finish::Save(write(b"in time")), Then::Keep)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        g.finish(Finish::Save(write(b"too late")), Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    let r = store.load(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (2, b"in time".as_slice()));
    assert!(matches!(
        g.finish(Finish::Nothing, Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    store
        .lock(&k, opts(10_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// The row's fence holds even when the holder's own clock says the lease is
/// fine: after another holder took the row over, a kept write is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_after_a_takeover_is_lease_lost() {
    let dir = temp();
    let path = db(dir.path());
    let store = store_at(&path).await;
    let k = key("keep");
    store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    // Another process steals the row's lock as if the lease had run out.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        &format!("UPDATE {DEFAULT_TABLE} SET lock_token = 'thief' WHERE id = ?1"),
        [k.id.as_str()],
    )
    .unwrap();
    assert!(matches!(
        g.finish(Finish::Save(write(b"stale")), Then::Keep).await,
        Err(Error::LeaseLost)
    ));
    let r = store.load(&k).await.unwrap().unwrap();
    assert_eq!((r.version, r.data.as_slice()), (1, b"v1".as_slice()));
    let token: Option<String> = conn
        .query_row(
            &format!("SELECT lock_token FROM {DEFAULT_TABLE} WHERE id = ?1"),
            [k.id.as_str()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(
        token.as_deref(),
        Some("thief"),
        "a refused write released someone else's lock"
    );
}

/// A record changed by an unlocked writer under a kept lock: the next kept
/// save is a conflict, and a deleted one is gone; both release the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_write_checks_the_record_is_still_live() {
    let dir = temp();
    let store = store_at(&db(dir.path())).await;
    let k = key("keep");
    store.create(&k, write(b"v1")).await.unwrap();
    let mut g = store.lock(&k, opts(10_000, 100)).await.unwrap();
    g.finish(Finish::Save(write(b"v2")), Then::Keep).await.unwrap();
    store.save(&k, write(b"unlocked"), None).await.unwrap();
    assert!(matches!(
        g.finish(Finish::Save(write(b"v3")), Then::Keep).await,
        Err(Error::Conflict {
            expected: 2,
            found: 3
        })
    ));
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"unlocked");
    let mut g = store.lock(&k, opts(10_000, 0)).await.unwrap();
    store.delete(&k).await.unwrap();
    assert!(matches!(
        g.finish(
            Finish::Touch {
                accessed: Timestamp::now(),
                expires: Timestamp::now().saturating_add(Duration::from_secs(60)),
            },
            Then::Keep
        )
        .await,
        Err(Error::Gone)
    ));
    assert!(store.load(&k).await.unwrap().is_none());
    store
        .lock(&k, opts(10_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// The table as versions before principals created it, with a live
/// session, an expired one and a lock placeholder in it.
fn old_database(path: &Path, live: &SessionKey, expired: &SessionKey) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE {DEFAULT_TABLE} (
            namespace  TEXT    NOT NULL,
            id         TEXT    NOT NULL,
            version    INTEGER NOT NULL,
            data       BLOB,
            created    INTEGER NOT NULL,
            accessed   INTEGER NOT NULL,
            expires    INTEGER NOT NULL,
            lock_token TEXT,
            lock_until INTEGER,
            PRIMARY KEY (namespace, id)
         ) WITHOUT ROWID;
         CREATE INDEX {DEFAULT_TABLE}_expires ON {DEFAULT_TABLE} (namespace, expires);"
    ))
    .unwrap();
    let now = Timestamp::now().as_millis();
    let insert = format!(
        "INSERT INTO {DEFAULT_TABLE} (namespace, id, version, data, created, accessed, expires, lock_token, lock_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8)"
    );
    let add = |k: &SessionKey,
               version: i64,
               data: Option<&[u8]>,
               expires: i64,
               lock: (Option<&str>, Option<i64>)| {
        let p = rusqlite::params![
            k.namespace.as_str(),
            k.id.as_str(),
            version,
            data,
            now - 60_000,
            expires,
            lock.0,
            lock.1
        ];
        conn.execute(&insert, p).unwrap();
    };
    add(live, 3, Some(b"old live"), now + 3_600_000, (None, None));
    add(expired, 1, Some(b"old expired"), now - 1_000, (None, None));
    // A placeholder left by a holder that died long ago.
    add(&key("app"), 0, None, 0, (Some("gone"), Some(now - 1_000)));
}

fn columns(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)").unwrap();
    let names = stmt
        .query_map([DEFAULT_TABLE], |row| row.get(0))
        .unwrap()
        .collect::<rusqlite::Result<Vec<String>>>()
        .unwrap();
    names
}

/// A database made before principals is upgraded in place: by `migrate`
/// run from two stores (two processes) at once, and by a store that only
/// reads, never migrating. Its rows read with no principal, keep their
/// versions, and take a principal on the next save.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_database_is_upgraded_in_place() {
    let dir = temp();
    let path = db(dir.path());
    let (live, expired) = (key("app"), key("app"));
    old_database(&path, &live, &expired);
    assert!(!columns(&path).contains(&"principal".to_owned()));

    let a = SqliteStore::new(SqliteOptions::new(&path)).unwrap();
    let b = SqliteStore::new(SqliteOptions::new(&path)).unwrap();
    let (ma, mb) = tokio::join!(a.migrate(), b.migrate());
    ma.unwrap();
    mb.unwrap();
    a.migrate().await.unwrap();
    let names = columns(&path);
    assert_eq!(names.iter().filter(|n| *n == "principal").count(), 1, "{names:?}");

    let record = b.load(&live).await.unwrap().expect("the old session is live");
    assert_eq!(
        (record.version, record.data.as_slice(), record.principal),
        (3, b"old live".as_slice(), None)
    );
    assert!(b.load(&expired).await.unwrap().is_none());
    let alice = Principal::new("alice").unwrap();
    assert!(a
        .list_by_principal(&live.namespace, &alice)
        .await
        .unwrap()
        .is_empty());
    let owned = RecordWrite {
        principal: Some(alice.clone()),
        ..write(b"new")
    };
    assert_eq!(a.save(&live, owned, Some(3)).await.unwrap(), 4);
    let listed = b.list_by_principal(&live.namespace, &alice).await.unwrap();
    assert_eq!(
        listed.into_iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![live.id.clone()]
    );

    // The sweep hands the old expired row back without a principal, and
    // drops the dead holder's placeholder.
    let swept = a
        .sweep_expired(&live.namespace, Timestamp::now(), None, 10)
        .await
        .unwrap();
    assert_eq!(swept.deleted.len(), 1);
    assert_eq!(swept.deleted[0].id, expired.id);
    assert_eq!(
        (
            swept.deleted[0].record.data.as_slice(),
            &swept.deleted[0].record.principal
        ),
        (b"old expired".as_slice(), &None)
    );
    assert_eq!(rows(&path), 1);

    // More processes at once, several times over: each finds the table
    // either old (and upgrades it under the write lock) or done.
    for _ in 0..5 {
        let dir = temp();
        let path = db(dir.path());
        old_database(&path, &live, &expired);
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let store = SqliteStore::new(SqliteOptions::new(&path)).unwrap();
                tokio::spawn(async move { store.migrate().await })
            })
            .collect();
        for racer in racers {
            racer.await.unwrap().unwrap();
        }
        assert_eq!(
            store_at(&path).await.load(&live).await.unwrap().unwrap().version,
            3
        );
    }

    // A store that never migrates: its first read upgrades the table.
    let dir = temp();
    let path = db(dir.path());
    old_database(&path, &live, &expired);
    let reader = SqliteStore::new(SqliteOptions::new(&path)).unwrap();
    let record = reader
        .load(&live)
        .await
        .unwrap()
        .expect("the old session is live");
    assert_eq!((record.version, record.principal), (3, None));
    assert!(columns(&path).contains(&"principal".to_owned()));
    assert!(reader
        .list_by_principal(&live.namespace, &alice)
        .await
        .unwrap()
        .is_empty());
}

fn owned_by(data: &[u8], who: &Principal) -> RecordWrite {
    RecordWrite {
        principal: Some(who.clone()),
        ..write(data)
    }
}

fn principal_column(path: &Path, k: &SessionKey) -> Option<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        &format!("SELECT principal FROM {DEFAULT_TABLE} WHERE namespace = ?1 AND id = ?2"),
        [k.namespace.as_str(), k.id.as_str()],
        |row| row.get(0),
    )
    .unwrap()
}

/// A rotation under Keep: the new id holds the record at version 1 (an
/// expired record there is replaced), the old one is a placeholder that
/// still carries the lock and no principal, and the index lists only the
/// new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_rotation_replaces_an_expired_target_and_keeps_the_lock() {
    let dir = temp();
    let path = db(dir.path());
    let store = store_at(&path).await;
    assert!(store.capabilities().rotates_atomically);
    let grace = Principal::new("grace").unwrap();
    let old = key("rot");
    let to = SessionKey::new(old.namespace.clone(), SessionId::generate());
    store.create(&old, owned_by(b"v1", &grace)).await.unwrap();
    let stale = RecordWrite {
        expires: Timestamp::now().saturating_sub(Duration::from_secs(1)),
        ..owned_by(b"stale", &grace)
    };
    store.create(&to, stale).await.unwrap();
    assert_eq!(rows(&path), 2);

    let mut g = store.lock(&old, opts(10_000, 100)).await.unwrap();
    let moved = owned_by(b"moved", &grace);
    let created = moved.created;
    assert_eq!(
        g.finish(
            Finish::Rotate {
                to: to.id.clone(),
                write: moved
            },
            Then::Keep
        )
        .await
        .unwrap(),
        Finished::Rotated
    );
    assert!(g.record().is_none());
    let r = store.load(&to).await.unwrap().expect("the new id is live");
    assert_eq!(
        (r.version, r.data.as_slice(), r.created, r.principal.as_ref()),
        (1, b"moved".as_slice(), created, Some(&grace))
    );
    assert!(store.load(&old).await.unwrap().is_none());
    assert_eq!(principal_column(&path, &old), None);
    assert_eq!(
        store
            .list_by_principal(&old.namespace, &grace)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect::<Vec<_>>(),
        vec![to.id.clone()]
    );
    assert!(
        matches!(
            store.lock(&old, opts(10_000, 0)).await,
            Err(Error::LockTimeout { .. })
        ),
        "a kept rotation released the old id's lock"
    );
    g.finish(Finish::Nothing, Then::Release).await.unwrap();
    assert_eq!(rows(&path), 1, "the release drops the old id's placeholder");
}

/// Every refused rotation writes nothing but the release of the lock: a
/// record changed meanwhile (Conflict), one deleted meanwhile and a lock
/// on a missing session (Gone), a lost lease (LeaseLost, and the thief
/// keeps the lock), a record over the limit (TooLarge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rotation_writes_nothing() {
    let dir = temp();
    let path = db(dir.path());
    let store = SqliteStore::new(SqliteOptions::new(&path).max_record_bytes(64)).unwrap();
    store.migrate().await.unwrap();
    let grace = Principal::new("grace").unwrap();
    let old = key("rot");
    store.create(&old, owned_by(b"v1", &grace)).await.unwrap();
    let rotate = |to: &SessionKey, data: &[u8]| Finish::Rotate {
        to: to.id.clone(),
        write: owned_by(data, &grace),
    };
    let unchanged = |version: u64| {
        let (store, old) = (store.clone(), old.clone());
        async move {
            let r = store.load(&old).await.unwrap().expect("the old id is live");
            assert_eq!(r.version, version);
            store
                .lock(&old, opts(10_000, 0))
                .await
                .expect("the refused rotation kept the lock")
                .unlock()
                .await
                .unwrap();
        }
    };
    let to = key("rot");
    let to = SessionKey::new(old.namespace.clone(), to.id);

    let mut g = store.lock(&old, opts(10_000, 100)).await.unwrap();
    store.save(&old, owned_by(b"v2", &grace), None).await.unwrap();
    assert!(matches!(
        g.finish(rotate(&to, b"x"), Then::Release).await,
        Err(Error::Conflict {
            expected: 1,
            found: 2
        })
    ));
    unchanged(2).await;

    let mut g = store.lock(&old, opts(10_000, 100)).await.unwrap();
    assert!(matches!(
        g.finish(rotate(&to, &[0; 65]), Then::Keep).await,
        Err(Error::TooLarge { .. })
    ));
    unchanged(2).await;

    let mut g = store.lock(&old, opts(10_000, 100)).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        &format!("UPDATE {DEFAULT_TABLE} SET lock_token = 'thief' WHERE id = ?1"),
        [old.id.as_str()],
    )
    .unwrap();
    assert!(matches!(
        g.finish(rotate(&to, b"x"), Then::Release).await,
        Err(Error::LeaseLost)
    ));
    let token: Option<String> = conn
        .query_row(
            &format!("SELECT lock_token FROM {DEFAULT_TABLE} WHERE id = ?1"),
            [old.id.as_str()],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(token.as_deref(), Some("thief"));
    conn.execute(
        &format!("UPDATE {DEFAULT_TABLE} SET lock_token = NULL, lock_until = NULL WHERE id = ?1"),
        [old.id.as_str()],
    )
    .unwrap();
    unchanged(2).await;

    let mut g = store.lock(&old, opts(10_000, 100)).await.unwrap();
    store.delete(&old).await.unwrap();
    assert!(matches!(
        g.finish(rotate(&to, b"x"), Then::Release).await,
        Err(Error::Gone)
    ));
    let nobody = key("rot");
    let mut g = store.lock(&nobody, opts(10_000, 100)).await.unwrap();
    assert!(matches!(
        g.finish(rotate(&to, b"x"), Then::Keep).await,
        Err(Error::Gone)
    ));

    assert!(
        store.load(&to).await.unwrap().is_none(),
        "a refused rotation created the new id"
    );
    assert!(store
        .list_by_principal(&old.namespace, &grace)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(rows(&path), 0, "a refused rotation left a row behind");
}
