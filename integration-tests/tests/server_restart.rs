//! A server restarted while 16 tasks increment one session: errors in
//! between are `Unavailable` (or a lost lock), every acknowledged increment
//! is there afterwards, and the same process carries on without a restart.
//!
//! These restart the machine's Postgres and MariaDB (Redis gets a private,
//! append-only instance, since the shared one keeps nothing on disk), so
//! they run only with `CLOAKROOM_FAULT_TESTS=1`, apart from other tests:
//!
//! ```sh
//! CLOAKROOM_FAULT_TESTS=1 cargo test -p cloakroom-integration-tests --test server_restart
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom::{Error, Manager, Namespace, SessionId};
use cloakroom_conformance::support::{Server, TempDir};
use cloakroom_integration_tests::HITS;
use tokio::process::Command;

fn enabled() -> bool {
    let on = std::env::var("CLOAKROOM_FAULT_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!(
            "SKIPPED: server restart tests; run with CLOAKROOM_FAULT_TESTS=1 (they restart the servers)"
        );
    }
    on
}

async fn sh(script: &str) {
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .await
        .expect("run sh");
    assert!(status.success(), "`{script}` failed: {status}");
}

#[derive(Default)]
struct Tally {
    acknowledged: AtomicU64,
    /// Commits that failed as Unavailable: the server may or may not have
    /// applied them before the connection dropped.
    ambiguous: AtomicU64,
    refused: AtomicU64,
    acknowledged_after_restart: AtomicU64,
}

