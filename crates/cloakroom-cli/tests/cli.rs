//! Each command run as a real process against real stores. SQLite needs
//! nothing; Postgres and Redis are skipped with a `SKIPPED` line when
//! unreachable, unless `CLOAKROOM_REQUIRE_BACKENDS=1` (see
//! `cloakroom_conformance::support`).

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use cloakroom::{
    Key, Keyring, Manager, Namespace, RecordWrite, SessionData, SessionId, SessionKey, SessionStore,
    Timestamp,
};
use cloakroom_conformance::support::{self, Server, TempDir};
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

/// The binary with `args` and the variables `env` (and none of the
/// `CLOAKROOM_*` ones of the test's own environment).
fn cloakroom_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloakroom"))
        .args(args)
        .env_remove("CLOAKROOM_STORE")
        .env_remove("CLOAKROOM_HASH_IDS")
        .env_remove("CLOAKROOM_KEYS")
        .envs(env.iter().copied())
        .output()
        .expect("run the cloakroom binary")
}

fn cloakroom(args: &[&str]) -> Output {
    cloakroom_with_env(args, &[])
}

/// `cloakroom COMMAND --store URL --namespace NS REST…`.
fn in_ns(command: &str, url: &str, ns: &Namespace, rest: &[&str]) -> Output {
    let mut args = vec![command, "--store", url, "--namespace", ns.as_str()];
    args.extend_from_slice(rest);
    cloakroom(&args)
}

