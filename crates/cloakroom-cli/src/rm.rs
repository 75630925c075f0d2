//! `cloakroom rm ID…`.

use anyhow::{bail, Context, Result};
use cloakroom::SessionKey;

use crate::cli::RmArgs;

pub(crate) async fn run(args: RmArgs) -> Result<()> {
    let store = cloakroom::open(&args.store.url)
        .await
        .context("opening the store")?;
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
