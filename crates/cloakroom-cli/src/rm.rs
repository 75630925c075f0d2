//! `cloakroom rm ID…`.

use anyhow::{bail, Context, Result};
use serde_json::json;

use std::sync::Arc;

use cloakroom::{Registry, SessionListener};

use crate::cli::{open_store, Keys, RmArgs};

pub(crate) async fn run(
    args: RmArgs,
    registry: &Registry,
    listeners: &[Arc<dyn SessionListener>],
) -> Result<()> {
    let store = open_store(registry, &args.sessions.store.url, "the store").await?;
    let keys = Keys::with_listeners(&store, &args.sessions, listeners)?;
    let mut missing = 0usize;
    for id in &args.ids {
        // The manager's delete runs the listeners (with the record as it
        // was) and maps the id as the application does.
        let deleted = keys
            .manager()
            .delete(id)
            .await
            .with_context(|| format!("deleting {id}"))?;
        if args.json {
            println!("{}", json!({ "id": id.as_str(), "deleted": deleted }));
        } else if deleted {
            println!("deleted {id}");
        } else {
            eprintln!("no live session {id}");
        }
        if !deleted {
            missing += 1;
        }
    }
    if missing > 0 {
        bail!("{missing} of {} sessions were not found", args.ids.len());
    }
    Ok(())
}
