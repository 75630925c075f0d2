//! The background sweeper: one task per [`Manager`] that deletes the expired
//! sessions of its namespace at an interval, for as long as the application
//! runs — through store outages, not just until the first error.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Manager;

/// Records examined per store round trip of a background sweep.
const SWEEP_BATCH: usize = 1000;

/// What a [`Sweeper`] has done so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweeperStats {
    /// Sweeps that ran to the end.
    pub runs: u64,
    /// Sweeps that stopped on a store error (retried at the next interval).
    pub failures: u64,
    /// Expired sessions deleted, in all runs.
    pub deleted: u64,
    /// The last error, if the last sweep failed.
    pub last_error: Option<String>,
}

/// A running background sweep of one namespace, started by
/// [`Manager::spawn_sweeper`].
///
/// Dropping it stops the task after the sweep in progress, if any;
/// [`shutdown`](Self::shutdown) also waits for that. A sweep is never cut
/// in the middle, so every deleted session's expiry listeners run.
#[derive(Debug)]
pub struct Sweeper {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    stats: Arc<Mutex<SweeperStats>>,
}

impl Sweeper {
    pub(crate) fn spawn(manager: Manager, interval: Duration) -> Sweeper {
        let interval = interval.max(Duration::from_millis(1));
        let (stop, mut stopped) = watch::channel(false);
        let stats = Arc::new(Mutex::new(SweeperStats::default()));
        let shared = Arc::clone(&stats);
        let task = tokio::spawn(async move {
            // The first sweep comes at a random point of the first interval,
            // so processes started together do not all sweep at once.
            let mut wait = interval.mul_f64(random_fraction());
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                let outcome = manager.sweep_expired(SWEEP_BATCH).await;
                let mut stats = shared.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(report) => {
                        stats.runs += 1;
                        stats.deleted += report.deleted;
                        stats.last_error = None;
                        if report.deleted > 0 {
                            tracing::info!(
                                namespace = %manager.namespace(),
                                deleted = report.deleted,
                                remaining = report.remaining,
                                "swept expired sessions"
                            );
                        } else {
                            tracing::debug!(namespace = %manager.namespace(), remaining = report.remaining, "nothing to sweep");
                        }
                    }
                    Err(e) => {
                        stats.failures += 1;
                        stats.last_error = Some(e.to_string());
                        tracing::warn!(
                            namespace = %manager.namespace(),
                            error = %e,
                            "session sweep failed; retrying at the next interval"
                        );
                    }
                }
                drop(stats);
                // ±10%, so sweepers of several processes drift apart.
                wait = interval.mul_f64(0.9 + 0.2 * random_fraction());
            }
        });
        Sweeper {
            stop,
            task: Some(task),
            stats,
        }
    }

    /// What the sweeper has done so far.
    pub fn stats(&self) -> SweeperStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stop sweeping and wait for a sweep in progress to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// A uniform value in [0, 1).
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::{
        MemoryStore, Namespace, RecordWrite, SessionId, SessionKey, SessionListener, SessionStore, Timestamp,
    };

    #[derive(Default)]
    struct Expiries(AtomicU64);

    #[async_trait]
    impl SessionListener for Expiries {
        async fn on_expire(&self, _ended: &crate::EndedSession) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn put(store: &MemoryStore, ns: &Namespace, ttl_ms: i64) -> SessionKey {
        let key = SessionKey::new(ns.clone(), SessionId::generate());
        let now = Timestamp::now();
        let write = RecordWrite {
            data: crate::SessionData::new().encode(),
            created: now,
            accessed: now,
            expires: Timestamp::from_millis(now.as_millis() + ttl_ms),
            principal: None,
        };
        store.create(&key, write).await.unwrap();
        key
    }

    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the sweeper did not get there in 5 s");
    }

    #[tokio::test]
    async fn sweeps_repeatedly_runs_listeners_and_stops_on_shutdown() {
        let store = MemoryStore::new();
        let ns = Namespace::new("sweeper").unwrap();
        let expiries = Arc::new(Expiries::default());
        let manager = Manager::builder(Arc::new(store.clone()), ns.clone())
            .listener(expiries.clone())
            .build()
            .unwrap();
        let live = put(&store, &ns, 60_000).await;
        for _ in 0..3 {
            put(&store, &ns, 1).await;
        }
        let sweeper = manager.spawn_sweeper(Duration::from_millis(20));
        until(|| sweeper.stats().deleted == 3).await;
        assert_eq!(
            expiries.0.load(Ordering::SeqCst),
            3,
            "one expiry listener call per swept session"
        );

        // It keeps going: sessions that expire later are swept by later runs.
        put(&store, &ns, 1).await;
        until(|| sweeper.stats().deleted == 4).await;
        assert!(sweeper.stats().runs >= 2);
        assert!(
            store.load(&live).await.unwrap().is_some(),
            "a live session is never swept"
        );

        sweeper.shutdown().await;
        put(&store, &ns, 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            store.count(&ns).await.unwrap(),
            1,
            "nothing sweeps after shutdown"
        );
        assert_eq!(expiries.0.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_the_task() {
        let store = MemoryStore::new();
        let ns = Namespace::new("sweeper-drop").unwrap();
        let manager = Manager::new(Arc::new(store.clone()), ns.clone());
        let sweeper = manager.spawn_sweeper(Duration::from_millis(10));
        let stats = Arc::clone(&sweeper.stats);
        until(|| stats.lock().unwrap().runs >= 1).await;
        drop(sweeper);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let runs = stats.lock().unwrap().runs;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            stats.lock().unwrap().runs,
            runs,
            "no run after the handle was dropped"
        );
    }
}