/// Run 16 incrementing tasks for `run_for`, calling `restart` a second in.
async fn increments_survive_a_restart(url: &str, restart: &str) {
    let store = cloakroom::open(url).await.expect("open store");
    let ns = Namespace::new(&format!("restart-{}", &SessionId::generate().as_str()[..12])).expect("ns");
    let manager = Manager::builder(store, ns)
        .lock_wait(Duration::from_secs(5))
        .lease(Duration::from_secs(5))
        .build()
        .expect("manager");
    let mut s = manager.open(None).await.expect("open");
    s.insert(HITS, &0u64).expect("insert");
    let id = s.id().clone();
    s.commit().await.expect("commit");

    // A background sweeper runs through the restart: the expired sessions
    // written before it and after it must all be swept, so a failed sweep
    // did not end it.
    let sweeper = manager.spawn_sweeper(Duration::from_millis(50));
    write_expired(&manager, EXPIRED_EACH_SIDE).await;

    let tally = Arc::new(Tally::default());
    let restarted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (manager, id, tally, restarted) = (manager.clone(), id.clone(), tally.clone(), restarted.clone());
        tasks.push(tokio::spawn(async move {
            let mut unexpected = Vec::new();
            while Instant::now() < deadline {
                let mut s = match manager.open(Some(&id)).await {
                    Ok(s) if s.is_new() => panic!("the session vanished across the restart"),
                    Ok(s) => s,
                    Err(Error::Unavailable { .. } | Error::LockTimeout { .. }) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => {
                        unexpected.push(format!("open: {e:?}"));
                        continue;
                    }
                };
                let n: u64 = s.get(HITS).expect("hits").unwrap_or(0);
                s.insert(HITS, &(n + 1)).expect("insert");
                match s.commit().await {
                    Ok(_) => {
                        tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                        if restarted.load(Ordering::Relaxed) {
                            tally.acknowledged_after_restart.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(Error::Unavailable { .. }) => {
                        tally.ambiguous.fetch_add(1, Ordering::Relaxed);
                    }
                    // The lock went with the dropped connection: refused, nothing written.
                    Err(Error::LeaseLost) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => unexpected.push(format!("commit: {e:?}")),
                }
            }
            unexpected
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    sh(restart).await;
    restarted.store(true, Ordering::Relaxed);
    let runs_at_restart = sweeper.stats().runs;
    write_expired(&manager, EXPIRED_EACH_SIDE).await;
    let mut unexpected = Vec::new();
    for t in tasks {
        unexpected.extend(t.await.expect("task"));
    }
    let final_hits = loop {
        match manager.open_read_only(&id).await {
            Ok(Some(s)) => break s.get::<u64>(HITS).expect("hits").expect("hits"),
            Ok(None) => panic!("the session vanished across the restart"),
            Err(_) if Instant::now() < deadline + Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    let natively = manager.store().capabilities().expires_natively;
    let swept_all = |stats: &cloakroom::SweeperStats| {
        stats.runs > runs_at_restart + 1 && (natively || stats.deleted >= 2 * EXPIRED_EACH_SIDE)
    };
    let give_up = Instant::now() + Duration::from_secs(30);
    while !swept_all(&sweeper.stats()) && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = sweeper.stats();
    sweeper.shutdown().await;
    println!("{url}: sweeper through the restart: {stats:?} ({runs_at_restart} runs before it)");
    assert!(
        stats.runs > runs_at_restart + 1,
        "the sweeper stopped sweeping after the restart: {stats:?}"
    );
    if !natively {
        assert_eq!(
            stats.deleted,
            2 * EXPIRED_EACH_SIDE,
            "every expired session, written before or after the restart, is swept once"
        );
    }

    let acked = tally.acknowledged.load(Ordering::Relaxed);
    let ambiguous = tally.ambiguous.load(Ordering::Relaxed);
    println!(
        "{url}: restart injected; acknowledged {acked}, ambiguous {ambiguous}, refused {}, \
         acknowledged after restart {}, final count {final_hits}",
        tally.refused.load(Ordering::Relaxed),
        tally.acknowledged_after_restart.load(Ordering::Relaxed),
    );
    assert!(
        unexpected.is_empty(),
        "errors other than Unavailable/LockTimeout/LeaseLost: {unexpected:?}"
    );
    assert!(
        final_hits >= acked,
        "{} acknowledged increments were lost",
        acked - final_hits
    );
    assert!(
        final_hits <= acked + ambiguous,
        "the count {final_hits} exceeds every possible commit"
    );
    assert!(
        tally.acknowledged_after_restart.load(Ordering::Relaxed) > 0,
        "no increment succeeded after the restart: the process did not recover"
    );
}

const EXPIRED_EACH_SIDE: u64 = 20;

/// Write `n` already expired sessions in the manager's namespace, retrying
/// while the server comes back.
async fn write_expired(manager: &Manager, n: u64) {
    let give_up = Instant::now() + Duration::from_secs(30);
    for _ in 0..n {
        let key = manager.key(&SessionId::generate());
        loop {
            match manager
                .store()
                .create(&key, cloakroom_conformance::expired_write(b"old"))
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < give_up => {
                    eprintln!("writing an expired session: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the store did not recover: {e}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restart() {
    if !enabled() {
        return;
    }
    let url = Server::Postgres.url();
    increments_survive_a_restart(
        &url,
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main restart -m fast",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_restart() {
    if !enabled() {
        return;
    }
    let url = Server::Mysql.url();
    increments_survive_a_restart(
        &url,
        "mariadb-admin -h 127.0.0.1 -u root shutdown && \
         for i in $(seq 50); do pgrep -x mariadbd >/dev/null || break; sleep 0.1; done && \
         start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd && \
         for i in $(seq 100); do mariadb-admin -h 127.0.0.1 -u root ping >/dev/null 2>&1 && break; sleep 0.1; done",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_restart() {
    if !enabled() {
        return;
    }
    let dir = TempDir::new("redis-restart").expect("temp dir");
    let port = 6391;
    let start = format!(
        "redis-server --port {port} --bind 127.0.0.1 --daemonize yes --appendonly yes --appendfsync always \
         --save '' --dir {} --logfile {}/redis.log && \
         for i in $(seq 100); do redis-cli -p {port} ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done",
        dir.path().display(),
        dir.path().display()
    );
    sh(&format!(
        "redis-cli -p {port} shutdown nosave >/dev/null 2>&1; {start}"
    ))
    .await;
    let restart = format!("redis-cli -p {port} shutdown >/dev/null 2>&1; sleep 0.3; {start}");
    increments_survive_a_restart(&format!("redis://127.0.0.1:{port}"), &restart).await;
    sh(&format!(
        "redis-cli -p {port} shutdown nosave >/dev/null 2>&1 || true"
    ))
    .await;
}
