//! `cloakroom gc`: sweep expired sessions, streaming batch by batch.

use std::time::Instant;

use anyhow::{Context, Result};
use cloakroom::{sweep_batches, Timestamp};
use futures::TryStreamExt;
use serde_json::json;

use std::sync::Arc;

use cloakroom::{Manager, Registry, SessionListener};

use crate::cli::open_store;
use crate::cli::GcArgs;
use crate::progress;

pub(crate) async fn run(
    args: GcArgs,
    registry: &Registry,
    listeners: &[Arc<dyn SessionListener>],
) -> Result<()> {
    let store = open_store(registry, &args.store.url, "the store").await?;
    let ns = &args.store.namespace;
    let started = Instant::now();
    let bar = progress::spinner("deleted");
    let batch = usize::try_from(args.batch).unwrap_or(usize::MAX);
    let (deleted, remaining) = if listeners.is_empty() {
        let mut deleted = 0u64;
        let mut batches = std::pin::pin!(sweep_batches(store.as_ref(), ns, Timestamp::now(), batch));
        while let Some(b) = batches.try_next().await.context("sweeping")? {
            let n = b.deleted.len() as u64;
            deleted += n;
            bar.inc(n);
        }
        let remaining = store.count(ns).await.context("counting the remaining sessions")?;
        (deleted, remaining)
    } else {
        // The manager's sweep runs `on_expire` with each swept record.
        let manager = listeners
            .iter()
            .fold(Manager::builder(Arc::clone(&store), ns.clone()), |b, l| {
                b.listener(Arc::clone(l))
            })
            .build()
            .context("preparing the listeners")?;
        let report = manager.sweep_expired(batch).await.context("sweeping")?;
        bar.inc(report.deleted);
        (report.deleted, report.remaining)
    };
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({ "deleted": deleted, "remaining": remaining, "seconds": secs })
        );
        return Ok(());
    }
    println!("deleted {deleted}, remaining {remaining}");
    eprintln!(
        "swept in {secs:.2} s ({:.0} deleted/s)",
        deleted as f64 / secs.max(1e-9)
    );
    Ok(())
}
