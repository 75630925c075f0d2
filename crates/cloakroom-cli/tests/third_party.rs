//! A backend defined outside the workspace's backend crates — here, in
//! this test — names its URL scheme in a registry, and both `open_with` and
//! the CLI's `run_with` reach it through that scheme.

use std::sync::{Arc, OnceLock};

use clap::Parser;
use cloakroom::{
    Error, MemoryStore, Namespace, Opener, RecordWrite, SessionData, SessionId, SessionKey, SessionStore,
    StoreUrl, Timestamp,
};

/// The third-party store: one shared instance, so the test sees what the
/// CLI did to it. Its URL takes one option, to show options reach it.
fn shared() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

fn open_vault(url: &StoreUrl) -> cloakroom::Result<Arc<dyn SessionStore>> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct VaultOptions {
        #[allow(dead_code)]
        shelf: Option<String>,
    }
    let _: VaultOptions = url.options()?;
    Ok(Arc::new(shared().clone()))
}

const VAULT: Opener = Opener {
    schemes: &["vault"],
    open: open_vault,
};

async fn put(ns: &Namespace) -> SessionKey {
    let key = SessionKey::new(ns.clone(), SessionId::generate());
    let mut data = SessionData::new();
    data.insert("hits", &7u64).unwrap();
    let now = Timestamp::now();
    let write = RecordWrite {
        data: data.encode(),
        created: now,
        accessed: now,
        expires: Timestamp::from_millis(now.as_millis() + 60_000),
    };
    shared().create(&key, write).await.unwrap();
    key
}

#[tokio::test]
async fn a_registered_scheme_opens_and_unknown_options_are_refused() {
    let registry = cloakroom::registry().with(VAULT);
    assert!(registry.schemes().contains(&"vault"));
    assert!(registry.schemes().contains(&"memory"), "built-ins stay");

    let ns = Namespace::new("third-party-open").unwrap();
    let key = put(&ns).await;
    let store = cloakroom::open_with(&registry, "vault:?shelf=top").await.unwrap();
    assert!(
        store.load(&key).await.unwrap().is_some(),
        "the registered opener was used"
    );

    match cloakroom::open_with(&registry, "vault:?colour=red").await {
        Err(Error::Config(message)) => assert!(message.contains("colour"), "{message}"),
        other => panic!("expected a Config error naming the key, got {other:?}"),
    }
    match cloakroom::open("vault:").await {
        Err(Error::Config(message)) => assert!(message.contains("unknown store scheme"), "{message}"),
        other => panic!("the built-in registry must not know vault:, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_runs_against_a_registered_scheme() {
    let registry = cloakroom::registry().with(VAULT);
    let ns = Namespace::new("third-party-cli").unwrap();
    let kept = put(&ns).await;
    let removed = put(&ns).await;

    let cli = cloakroom_cli::Cli::try_parse_from([
        "cloakroom",
        "rm",
        "--store",
        "vault:",
        "--namespace",
        ns.as_str(),
        removed.id.as_str(),
    ])
    .unwrap();
    cloakroom_cli::run_with(cli, &registry).await.unwrap();
    assert!(
        shared().load(&removed).await.unwrap().is_none(),
        "rm reached the store"
    );
    assert!(shared().load(&kept).await.unwrap().is_some());

    let cli = cloakroom_cli::Cli::try_parse_from([
        "cloakroom",
        "gc",
        "--store",
        "vault:",
        "--namespace",
        ns.as_str(),
    ])
    .unwrap();
    cloakroom_cli::run_with(cli, &registry).await.unwrap();

    let cli = cloakroom_cli::Cli::try_parse_from(["cloakroom", "gc", "--store", "vault:"]).unwrap();
    let error = cloakroom_cli::run(cli).await.unwrap_err();
    assert!(format!("{error:#}").contains("unknown store scheme"), "{error:#}");
}
