//! Sweep mode: N expired sessions, then one streaming sweep (cloakroom only).
//!
//! The figures are sessions/s per backend and the memory a sweep of a
//! million sessions needs, which must stay bounded. The records are written
//! straight through the [`SessionStore`] API (a manager would add nothing a
//! sweep looks at), and this process's resident set is sampled after every
//! batch: its peak growth over the sweep is the bounded-memory evidence.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloakroom::{
    sweep_batches, Namespace, RecordWrite, SessionData, SessionId, SessionKey, SessionStore, Timestamp,
};
use futures::TryStreamExt;

use super::modes::SETUP_PARALLEL;
use super::payload::Payload;
use super::report::SweepResult;
use crate::progress;

/// Records examined per sweep batch: `cloakroom gc`'s default.
pub const SWEEP_BATCH: usize = 1000;
/// How long each record lives: short, so the wait for all to expire is too.
const TTL: Duration = Duration::from_secs(1);

/// Create `n` sessions in `namespace` expiring `TTL` after their creation,
/// wait until all have expired, then time one `sweep_batches` to the end.
pub async fn sweep(
    store: Arc<dyn SessionStore>,
    backend: &str,
    namespace: &Namespace,
    n: usize,
) -> Result<SweepResult> {
    eprintln!("cloakroom {backend}: creating {n} sessions expiring after {TTL:?}");
    let creating = Instant::now();
    let latest_expiry = create_expiring(&store, namespace, n).await?;
    let secs = creating.elapsed().as_secs_f64();
    eprintln!(
        "cloakroom {backend}: created {n} in {secs:.1} s ({:.0}/s)",
        n as f64 / secs.max(1e-9)
    );

    // Expired means `expires <= now` (Record::is_live_at).
    loop {
        let wait = latest_expiry.saturating_sub(Timestamp::now().as_millis());
        if wait < 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(wait.unsigned_abs() + 1)).await;
    }

    eprintln!("cloakroom {backend}: sweeping");
    let bar = progress::spinner("deleted");
    let rss_before = rss_bytes();
    let mut rss_peak = rss_before;
    let mut deleted = 0u64;
    let started = Instant::now();
    let mut batches = std::pin::pin!(sweep_batches(
        store.as_ref(),
        namespace,
        Timestamp::now(),
        SWEEP_BATCH
    ));
    while let Some(b) = batches.try_next().await.context("sweeping")? {
        let k = b.deleted.len() as u64;
        deleted += k;
        bar.inc(k);
        rss_peak = rss_peak.max(rss_bytes());
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let remaining = store
        .count(namespace)
        .await
        .context("counting the sessions left after the sweep")?;
    // `count` sees live records only, so it cannot tell an expired record the
    // sweep skipped from one it deleted; a second sweep can.
    let left_behind = sweep_batches(store.as_ref(), namespace, Timestamp::now(), SWEEP_BATCH)
        .try_fold(0u64, |sum, b| async move { Ok(sum + b.deleted.len() as u64) })
        .await
        .context("sweeping a second time")?;

    let expires_natively = store.capabilities().expires_natively;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    Ok(SweepResult {
        library: "cloakroom".into(),
        backend: backend.into(),
        mode: "sweep".into(),
        created: n as u64,
        deleted,
        seconds,
        // A backend that expires records itself left nothing to delete: a
        // rate of 0/s would be a figure for work that never happened.
        deleted_per_sec: (!expires_natively).then(|| deleted as f64 / seconds.max(1e-9)),
        batch: SWEEP_BATCH,
        rss_before_mib: rss_before.map(mib),
        rss_growth_mib: rss_before.zip(rss_peak).map(|(b, p)| mib(p.saturating_sub(b))),
        remaining,
        left_behind,
        expires_natively,
    })
}

/// Create `n` records in `SETUP_PARALLEL` tasks; returns the latest expiry (ms).
async fn create_expiring(store: &Arc<dyn SessionStore>, namespace: &Namespace, n: usize) -> Result<i64> {
    // One payload for all: its contents do not matter to a sweep, and
    // encoding a million would time the encoder, not the store.
    let mut data = SessionData::new();
    Payload::random().fill(&mut data)?;
    let bytes: Arc<[u8]> = data.encode().into();
    let bar = progress::bar(n as u64, "creating");
    let claimed = Arc::new(AtomicUsize::new(0));
    let latest = Arc::new(AtomicI64::new(i64::MIN));
    let tasks: Vec<_> = (0..SETUP_PARALLEL)
        .map(|_| {
            let (store, ns, bytes, bar) = (
                Arc::clone(store),
                namespace.clone(),
                Arc::clone(&bytes),
                bar.clone(),
            );
            let (claimed, latest) = (Arc::clone(&claimed), Arc::clone(&latest));
            tokio::spawn(async move {
                while claimed.fetch_add(1, Ordering::Relaxed) < n {
                    let now = Timestamp::now();
                    let expires = now.saturating_add(TTL);
                    let write = RecordWrite {
                        data: bytes.to_vec(),
                        created: now,
                        accessed: now,
                        expires,
                        principal: None,
                    };
                    store
                        .create(&SessionKey::new(ns.clone(), SessionId::generate()), write)
                        .await
                        .context("creating a session")?;
                    latest.fetch_max(expires.as_millis(), Ordering::Relaxed);
                    bar.inc(1);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a creating task panicked")??;
    }
    bar.finish_and_clear();
    Ok(latest.load(Ordering::Relaxed))
}

/// This process's resident set in bytes (Linux: `VmRSS` of /proc/self/status).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_set_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