/// `show` that must succeed: its JSON.
fn show_ok(url: &str, ns: &Namespace, rest: &[&str]) -> Value {
    let o = in_ns("show", url, ns, rest);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

/// `rm --json REST…`, which must exit with `code`: its lines as (id, deleted).
fn rm_json(url: &str, ns: &Namespace, rest: &[&str], code: i32) -> Vec<(String, bool)> {
    let mut args = vec!["--json"];
    args.extend_from_slice(rest);
    let o = in_ns("rm", url, ns, &args);
    assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    json_lines(&o)
        .into_iter()
        .map(|v| {
            assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
            (
                v["id"].as_str().unwrap().to_owned(),
                v["deleted"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every line of stdout, parsed as JSON.
fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The one line of stdout, parsed as JSON.
fn json_line(o: &Output) -> Value {
    let mut lines = json_lines(o);
    assert_eq!(lines.len(), 1, "one JSON line: {}", stdout(o));
    lines.remove(0)
}

fn fresh_ns() -> Namespace {
    Namespace::new(&format!("clitest-{}", &SessionId::generate().as_str()[..12])).unwrap()
}

struct Sqlite {
    _dir: TempDir,
    url: String,
}

fn sqlite() -> Sqlite {
    let dir = TempDir::new("cli").unwrap();
    let url = format!("sqlite://{}", dir.path().join("sessions.db").display());
    Sqlite { _dir: dir, url }
}

/// A fresh SQLite store and a fresh namespace.
async fn sqlite_store() -> (Sqlite, Arc<dyn SessionStore>, Namespace) {
    let db = sqlite();
    let store = cloakroom::open(&db.url).await.unwrap();
    (db, store, fresh_ns())
}

/// The store on `server` and its URL, or `None` (after a `SKIPPED` line)
/// if the server is down and backends are not required.
async fn server(server: Server) -> Option<(Arc<dyn SessionStore>, String)> {
    let url = server.url();
    let opened = match tokio::time::timeout(Duration::from_secs(10), cloakroom::open(&url)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(e)) => Err(server.unreachable(e)),
        Err(_) => Err(server.unreachable("timed out")),
    };
    support::skip_or_fail(opened).map(|store| (store, url))
}

fn data_with(hits: u64) -> SessionData {
    let mut d = SessionData::new();
    d.insert("hits", &hits).unwrap();
    d.insert("user", "zoë").unwrap();
    d.insert("cart", &vec![("sku-1", 2u32), ("sku-2", 1u32)]).unwrap();
    d
}

fn write(data: &[u8], ttl_secs: i64) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: Timestamp::from_millis(now.as_millis() - 5_000),
        accessed: Timestamp::from_millis(now.as_millis() - 1_000),
        expires: Timestamp::from_millis(now.as_millis() + ttl_secs * 1000),
        principal: None,
    }
}

/// Create `n` live sessions (distinct data) in `ns`; returns their ids.
async fn create_many(store: &Arc<dyn SessionStore>, ns: &Namespace, n: usize) -> BTreeSet<String> {
    futures::stream::iter(0..n)
        .map(|i| {
            let (store, ns) = (Arc::clone(store), ns.clone());
            async move {
                let id = SessionId::generate();
                let bytes = data_with(i as u64).encode();
                store
                    .create(&SessionKey::new(ns, id.clone()), write(&bytes, 3600))
                    .await
                    .unwrap();
                id.as_str().to_owned()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await
}

async fn delete_all(store: &Arc<dyn SessionStore>, ns: &Namespace) {
    let ids: Vec<SessionId> = cloakroom::list_ids(store.as_ref(), ns, 1000)
        .try_collect()
        .await
        .unwrap();
    futures::stream::iter(ids)
        .map(|id| {
            let store = Arc::clone(store);
            let key = SessionKey::new(ns.clone(), id);
            async move { store.delete(&key).await.unwrap() }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

#[test]
fn usage_errors_exit_2() {
    let db = sqlite();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["frobnicate"],
        vec!["show", "--store", &db.url, "not-an-id"],
        vec!["show", "--store", &db.url, "../../etc/passwd"],
        vec!["rm", "--store", &db.url],
        vec!["ls", "--store", &db.url, "--namespace", "a/b"],
        vec!["gc", "--store", &db.url, "--batch", "0"],
        // gc prints no ids and migrate copies them as stored.
        vec!["gc", "--store", &db.url, "--hash-ids"],
        vec!["migrate", "--from", &db.url, "--to", "memory:", "--hash-ids"],
        vec!["ls"],
        vec!["bench", "--store", &db.url, "--mode", "sideways"],
        vec!["migrate", "--from", &db.url],
    ];
    for args in cases {
        let o = cloakroom(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}");
    }
    let o = cloakroom(&["show", "--store", &db.url, "not-an-id"]);
    assert!(stderr(&o).contains("invalid session id"), "{}", stderr(&o));
}

#[test]
fn store_url_falls_back_to_the_environment_and_errors_exit_1() {
    let db = sqlite();
    let o = cloakroom_with_env(&["gc"], &[("CLOAKROOM_STORE", &db.url)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "deleted 0, remaining 0");
    let o = cloakroom(&["ls", "--store", "ftp://nowhere"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).starts_with("error:"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn ls_lists_exactly_what_was_created() {
    let (db, store, ns) = sqlite_store().await;
    let created = create_many(&store, &ns, 1234).await;
    // Neither another namespace's session nor an expired one may show up.
    create_many(&store, &fresh_ns(), 3).await;
    let expired = SessionKey::new(ns.clone(), SessionId::generate());
    store.create(&expired, write(b"x", -60)).await.unwrap();

    let o = in_ns("ls", &db.url, &ns, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("ID "), "{header}");
    for col in ["CREATED", "ACCESSED", "EXPIRES", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let listed: Vec<String> = lines
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(listed.len(), created.len(), "each id exactly once");
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), created);

    // JSON lines, and the lock probe sees a lock held by this process.
    let some_id = SessionId::parse(created.iter().next().unwrap()).unwrap();
    let held = store
        .lock(
            &SessionKey::new(ns.clone(), some_id.clone()),
            cloakroom::LockOptions::new(Duration::from_secs(30), Duration::from_secs(5)),
        )
        .await
        .unwrap();
    let o = in_ns("ls", &db.url, &ns, &["--json", "--locked"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), created.len());
    let locked: Vec<&str> = rows
        .iter()
        .filter(|r| r["locked"] == Value::Bool(true))
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(locked, vec![some_id.as_str()]);
    assert!(rows.iter().all(|r| r["size"].as_u64().unwrap() > 0));
    held.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn show_decodes_every_value_to_json_with_metadata() {
    let (db, store, ns) = sqlite_store().await;
    let id = SessionId::generate();
    let key = SessionKey::new(ns.clone(), id.clone());
    store
        .create(&key, write(&data_with(41).encode(), 3600))
        .await
        .unwrap();

    let v = show_ok(&db.url, &ns, &[id.as_str()]);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["version"], 1);
    assert_eq!(v["data"]["hits"], 41);
    assert_eq!(v["data"]["user"], "zoë");
    assert_eq!(v["data"]["cart"], json!([["sku-1", 2], ["sku-2", 1]]));
    for field in ["created", "accessed", "expires"] {
        assert!(v[field].as_str().unwrap().ends_with('Z'), "{field}: {}", v[field]);
    }
    assert!(v.get("stored_hash").is_none(), "{v}");

    // Missing: an error, exit 1.
    let other = SessionId::generate();
    let o = in_ns("show", &db.url, &ns, &[other.as_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no live session"), "{}", stderr(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn show_on_a_corrupt_record_reports_it_and_exits_1() {
    let (db, store, ns) = sqlite_store().await;
    // A pickle where a record should be, and a valid header over a truncated body.
    let cases: [&[u8]; 3] = [b"\x80\x04\x95pickle", b"CLK\x01\xdd\xff\xff\xff\xff", b""];
    for bytes in cases {
        let id = SessionId::generate();
        store
            .create(&SessionKey::new(ns.clone(), id.clone()), write(bytes, 3600))
            .await
            .unwrap();
        let o = in_ns("show", &db.url, &ns, &[id.as_str()]);
        assert_eq!(o.status.code(), Some(1), "{bytes:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
        let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert!(v["corrupt"].is_string());
    }
}

/// base64url ids may start with '-' (one in 64): `show` and `rm` must take
/// them as ids, not as unknown flags.
#[tokio::test(flavor = "multi_thread")]
async fn ids_starting_with_a_hyphen_are_ids_not_flags() {
    let (db, store, ns) = sqlite_store().await;
    let id = SessionId::parse(&format!("-{}", "A".repeat(42))).unwrap();
    let mut data = cloakroom::SessionData::new();
    data.insert("n", &7u8).unwrap();
    store
        .create(
            &SessionKey::new(ns.clone(), id.clone()),
            write(&data.encode(), 3600),
        )
        .await
        .unwrap();
    assert_eq!(show_ok(&db.url, &ns, &[id.as_str()])["id"], id.as_str());
    let rm = in_ns("rm", &db.url, &ns, &[id.as_str()]);
    assert_eq!(rm.status.code(), Some(0), "{}", stderr(&rm));
    assert_eq!(store.load(&SessionKey::new(ns, id)).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_deletes_and_reports_missing_ids() {
    let (db, store, ns) = sqlite_store().await;
    let ids: Vec<String> = create_many(&store, &ns, 3).await.into_iter().collect();
    let o = in_ns("rm", &db.url, &ns, &[&ids[0], &ids[1]]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(store.count(&ns).await.unwrap(), 1);
    // Deleting one that is gone: the others are still deleted, exit 1.
    let o = in_ns("rm", &db.url, &ns, &[&ids[0], &ids[2]]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&ids[0]), "{}", stderr(&o));
    assert_eq!(store.count(&ns).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rm_json_prints_a_line_per_id_in_order_then_exits_1_if_one_was_missing() {
    let (db, store, ns) = sqlite_store().await;
    let ids: Vec<String> = create_many(&store, &ns, 3).await.into_iter().collect();
    let gone = SessionId::generate();
    let o = in_ns("rm", &db.url, &ns, &["--json", &ids[0], gone.as_str(), &ids[1]]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        json_lines(&o),
        vec![
            json!({"id": ids[0], "deleted": true}),
            json!({"id": gone.as_str(), "deleted": false}),
            json!({"id": ids[1], "deleted": true}),
        ]
    );
    assert!(
        stderr(&o).contains("1 of 3 sessions were not found"),
        "{}",
        stderr(&o)
    );
    assert_eq!(store.count(&ns).await.unwrap(), 1);
    // All found: exit 0.
    let o = in_ns("rm", &db.url, &ns, &["--json", &ids[2]]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(json_line(&o), json!({"id": ids[2], "deleted": true}));
    assert_eq!(store.count(&ns).await.unwrap(), 0);
}

/// Sessions written by a `Manager` with `hash_ids` are stored under the
/// hash of their id: `show` and `rm` find them by the cookie's id only with
/// `--hash-ids` (or `CLOAKROOM_HASH_IDS=true`), and `ls` says it lists hashes.
#[tokio::test(flavor = "multi_thread")]
async fn hashed_ids_are_found_by_the_cookie_id_with_hash_ids_only() {
    let (db, store, ns) = sqlite_store().await;
    let manager = Manager::builder(Arc::clone(&store), ns.clone())
        .hash_ids(true)
        .build()
        .unwrap();
    let mut cookies = Vec::new();
    for hits in [5u64, 6] {
        let mut session = manager.open(None).await.unwrap();
        session.insert("hits", &hits).unwrap();
        cookies.push(session.id().clone());
        session.commit().await.unwrap();
    }
    let (a, b) = (cookies[0].as_str(), cookies[1].as_str());
    // The store holds hashes, not cookie ids.
    let plain = SessionKey::new(ns.clone(), cookies[0].clone());
    assert_eq!(store.load(&plain).await.unwrap(), None);
    assert_eq!(store.count(&ns).await.unwrap(), 2);

    // show: the cookie id works only with the flag or the variable.
    let o = in_ns("show", &db.url, &ns, &[a]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("no live session"), "{}", stderr(&o));
    let v = show_ok(&db.url, &ns, &["--hash-ids", a]);
    assert_eq!(v["id"], a);
    assert_eq!(v["stored_hash"], cookies[0].hashed().as_str());
    assert_eq!(v["data"]["hits"], 5);
    let show_env = |value: &str| {
        let args = ["show", "--store", &db.url, "--namespace", ns.as_str(), b];
        cloakroom_with_env(&args, &[("CLOAKROOM_HASH_IDS", value)])
    };
    let o = show_env("true");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"]["hits"],
        6
    );
    let o = show_env("false");
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no live session"), "{}", stderr(&o));
    assert_eq!(show_env("maybe").status.code(), Some(2));
    // A stored hash is a store key: it needs no flag.
    let v = show_ok(&db.url, &ns, &[cookies[1].hashed().as_str()]);
    assert_eq!(v["data"]["hits"], 6);

    // ls labels what it lists as the stored hashes.
    let hashes: BTreeSet<String> = cookies.iter().map(|c| c.hashed().as_str().to_owned()).collect();
    let o = in_ns("ls", &db.url, &ns, &["--hash-ids"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("STORED HASH "), "{header}");
    let listed: BTreeSet<String> = lines
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(listed, hashes);
    let o = in_ns("ls", &db.url, &ns, &["--hash-ids", "--json"]);
    let rows = json_lines(&o);
    assert!(rows.iter().all(|r| r.get("id").is_none()), "{rows:?}");
    let listed: BTreeSet<String> = rows
        .iter()
        .map(|r| r["stored_hash"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, hashes);

    // rm: without the flag the cookie id is not found and nothing goes.
    let o = in_ns("rm", &db.url, &ns, &[a]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("no live session"), "{}", stderr(&o));
    let lines = rm_json(&db.url, &ns, &[a, b], 1);
    assert_eq!(lines, [(a.to_owned(), false), (b.to_owned(), false)]);
    assert_eq!(store.count(&ns).await.unwrap(), 2);
    // With it, the cookie id deletes the session.
    let o = in_ns("rm", &db.url, &ns, &["--hash-ids", a]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(manager.open_read_only(&cookies[0]).await.unwrap().is_none());
    assert!(manager.open_read_only(&cookies[1]).await.unwrap().is_some());
    let lines = rm_json(&db.url, &ns, &["--hash-ids", b, a], 1);
    assert_eq!(lines, [(b.to_owned(), true), (a.to_owned(), false)]);
    assert_eq!(store.count(&ns).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn rekey_reseals_old_and_plain_records_with_the_first_key() {
    let (db, store, ns) = sqlite_store().await;
    let (old, new) = (Key::generate(), Key::generate());
    let manager = |keyring: Option<Keyring>| {
        let builder = Manager::builder(Arc::clone(&store), ns.clone());
        match keyring {
            Some(ring) => builder.keyring(ring),
            None => builder,
        }
        .build()
        .unwrap()
    };
    // Two sessions sealed with the old key, one written before encryption.
    let mut ids = Vec::new();
    for keyring in [
        Some(Keyring::new(old.clone())),
        Some(Keyring::new(old.clone())),
        None,
    ] {
        let mut session = manager(keyring).open(None).await.unwrap();
        session.insert("marker", "pelican-under-glass").unwrap();
        ids.push(session.id().clone());
        session.commit().await.unwrap();
    }
    let keys = format!("{},{}", new.to_base64(), old.to_base64());
    let env = [("CLOAKROOM_KEYS", keys.as_str())];
    let rekey = || {
        let o = cloakroom_with_env(
            &["rekey", "--store", &db.url, "--namespace", ns.as_str(), "--json"],
            &env,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        json_line(&o)
    };
    assert_eq!(
        rekey(),
        json!({"resealed": 3, "current": 0, "vanished": 0, "unreadable": 0})
    );
    assert_eq!(
        rekey(),
        json!({"resealed": 0, "current": 3, "vanished": 0, "unreadable": 0}),
        "idempotent"
    );

    // Everything opens with the new key alone now, and nothing is in clear.
    let reader = manager(Some(Keyring::new(new.clone())));
    for id in &ids {
        let raw = store.load(&reader.key(id)).await.unwrap().unwrap().data;
        assert!(
            !raw.windows(7).any(|w| w == b"pelican"),
            "a value is stored in clear"
        );
        let session = reader.open_read_only(id).await.unwrap().unwrap();
        assert_eq!(
            session.get::<String>("marker").unwrap().as_deref(),
            Some("pelican-under-glass")
        );
        let only_new = [("CLOAKROOM_KEYS", new.to_base64())];
        let env: Vec<(&str, &str)> = only_new.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let o = cloakroom_with_env(
            &[
                "show",
                "--store",
                &db.url,
                "--namespace",
                ns.as_str(),
                id.as_str(),
            ],
            &env,
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(
            serde_json::from_str::<Value>(&stdout(&o)).unwrap()["data"]["marker"],
            json!("pelican-under-glass")
        );
    }
    // Without the key, show reports the record as unreadable and exits 1.
    let o = in_ns("show", &db.url, &ns, &[ids[0].as_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stderr(&o).contains("sealed"), "{}", stderr(&o));

    // A key that opens nothing: rekey lists the sessions and fails.
    let wrong = Key::generate().to_base64();
    let o = cloakroom_with_env(
        &["rekey", "--store", &db.url, "--namespace", ns.as_str(), "--json"],
        &[("CLOAKROOM_KEYS", wrong.as_str())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(json_line(&o)["unreadable"], json!(3));
    // A malformed key is a usage error, and rekey without keys says what it needs.
    assert_eq!(
        in_ns("rekey", &db.url, &ns, &["--key", "not-a-key"])
            .status
            .code(),
        Some(2)
    );
    let o = in_ns("rekey", &db.url, &ns, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("--key"), "{}", stderr(&o));
}

#[test]
fn help_documents_hash_ids_and_the_json_fields() {
    let help = |command: &str| {
        let o = cloakroom(&[command, "--help"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };
    // Whether the command takes the option (its line in the option list).
    let takes_hash_ids = |text: &str| text.lines().any(|l| l.trim_start().starts_with("--hash-ids"));
    for command in ["ls", "show", "rm"] {
        let text = help(command);
        assert!(takes_hash_ids(&text), "{command}: {text}");
        assert!(text.contains("CLOAKROOM_HASH_IDS"), "{command}: {text}");
    }
    for command in ["gc", "migrate"] {
        assert!(!takes_hash_ids(&help(command)), "{command}");
    }
    assert!(help("migrate").contains("Ids are copied as stored"));
    let fields = [
        ("gc", &["\"deleted\"", "\"remaining\"", "\"seconds\""][..]),
        ("rm", &["\"id\"", "\"deleted\""]),
        (
            "migrate",
            &["\"copied\"", "\"skipped\"", "\"replaced\"", "\"vanished\""],
        ),
    ];
    for (command, fields) in fields {
        let text = help(command);
        for field in fields {
            assert!(text.contains(field), "{command} --help lacks {field}: {text}");
        }
    }
}

async fn gc_counts_exactly(url: &str, store: Arc<dyn SessionStore>) {
    let ns = fresh_ns();
    let live = create_many(&store, &ns, 12).await;
    let expire = |n: usize| {
        let (store, ns) = (Arc::clone(&store), ns.clone());
        async move {
            for _ in 0..n {
                let key = SessionKey::new(ns.clone(), SessionId::generate());
                store.create(&key, write(b"old", -60)).await.unwrap();
            }
        }
    };
    expire(37).await;
    let o = in_ns("gc", url, &ns, &["--batch", "5"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let natively = store.capabilities().expires_natively;
    let expected = if natively { 0 } else { 37 };
    assert_eq!(stdout(&o).trim(), format!("deleted {expected}, remaining 12"));
    let o = in_ns("gc", url, &ns, &[]);
    assert_eq!(stdout(&o).trim(), "deleted 0, remaining 12");
    // The same counts as one JSON line.
    expire(9).await;
    let o = in_ns("gc", url, &ns, &["--batch", "4", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = json_line(&o);
    assert_eq!(v["deleted"], if natively { 0 } else { 9 }, "{v}");
    assert_eq!(v["remaining"], 12, "{v}");
    assert!(v["seconds"].as_f64().unwrap() >= 0.0, "{v}");
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    assert_eq!(store.count(&ns).await.unwrap(), live.len() as u64);
    delete_all(&store, &ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_counts_exactly_on_sqlite() {
    let db = sqlite();
    let store = cloakroom::open(&db.url).await.unwrap();
    gc_counts_exactly(&db.url, store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_counts_exactly_on_postgres() {
    let Some((store, url)) = server(Server::Postgres).await else {
        return;
    };
    gc_counts_exactly(&url, store).await;
}

/// Every live session of `ns` in `a` is in `b` with identical data and times.
async fn assert_same_sessions(a: &Arc<dyn SessionStore>, b: &Arc<dyn SessionStore>, ns: &Namespace, n: u64) {
    assert_eq!(b.count(ns).await.unwrap(), n);
    let ids: Vec<SessionId> = cloakroom::list_ids(a.as_ref(), ns, 1000)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids.len() as u64, n);
    futures::stream::iter(ids)
        .map(|id| async move {
            let key = SessionKey::new(ns.clone(), id);
            let (x, y) = (
                a.load(&key).await.unwrap().unwrap(),
                b.load(&key).await.unwrap().unwrap(),
            );
            assert_eq!(
                (x.data, x.created, x.accessed, x.expires),
                (y.data, y.created, y.accessed, y.expires)
            );
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

fn migrate_output(from: &str, to: &str, ns: &Namespace, extra: &[&str]) -> Output {
    let mut args = vec!["migrate", "--from", from, "--to", to, "--namespace", ns.as_str()];
    args.extend_from_slice(extra);
    let o = cloakroom(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    o
}

/// `migrate`'s summary line.
fn migrate(from: &str, to: &str, ns: &Namespace, extra: &[&str]) -> String {
    stdout(&migrate_output(from, to, ns, extra)).trim().to_owned()
}

/// `migrate --json`: its counts as (copied, skipped, replaced, vanished).
fn migrate_json(from: &str, to: &str, ns: &Namespace, extra: &[&str]) -> (u64, u64, u64, u64) {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let v = json_line(&migrate_output(from, to, ns, &args));
    assert_eq!(v.as_object().unwrap().len(), 4, "{v}");
    let count = |field: &str| v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"));
    (
        count("copied"),
        count("skipped"),
        count("replaced"),
        count("vanished"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_round_trips_10000_sessions_sqlite_postgres_redis_and_back() {
    const N: usize = 10_000;
    let Some((pg, postgres)) = server(Server::Postgres).await else {
        return;
    };
    let redis = server(Server::Redis).await;
    let (src_db, back_db) = (sqlite(), sqlite());
    let src = cloakroom::open(&src_db.url).await.unwrap();
    let ns = fresh_ns();
    create_many(&src, &ns, N).await;

    let copied = format!("copied {N}, replaced 0, skipped 0");
    assert!(migrate(&src_db.url, &postgres, &ns, &[]).starts_with(&copied));
    assert_same_sessions(&src, &pg, &ns, N as u64).await;
    // Idempotent: a second run copies nothing and changes nothing.
    let again = migrate(&src_db.url, &postgres, &ns, &[]);
    assert!(
        again.starts_with(&format!("copied 0, replaced 0, skipped {N}")),
        "{again}"
    );
    assert_eq!(
        migrate_json(&src_db.url, &postgres, &ns, &[]),
        (0, N as u64, 0, 0)
    );
    assert_same_sessions(&src, &pg, &ns, N as u64).await;

    // Then on to Redis (when it is up) and back to a fresh SQLite file.
    let last = match &redis {
        Some((redis, redis_url)) => {
            assert!(migrate(&postgres, redis_url, &ns, &[]).starts_with(&copied));
            assert_same_sessions(&src, redis, &ns, N as u64).await;
            redis_url
        }
        None => &postgres,
    };
    assert_eq!(migrate_json(last, &back_db.url, &ns, &[]), (N as u64, 0, 0, 0));
    let back = cloakroom::open(&back_db.url).await.unwrap();
    assert_same_sessions(&src, &back, &ns, N as u64).await;

    delete_all(&pg, &ns).await;
    if let Some((redis, _)) = &redis {
        delete_all(redis, &ns).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_overwrite_replaces_live_targets_deterministically() {
    let (a, b) = (sqlite(), sqlite());
    let (sa, sb) = (
        cloakroom::open(&a.url).await.unwrap(),
        cloakroom::open(&b.url).await.unwrap(),
    );
    let ns = fresh_ns();
    let ids = create_many(&sa, &ns, 20).await;
    // The target already holds other data under one of the ids.
    let clash = SessionKey::new(ns.clone(), SessionId::parse(ids.iter().next().unwrap()).unwrap());
    sb.create(&clash, write(&data_with(999).encode(), 3600))
        .await
        .unwrap();
    let out = migrate(&a.url, &b.url, &ns, &[]);
    assert!(out.starts_with("copied 19, replaced 0, skipped 1"), "{out}");
    assert_eq!(migrate_json(&a.url, &b.url, &ns, &[]), (0, 20, 0, 0));
    let out = migrate(&a.url, &b.url, &ns, &["--overwrite"]);
    assert!(out.starts_with("copied 0, replaced 20, skipped 0"), "{out}");
    assert_eq!(migrate_json(&a.url, &b.url, &ns, &["--overwrite"]), (0, 0, 20, 0));
    assert_same_sessions(&sa, &sb, &ns, 20).await;
}

fn bench_json(url: &str, extra: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "bench",
        "--store",
        url,
        "--json",
        "--sessions",
        "50",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--concurrency",
        "1,4",
        "--cycles",
        "120",
        "--contention-tasks",
        "8",
        "--processes",
        "2",
        "--tasks-per-process",
        "4",
    ];
    args.extend_from_slice(extra);
    let o = cloakroom(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json_lines(&o);
    for r in &rows {
        for field in [
            "backend",
            "mode",
            "policy",
            "concurrency",
            "cycles_per_sec",
            "p50_us",
            "p99_us",
            "lost_updates",
        ] {
            assert!(!r[field].is_null(), "{field} missing in {r}");
        }
    }
    rows
}

fn assert_serialized_loses_nothing(rows: &[Value], backend: &str, modes: &[&str]) {
    let seen: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    for mode in modes {
        assert!(seen.contains(mode), "no {mode} result in {rows:?}");
    }
    for r in rows {
        assert_eq!(r["backend"], backend);
        if r["policy"] == "serialized" {
            assert_eq!(r["lost_updates"], 0, "{r}");
        }
        if r["mode"] != "spread" && r["mode"] != "burst" {
            assert_eq!(r["cycles"], 120, "{r}");
        }
        assert!(r["cycles_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn bench_json_parses_and_serialized_loses_no_update_on_sqlite() {
    let db = sqlite();
    let rows = bench_json(&db.url, &["--policy", "serialized,optimistic"]);
    assert_eq!(
        rows.len(),
        2 * 6,
        "2 policies × (2 spread + 2 burst + contention + processes)"
    );
    assert_serialized_loses_nothing(&rows, "sqlite", &["spread", "burst", "contention", "processes"]);
    // Optimistic retries conflicts instead of losing them.
    assert!(rows.iter().all(|r| r["lost_updates"] == 0), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bench_json_parses_and_serialized_loses_no_update_on_postgres() {
    let Some((_, url)) = server(Server::Postgres).await else {
        return;
    };
    let rows = tokio::task::spawn_blocking(move || bench_json(&url, &[]))
        .await
        .unwrap();
    assert_serialized_loses_nothing(&rows, "postgres", &["spread", "burst", "contention", "processes"]);
}

#[test]
fn bench_on_the_memory_store_skips_the_processes_mode() {
    let rows = bench_json("memory:", &[]);
    assert_serialized_loses_nothing(&rows, "memory", &["spread", "burst", "contention"]);
    assert!(rows.iter().all(|r| r["mode"] != "processes"));
}

/// `bench --mode sweep --json` with `n` sessions: its one row, checked to
/// have created and then swept exactly `n`, leaving none.
fn bench_sweep(url: &str, backend: &str, n: usize) -> Value {
    let n_text = n.to_string();
    let o = cloakroom(&[
        "bench",
        "--store",
        url,
        "--mode",
        "sweep",
        "--sweep-sessions",
        &n_text,
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let rows = json_lines(&o);
    assert_eq!(rows.len(), 1, "only the sweep runs: {rows:?}");
    let r = rows[0].clone();
    assert_eq!(r["mode"], "sweep", "{r}");
    assert_eq!(r["backend"], backend, "{r}");
    assert_eq!(r["created"], n, "{r}");
    assert_eq!(r["deleted"], n, "{r}");
    assert_eq!(r["remaining"], 0, "{r}");
    assert_eq!(r["left_behind"], 0, "{r}");
    assert!(r["deleted_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(!r["rss_growth_mib"].is_null(), "{r}");
    r
}

#[test]
fn bench_sweep_deletes_every_expired_session_on_memory() {
    bench_sweep("memory:", "memory", 2000);
    // The table names the mode and the counts.
    let o = cloakroom(&[
        "bench",
        "--store",
        "memory:",
        "--mode",
        "sweep",
        "--sweep-sessions",
        "300",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with("| memory"))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no memory row in {out}"));
    assert_eq!(&row[1..5], ["memory", "sweep", "300", "300"], "{row:?}");
    assert_eq!(
        &row[8..10],
        ["0", "0"],
        "remaining, left for a 2nd sweep: {row:?}"
    );
}

#[test]
fn bench_sweep_deletes_every_expired_session_on_sqlite() {
    let db = sqlite();
    bench_sweep(&db.url, "sqlite", 2000);
}

/// `bench --json` with `args`: every line parsed.
fn bench_rows(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let o = cloakroom(&all);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    json_lines(&o)
}

/// `bench --mode burst` on `url`, Serialized and Optimistic: one row per
/// policy, cycles measured, no update lost (Optimistic retries conflicts).
fn bench_burst(url: &str, backend: &str) {
    let rows = bench_rows(&[
        "--store",
        url,
        "--mode",
        "burst",
        "--policy",
        "serialized,optimistic",
        "--sessions",
        "20",
        "--concurrency",
        "3",
        "--burst",
        "6",
        "--duration",
        "400ms",
        "--warmup",
        "100ms",
    ]);
    assert_eq!(rows.len(), 2, "one burst row per policy: {rows:?}");
    for r in &rows {
        assert_eq!(r["mode"], "burst", "{r}");
        assert_eq!(r["backend"], backend, "{r}");
        assert_eq!(r["concurrency"], 3, "{r}");
        assert_eq!(r["burst"], 6, "{r}");
        assert_eq!(r["sessions"], 20, "{r}");
        assert!(r["cycles"].as_u64().unwrap() > 0, "{r}");
        assert!(r["cycles_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        assert!(
            r["p50_us"].as_u64().unwrap() <= r["p99_us"].as_u64().unwrap(),
            "{r}"
        );
        assert_eq!(r["lost_updates"], 0, "{r}");
    }
    assert_eq!(rows[0]["policy"], "serialized");
}

#[test]
fn bench_burst_loses_no_update_on_memory() {
    bench_burst("memory:", "memory");
}

#[test]
fn bench_burst_loses_no_update_on_sqlite() {
    let db = sqlite();
    bench_burst(&db.url, "sqlite");
}

/// `bench --mode handoff` on `url`: a row per variant (one process, and two
/// where the store is shared), each with a hand-off p50 and nothing lost.
fn bench_handoff(url: &str, processes: &[u64]) {
    let rows = bench_rows(&["--store", url, "--mode", "handoff", "--handoffs", "200"]);
    let seen: Vec<u64> = rows.iter().map(|r| r["processes"].as_u64().unwrap()).collect();
    assert_eq!(seen, processes, "{rows:?}");
    for r in &rows {
        assert_eq!(r["mode"], "handoff", "{r}");
        assert_eq!(r["policy"], "serialized", "{r}");
        // Roughly 200: the last turns may add one or two.
        let n = r["cycles"].as_u64().unwrap();
        assert!((150..=210).contains(&n), "{n} hand-offs: {r}");
        let (p50, p99) = (r["p50_us"].as_u64().unwrap(), r["p99_us"].as_u64().unwrap());
        assert!(p50 > 0 && p50 <= p99, "{r}");
        assert_eq!(r["lost_updates"], 0, "{r}");
    }
}

#[test]
fn bench_handoff_reports_a_latency_on_memory() {
    bench_handoff("memory:", &[1]);
}

#[test]
fn bench_handoff_reports_a_latency_on_sqlite_in_one_and_two_processes() {
    let db = sqlite();
    bench_handoff(&db.url, &[1, 2]);
}

#[test]
fn bench_handoff_is_skipped_without_a_lock() {
    let rows = bench_rows(&[
        "--store",
        "memory:",
        "--mode",
        "handoff",
        "--policy",
        "lossy,optimistic",
        "--handoffs",
        "20",
    ]);
    assert!(rows.is_empty(), "{rows:?}");
}
