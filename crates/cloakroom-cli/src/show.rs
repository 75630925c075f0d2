//! `cloakroom show ID`: one record, decoded.

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cloakroom::SessionData;
use serde_json::{json, Map};

use cloakroom::Registry;

use crate::cli::{open_store, Keys, ShowArgs};
use crate::format::{msgpack_to_json, rfc3339};

pub(crate) async fn run(args: ShowArgs, registry: &Registry) -> Result<()> {
    let store = open_store(registry, &args.sessions.store.url, "the store").await?;
    let keys = Keys::new(&store, &args.sessions)?;
    let key = keys.key(&args.id);
    let record = store
        .load(&key)
        .await
        .context("loading the session")?
        .ok_or_else(|| anyhow!("no live session {} in namespace {}", args.id, key.namespace))?;
    let mut out = json!({
        "id": args.id.as_str(),
        "namespace": key.namespace.as_str(),
        "version": record.version,
        "created": rfc3339(record.created),
        "accessed": rfc3339(record.accessed),
        "expires": rfc3339(record.expires),
        "size": record.data.len(),
    });
    if args.sessions.hash_ids {
        out["stored_hash"] = json!(key.id.as_str());
    }
    let opened = keys.manager().open_for(&key, &record.data);
    let data = match opened.and_then(|plain| SessionData::decode(&plain)) {
        Ok(data) => data,
        Err(e) => {
            // Show what is there, then fail: a corrupt record is a finding, not a crash.
            out["corrupt"] = json!(e.to_string());
            out["raw_base64"] = json!(STANDARD.encode(&record.data));
            println!("{}", serde_json::to_string_pretty(&out)?);
            bail!("session {} is corrupt: {e}", args.id);
        }
    };
    let mut values = Map::new();
    let mut bad = Vec::new();
    for (name, bytes) in data.iter_raw() {
        let value = msgpack_to_json(bytes).unwrap_or_else(|reason| {
            bad.push(name.to_owned());
            json!({ "$undecodable": reason, "$bytes": STANDARD.encode(bytes) })
        });
        values.insert(name.to_owned(), value);
    }
    out["data"] = serde_json::Value::Object(values);
    println!("{}", serde_json::to_string_pretty(&out)?);
    if !bad.is_empty() {
        bail!("session {} has undecodable values: {}", args.id, bad.join(", "));
    }
    Ok(())
}
