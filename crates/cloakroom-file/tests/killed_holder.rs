//! A holder process killed with SIGKILL frees its lock at once: the kernel
//! drops a dead process's `flock`s. The holder is this test binary run again
//! as a child, on the same directory through the same URL.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cloakroom_core::{
    Error, LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore, Timestamp,
};
use cloakroom_file::FileStore;

const URL_VAR: &str = "CLOAKROOM_FILE_CHILD_URL";
const ID_VAR: &str = "CLOAKROOM_FILE_CHILD_ID";

fn write(data: &[u8]) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_secs(3600)),
    }
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

#[tokio::test]
#[ignore = "the child half of a_sigkilled_holder_frees_the_lock_at_once, which runs it"]
async fn child_holds_a_lock_until_killed() {
    let (Ok(url), Ok(id)) = (std::env::var(URL_VAR), std::env::var(ID_VAR)) else {
        eprintln!("only meaningful as a child of a_sigkilled_holder_frees_the_lock_at_once");
        return;
    };
    let store = FileStore::from_url(&url).unwrap();
    let key = SessionKey::new(Namespace::new("app").unwrap(), SessionId::parse(&id).unwrap());
    let _held = store.lock(&key, opts(120_000, 5_000)).await.unwrap();
    println!("LOCKED");
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_holder_frees_the_lock_at_once() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let url = format!("file://{}?durable=false", dir.path().display());
    let store = FileStore::from_url(&url).unwrap();
    let key = SessionKey::new(Namespace::new("app").unwrap(), SessionId::generate());
    store.create(&key, write(b"before")).await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_holds_a_lock_until_killed",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(URL_VAR, &url)
        .env(ID_VAR, key.id.as_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let locked = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .any(|line| line.is_ok_and(|l| l.contains("LOCKED")))
        }),
    )
    .await;
    if !matches!(locked, Ok(Ok(true))) {
        let _ = child.kill();
        panic!("the child never took the lock");
    }

    // Held by another process: we wait and time out.
    match store.lock(&key, opts(10_000, 200)).await {
        Err(Error::LockTimeout { .. }) => {}
        other => panic!("the child's lock must block us, got {other:?}"),
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no unlock
    child.wait().unwrap();

    let killed_at = Instant::now();
    let g = store.lock(&key, opts(10_000, 5_000)).await.unwrap();
    // Its lease had two minutes left: only the kernel can have freed it.
    assert!(
        killed_at.elapsed() < Duration::from_millis(500),
        "{:?}",
        killed_at.elapsed()
    );
    assert_eq!(g.record().unwrap().data, b"before");
    assert_eq!(g.save_and_unlock(write(b"after")).await.unwrap(), 2);
}
