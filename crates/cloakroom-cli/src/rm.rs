//! `cloakroom rm ID…`.

use anyhow::{bail, Context, Result};
use cloakroom::SessionKey;

use cloakroom::Registry;

use crate::cli::open_store;
use crate::cli::RmArgs;

pub(crate) async fn run(args: RmArgs, registry: &Registry) -> Result<()> {
    let store = open_store(registry, &args.store.url, "the store").await?;
    let mut missing = 0usize;
    for id in &args.ids {
        let key = SessionKey::new(args.store.namespace.clone(), id.clone());
        if store
            .delete(&key)
            .await
            .with_context(|| format!("deleting {id}"))?
        {
            println!("deleted {id}");
        } else {
            eprintln!("no live session {id}");
            missing += 1;
        }
    }
    if missing > 0 {
        bail!("{missing} of {} sessions were not found", args.ids.len());
    }
    Ok(())
}
