//! Contention figures for the issue's note (not part of CI; prints numbers):
//!
//! ```text
//! cargo test --release -p cloakroom-file --test contention -- --ignored --nocapture
//! ```
//!
//! 8 tasks on two stores (standing in for two processes) increment one
//! session 2,000 times in all, once under the lock and once with plain
//! load + save (the unlocked anchor), then one task measures the cost of an
//! uncontended cycle of each kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_core::{LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore, Timestamp};
use cloakroom_file::{FileOptions, FileStore};

const TOTAL: u64 = 2_000;
const TASKS: u64 = 8;

fn write(n: u64) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: n.to_le_bytes().to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_secs(3600)),
    }
}

fn count(data: &[u8]) -> u64 {
    u64::from_le_bytes(data[..8].try_into().unwrap())
}

async fn locked_cycle(store: &dyn SessionStore, key: &SessionKey) {
    let options = LockOptions::new(Duration::from_secs(10), Duration::from_secs(30));
    let g = store.lock(key, options).await.unwrap();
    let n = count(&g.record().unwrap().data);
    g.save_and_unlock(write(n + 1)).await.unwrap();
}

async fn plain_cycle(store: &dyn SessionStore, key: &SessionKey) {
    let n = count(&store.load(key).await.unwrap().unwrap().data);
    store.save(key, write(n + 1), None).await.unwrap();
}

async fn contended(stores: &[Arc<dyn SessionStore>], locked: bool) -> (f64, u64) {
    let key = SessionKey::new(Namespace::new("bench").unwrap(), SessionId::generate());
    stores[0].create(&key, write(0)).await.unwrap();
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let (store, key) = (stores[i as usize % stores.len()].clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..TOTAL / TASKS {
                    if locked {
                        locked_cycle(store.as_ref(), &key).await;
                    } else {
                        plain_cycle(store.as_ref(), &key).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = TOTAL as f64 / started.elapsed().as_secs_f64();
    let final_count = count(&stores[0].load(&key).await.unwrap().unwrap().data);
    (rate, TOTAL - final_count)
}

async fn uncontended(store: &dyn SessionStore, locked: bool) -> Duration {
    let key = SessionKey::new(Namespace::new("bench").unwrap(), SessionId::generate());
    store.create(&key, write(0)).await.unwrap();
    let started = Instant::now();
    for _ in 0..500 {
        if locked {
            locked_cycle(store, &key).await;
        } else {
            plain_cycle(store, &key).await;
        }
    }
    started.elapsed() / 500
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement, run by hand: see the module docs"]
async fn contention_figures() {
    for durable in [false, true] {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let open = || -> Arc<dyn SessionStore> {
            Arc::new(FileStore::with_options(
                FileOptions::new(dir.path()).durable(durable),
            ))
        };
        let stores = [open(), open()];
        let (locked_rate, locked_lost) = contended(&stores, true).await;
        let (plain_rate, plain_lost) = contended(&stores, false).await;
        let locked_cost = uncontended(stores[0].as_ref(), true).await;
        let plain_cost = uncontended(stores[0].as_ref(), false).await;
        println!(
            "file durable={durable}: serialized {locked_rate:.0} cycles/s, {locked_lost} lost | \
             load+save {plain_rate:.0} cycles/s, {plain_lost} lost | \
             one cycle: serialized {locked_cost:?} vs load+save {plain_cost:?}"
        );
        assert_eq!(locked_lost, 0, "the lock lost updates");
    }
}
