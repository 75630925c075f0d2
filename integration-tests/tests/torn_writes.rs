//! Writers SIGKILLed mid-save, over and over, never leave a torn or
//! unreadable record (a store that truncates a file and rewrites it in place
//! shows zero bytes to a reader in between, and leaves them after a crash),
//! and readers running beside the writer never see a partial one.
//!
//! Rounds: 100, or `CLOAKROOM_KILL_ROUNDS`.

use std::process::Stdio;
use std::time::Duration;

use cloakroom::{Manager, Namespace, SessionData, SessionId, SessionKey};
use cloakroom_conformance::support::TempDir;
use cloakroom_integration_tests::HITS;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const WORKER: &str = env!("CARGO_BIN_EXE_cloakroom-worker");

/// Load the record and insist it is whole: it decodes, and its blob is one
/// write's blob (every byte the same), not a mix of two.
async fn assert_whole(manager: &Manager, key: &SessionKey, last_hits: &mut u64, when: &str) {
    let record = manager
        .store()
        .load(key)
        .await
        .unwrap_or_else(|e| panic!("{when}: load failed: {e}"))
        .unwrap_or_else(|| panic!("{when}: the session vanished"));
    let data = SessionData::decode(&record.data).unwrap_or_else(|e| panic!("{when}: torn record: {e}"));
    let hits: u64 = data.get(HITS).expect("hits decodes").expect("hits present");
    assert!(
        hits >= *last_hits,
        "{when}: the count went back from {last_hits} to {hits}"
    );
    *last_hits = hits;
    if let Some(blob) = data.get::<Vec<u8>>("blob").expect("blob decodes") {
        assert!(
            blob.iter().all(|b| *b == blob[0]),
            "{when}: the blob mixes two writes"
        );
    }
}

async fn killed_writers_never_leave_a_torn_record(url: &str) {
    let rounds: u64 = std::env::var("CLOAKROOM_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let store = cloakroom::open(url).await.expect("open store");
    let ns = Namespace::new(&format!("torn-{}", &SessionId::generate().as_str()[..12])).expect("ns");
    let manager = Manager::builder(store, ns.clone()).build().expect("manager");
    let mut s = manager.open(None).await.expect("open");
    s.insert(HITS, &0u64).expect("insert");
    let id = s.id().clone();
    s.commit().await.expect("commit");
    let key = manager.key(&id);

    let mut last_hits = 0;
    for round in 0..rounds {
        let mut child = Command::new(WORKER)
            .args(["churn", url, ns.as_str(), id.as_str()])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn worker");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        assert_eq!(
            ready.expect("worker start").expect("stdout").as_deref(),
            Some("churning")
        );
        // Read beside the writer for a varying moment, then kill it mid-save.
        let pause = Duration::from_millis(5 + (round * 37) % 60);
        let reading = async {
            loop {
                assert_whole(&manager, &key, &mut last_hits, &format!("round {round}, during")).await;
            }
        };
        let _ = tokio::time::timeout(pause, reading).await;
        child.start_kill().expect("SIGKILL");
        child.wait().await.expect("reap");
        assert_whole(
            &manager,
            &key,
            &mut last_hits,
            &format!("round {round}, after the kill"),
        )
        .await;
    }
    println!("{url}: {rounds} writers killed mid-save, count reached {last_hits}, no torn record");
    assert!(
        last_hits > 0,
        "the writers never saved anything, so nothing was tested"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn file_store_survives_killed_writers() {
    let dir = TempDir::new("torn-writes").expect("temp dir");
    killed_writers_never_leave_a_torn_record(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_survives_killed_writers() {
    let dir = TempDir::new("torn-writes").expect("temp dir");
    killed_writers_never_leave_a_torn_record(&format!("sqlite://{}/s.db", dir.path().display())).await;
}
