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
        principal: None,
    };
    shared().create(&key, write).await.unwrap();
    key
}

/// Hears what the CLI ends: `(on_delete?, the session's upload)`.
#[derive(Default)]
struct Uploads(std::sync::Mutex<Vec<(bool, Option<String>)>>);

#[cloakroom::async_trait]
impl cloakroom::SessionListener for Uploads {
    async fn on_delete(&self, ended: &cloakroom::EndedSession) {
        let upload = ended.data().and_then(|d| d.get::<String>("upload").unwrap());
        self.0.lock().unwrap().push((true, upload));
    }
    async fn on_expire(&self, ended: &cloakroom::EndedSession) {
        let upload = ended.data().and_then(|d| d.get::<String>("upload").unwrap());
        self.0.lock().unwrap().push((false, upload));
    }
}

/// `rm` and `gc` built with the application's listeners run them with each
/// ended session's data, so uploads named in sessions are cleaned up
/// whoever ends the session.
#[tokio::test(flavor = "multi_thread")]
async fn rm_and_gc_run_the_applications_listeners() {
    let registry = cloakroom::registry().with(VAULT);
    let ns = Namespace::new("third-party-listeners").unwrap();
    let stored = |upload: &str, ttl_ms: i64| {
        let mut data = SessionData::new();
        data.insert("upload", upload).unwrap();
        let now = Timestamp::now();
        RecordWrite {
            data: data.encode(),
            created: now,
            accessed: now,
            expires: Timestamp::from_millis(now.as_millis() + ttl_ms),
            principal: None,
        }
    };
    let removed = SessionKey::new(ns.clone(), SessionId::generate());
    shared()
        .create(&removed, stored("/uploads/a", 60_000))
        .await
        .unwrap();
    let expired = SessionKey::new(ns.clone(), SessionId::generate());
    shared()
        .create(&expired, stored("/uploads/b", -1_000))
        .await
        .unwrap();
    let uploads = Arc::new(Uploads::default());
    let listeners: Vec<Arc<dyn cloakroom::SessionListener>> = vec![uploads.clone()];
    for args in [
        vec![
            "cloakroom",
            "rm",
            "--store",
            "vault:",
            "--namespace",
            ns.as_str(),
            removed.id.as_str(),
        ],
        vec!["cloakroom", "gc", "--store", "vault:", "--namespace", ns.as_str()],
    ] {
        let cli = cloakroom_cli::Cli::try_parse_from(args).unwrap();
        cloakroom_cli::run_with_listeners(cli, &registry, &listeners)
            .await
            .unwrap();
    }
    assert_eq!(
        *uploads.0.lock().unwrap(),
        vec![
            (true, Some("/uploads/a".to_owned())),
            (false, Some("/uploads/b".to_owned()))
        ]
    );
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
