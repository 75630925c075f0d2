//! A server that goes away and comes back: operations fail with
//! `Unavailable` while it is down, and the store recovers by itself (the
//! multiplexed connection reconnects, stale waiter connections are replaced)
//! without being rebuilt. Runs its own throwaway `redis-server` on a free
//! loopback port, never the shared one.

use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use cloakroom_conformance::support::skip_or_fail;
use cloakroom_conformance::Unreachable;
use cloakroom_core::{
    Error, LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore, Timestamp,
};
use cloakroom_redis::RedisStore;

struct Server {
    port: u16,
    dir: std::path::PathBuf,
}

impl Server {
    fn start(port: u16, dir: &std::path::Path) -> std::io::Result<()> {
        let status = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--daemonize", "yes", "--dir"])
            .arg(dir)
            .arg("--pidfile")
            .arg(dir.join("redis.pid"))
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other("redis-server failed"));
        }
        Ok(())
    }

    fn stop(&self) {
        let _ = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown", "nosave"])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn until_up(url: &str) -> RedisStore {
    let store = RedisStore::from_url(url).unwrap();
    let started = Instant::now();
    loop {
        match store.migrate().await {
            Ok(()) => return store,
            Err(e) if started.elapsed() > Duration::from_secs(5) => panic!("server did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn write(data: &[u8]) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_secs(60)),
        principal: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_unavailable_then_recovers() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("cloakroom-redis-restart-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let started = Server::start(port, &dir).map_err(|e| {
        Unreachable::new(
            "redis-server",
            format!("cannot run it: {e}"),
            "install redis-server",
        )
    });
    if skip_or_fail(started).is_none() {
        return;
    }
    let server = Server { port, dir };
    let url = format!("redis://127.0.0.1:{port}");
    let store = until_up(&url).await;

    let key = SessionKey::new(Namespace::new("restart").unwrap(), SessionId::generate());
    store.create(&key, write(b"before")).await.unwrap();
    // Warm the waiter pool so a stale blocking connection exists after the restart.
    let holder = store
        .lock(
            &key,
            LockOptions::new(Duration::from_secs(5), Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let s = store.clone();
    let k = key.clone();
    let waiter = tokio::spawn(async move {
        s.lock(
            &k,
            LockOptions::new(Duration::from_secs(5), Duration::from_secs(5)),
        )
        .await
        .map(drop)
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.unlock().await.unwrap();
    waiter.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // let the dropped guard release

    server.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    match store.load(&key).await {
        Err(e @ Error::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("a stopped server must be Unavailable, got {other:?}"),
    }
    match store
        .lock(
            &key,
            LockOptions::new(Duration::from_secs(5), Duration::from_millis(200)),
        )
        .await
    {
        Err(Error::Unavailable { .. }) => {}
        other => panic!("locking on a stopped server must be Unavailable, got {other:?}"),
    }

    Server::start(port, &server.dir).unwrap();
    // The same store recovers on its own (the data is gone: no persistence).
    let started = Instant::now();
    loop {
        match store.create(&key, write(b"after")).await {
            Ok(record) => {
                assert_eq!(record.version, 1);
                break;
            }
            Err(Error::Unavailable { .. }) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("the store did not recover after the restart: {e:?}"),
        }
    }
    // Locking and waiting work again, on fresh blocking connections.
    let holder = store
        .lock(
            &key,
            LockOptions::new(Duration::from_secs(5), Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let s = store.clone();
    let k = key.clone();
    let waiter = tokio::spawn(async move {
        let g = s
            .lock(
                &k,
                LockOptions::new(Duration::from_secs(5), Duration::from_secs(5)),
            )
            .await?;
        g.save_and_unlock(write(b"waited")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    holder.unlock().await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
    assert_eq!(store.load(&key).await.unwrap().unwrap().data, b"waited");
}
