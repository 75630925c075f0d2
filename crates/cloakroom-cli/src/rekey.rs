//! `cloakroom rekey`: re-seal every session of a namespace with the first key.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use cloakroom::{Error, LockOptions, RecordWrite, Registry, SessionKey};
use futures::TryStreamExt;
use serde_json::json;

use crate::cli::{open_store, Keys, RekeyArgs};

/// How long a re-seal may hold a session, and wait for a request holding it.
const LOCK: LockOptions = LockOptions {
    lease: Duration::from_secs(30),
    wait: Duration::from_secs(10),
};

/// What re-sealing one session did.
enum Resealed {
    /// Sealed anew with the first key.
    Now,
    /// Already sealed with the first key: left alone.
    Already,
    /// Expired or deleted before it could be read.
    Vanished,
}

pub(crate) async fn run(args: RekeyArgs, registry: &Registry) -> Result<()> {
    if args.sessions.keys.is_empty() {
        bail!("rekey needs the keys: --key NEW[,OLD…] or CLOAKROOM_KEYS");
    }
    let store = open_store(registry, &args.sessions.store.url, "the store").await?;
    let keys = Keys::new(&store, &args.sessions)?;
    let namespace = &args.sessions.store.namespace;
    let (mut resealed, mut current, mut vanished) = (0u64, 0u64, 0u64);
    let mut unreadable = Vec::new();
    let mut ids = std::pin::pin!(cloakroom::list_ids(store.as_ref(), namespace, 1000));
    while let Some(id) = ids.try_next().await.context("listing the sessions")? {
        // Listed ids are stored ids (hashes, with hash_ids): keys as they are.
        let key = SessionKey::new(namespace.clone(), id);
        match reseal(&keys, &key).await {
            Ok(Resealed::Now) => resealed += 1,
            Ok(Resealed::Already) => current += 1,
            Ok(Resealed::Vanished) => vanished += 1,
            Err(Error::Corrupt { .. }) => unreadable.push(key.id),
            Err(e) => return Err(e).with_context(|| format!("re-sealing {}", key.id)),
        }
    }
    if args.json {
        println!(
            "{}",
            json!({ "resealed": resealed, "current": current, "vanished": vanished, "unreadable": unreadable.len() })
        );
    } else {
        println!(
            "resealed {resealed}, current {current}, vanished {vanished}, unreadable {}",
            unreadable.len()
        );
    }
    if !unreadable.is_empty() {
        for id in &unreadable {
            eprintln!("cannot open {id} with any of the keys given");
        }
        bail!(
            "{} sessions could not be opened with any of the keys",
            unreadable.len()
        );
    }
    Ok(())
}

/// Re-seal one session under its lock, so that no request's write is lost.
async fn reseal(keys: &Keys, key: &SessionKey) -> cloakroom::Result<Resealed> {
    let manager = keys.manager();
    let guard = manager.store().lock(key, LOCK).await?;
    let Some(record) = guard.record().cloned() else {
        guard.unlock().await?;
        return Ok(Resealed::Vanished);
    };
    let needs_reseal = manager
        .keyring()
        .is_some_and(|ring| ring.needs_reseal(&record.data));
    if !needs_reseal {
        guard.unlock().await?;
        return Ok(Resealed::Already);
    }
    let plain = match manager.open_for(key, &record.data) {
        Ok(plain) => plain,
        Err(e) => {
            guard.unlock().await?;
            return Err(e);
        }
    };
    let write = RecordWrite {
        data: manager.seal_for(key, &plain),
        created: record.created,
        accessed: record.accessed,
        expires: record.expires,
        principal: record.principal.clone(),
    };
    match guard.save_and_unlock(write).await {
        Ok(_) => Ok(Resealed::Now),
        // Expired or deleted while we held it: nothing to re-seal.
        Err(Error::Gone) => Ok(Resealed::Vanished),
        Err(e) => Err(e),
    }
}
