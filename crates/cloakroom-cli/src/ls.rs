//! `cloakroom ls`: stream the live sessions of a namespace.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use cloakroom::{Error, LockOptions, Record, SessionKey, SessionStore};
use futures::TryStreamExt;
use serde_json::json;

use cloakroom::Registry;

use crate::cli::open_store;
use crate::cli::LsArgs;
use crate::format::rfc3339;

/// Ids fetched per page; records are then loaded a few at a time, so memory
/// stays bounded whatever the namespace holds.
const PAGE: usize = 500;
const LOADS_IN_FLIGHT: usize = 16;

pub(crate) async fn run(args: LsArgs, registry: &Registry) -> Result<()> {
    let store = open_store(registry, &args.sessions.store.url, "the store").await?;
    let ns = &args.sessions.store.namespace;
    let probe = args.locked;
    // With hashed ids the store's keys are hashes, not cookie ids: say so.
    let (id_header, id_field) = if args.sessions.hash_ids {
        ("STORED HASH", "stored_hash")
    } else {
        ("ID", "id")
    };
    let rows = cloakroom::list_ids(store.as_ref(), ns, PAGE)
        .map_ok(|id| {
            let key = SessionKey::new(ns.clone(), id);
            let store = &store;
            async move {
                let record = store.load(&key).await?;
                let locked = match (&record, probe) {
                    (Some(_), true) => Some(is_locked(store.as_ref(), &key).await?),
                    _ => None,
                };
                Ok::<_, Error>((key, record, locked))
            }
        })
        .try_buffered(LOADS_IN_FLIGHT);
    let mut rows = std::pin::pin!(rows);
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if !args.json {
        write!(
            out,
            "{:<43}  {:<24}  {:<24}  {:<24}  {:>8}",
            id_header, "CREATED", "ACCESSED", "EXPIRES", "SIZE"
        )?;
        writeln!(out, "{}", if probe { "  LOCKED" } else { "" })?;
    }
    while let Some((key, record, locked)) = rows.try_next().await.context("listing sessions")? {
        // Listed but gone by the time it was loaded: expired or deleted meanwhile.
        let Some(record) = record else { continue };
        let json = args.json.then_some(id_field);
        print_row(&mut out, &key, &record, locked, json)?;
    }
    out.flush()?;
    Ok(())
}

/// One row: a table line, or with `json_id_field` a JSON line naming the id so.
fn print_row(
    out: &mut impl Write,
    key: &SessionKey,
    r: &Record,
    locked: Option<bool>,
    json_id_field: Option<&str>,
) -> std::io::Result<()> {
    if let Some(id_field) = json_id_field {
        let mut row = json!({
            id_field: key.id.as_str(),
            "created": rfc3339(r.created),
            "accessed": rfc3339(r.accessed),
            "expires": rfc3339(r.expires),
            "size": r.data.len(),
            "version": r.version,
        });
        if let Some(locked) = locked {
            row["locked"] = json!(locked);
        }
        return writeln!(out, "{row}");
    }
    write!(
        out,
        "{:<43}  {:<24}  {:<24}  {:<24}  {:>8}",
        key.id.as_str(),
        rfc3339(r.created),
        rfc3339(r.accessed),
        rfc3339(r.expires),
        r.data.len()
    )?;
    match locked {
        Some(true) => writeln!(out, "  yes"),
        Some(false) => writeln!(out, "  no"),
        None => writeln!(out),
    }
}

/// The store trait has no lock-state query, so take the lock with a 1 ms
/// wait (zero would mean "wait forever" to some databases) and give it back.
async fn is_locked(store: &dyn SessionStore, key: &SessionKey) -> Result<bool, Error> {
    let options = LockOptions::new(Duration::from_secs(5), Duration::from_millis(1));
    match store.lock(key, options).await {
        Ok(guard) => {
            guard.unlock().await?;
            Ok(false)
        }
        Err(Error::LockTimeout { .. }) => Ok(true),
        Err(e) => Err(e),
    }
}
