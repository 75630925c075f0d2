//! `cloakroom migrate --from URL --to URL`: copy every live session.

use anyhow::{Context, Result};
use cloakroom::{Error, Namespace, RecordWrite, SessionId, SessionKey, SessionStore};
use futures::TryStreamExt;
use serde_json::json;

use cloakroom::Registry;

use crate::cli::open_store;
use crate::cli::MigrateArgs;
use crate::progress;

/// What happened to one listed session.
enum Outcome {
    Copied,
    /// Already live in the target and left as it was.
    Skipped,
    /// Live in the target and replaced.
    Replaced,
    /// Listed in the source but expired or deleted before it was read.
    Vanished,
}

pub(crate) async fn run(args: MigrateArgs, registry: &Registry) -> Result<()> {
    let from = open_store(registry, &args.from, "the source store").await?;
    let to = open_store(registry, &args.to, "the target store").await?;
    let ns = &args.namespace;
    let expected = from.count(ns).await.context("counting the source sessions")?;
    let bar = progress::bar(expected, "migrating");
    let parallel = usize::try_from(args.parallel).unwrap_or(1);
    let overwrite = args.overwrite;
    let copies = cloakroom::list_ids(from.as_ref(), ns, 1000)
        .map_ok(|id| copy_one(from.as_ref(), to.as_ref(), ns, id, overwrite))
        .try_buffer_unordered(parallel);
    let mut copies = std::pin::pin!(copies);
    let (mut copied, mut skipped, mut replaced, mut vanished) = (0u64, 0u64, 0u64, 0u64);
    while let Some(outcome) = copies.try_next().await.context("migrating")? {
        match outcome {
            Outcome::Copied => copied += 1,
            Outcome::Skipped => skipped += 1,
            Outcome::Replaced => replaced += 1,
            Outcome::Vanished => vanished += 1,
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if args.json {
        let counts = json!({
            "copied": copied,
            "skipped": skipped,
            "replaced": replaced,
            "vanished": vanished,
        });
        println!("{counts}");
        return Ok(());
    }
    println!(
        "copied {copied}, replaced {replaced}, skipped {skipped} (already in the target), \
         vanished {vanished} (expired or deleted during the copy)"
    );
    Ok(())
}

async fn copy_one(
    from: &dyn SessionStore,
    to: &dyn SessionStore,
    ns: &Namespace,
    id: SessionId,
    overwrite: bool,
) -> Result<Outcome, Error> {
    let key = SessionKey::new(ns.clone(), id);
    let Some(record) = from.load(&key).await? else {
        return Ok(Outcome::Vanished);
    };
    let write = RecordWrite {
        data: record.data,
        created: record.created,
        accessed: record.accessed,
        expires: record.expires,
        principal: record.principal,
    };
    match to.create(&key, write.clone()).await {
        Ok(_) => Ok(Outcome::Copied),
        Err(Error::Conflict { .. }) if !overwrite => Ok(Outcome::Skipped),
        Err(Error::Conflict { .. }) => {
            // `save` would keep the target's `created`; delete and create
            // carries the source's times over as they are.
            to.delete(&key).await?;
            to.create(&key, write).await?;
            Ok(Outcome::Replaced)
        }
        Err(e) => Err(e),
    }
}
