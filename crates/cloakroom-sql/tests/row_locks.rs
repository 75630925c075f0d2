//! Backend-specific tests of the row-lock stores, run on both servers: the
//! things the conformance suite cannot see from the trait (SQL injection
//! through the table name, killed connections, pool exhaustion, placeholder
//! rows, an unreachable server).

use std::future::Future;
use std::time::{Duration, Instant};

use cloakroom_core::{
    Error, LockGuard, LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore, Timestamp,
};
use cloakroom_sql::{Backend, MysqlStore, PostgresStore, RowLockStore, StoreConfig, TableName};

const TABLE: &str = "cloakroom_sql_tests";

/// What a test needs to reach behind the store's back.
trait Server: Backend {
    const DEFAULT_URL: &'static str;
    const URL_ENV: &'static str;
    const DOWN_URL: &'static str;
    /// End connection `id` from another connection, as an operator would.
    fn kill(store: &RowLockStore<Self>, id: i64) -> impl Future<Output = ()> + Send;
    /// Rows of any kind (placeholders too) in `namespace`.
    fn raw_rows(store: &RowLockStore<Self>, namespace: &Namespace) -> impl Future<Output = i64> + Send;
}

impl Server for cloakroom_sql::Postgres {
    const DEFAULT_URL: &'static str = "postgres://postgres@127.0.0.1:5432/test";
    const URL_ENV: &'static str = "CLOAKROOM_POSTGRES_URL";
    const DOWN_URL: &'static str = "postgres://postgres@127.0.0.1:1/test";

    async fn kill(store: &PostgresStore, id: i64) {
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1::int)")
            .bind(id)
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert!(killed);
    }

    async fn raw_rows(store: &PostgresStore, namespace: &Namespace) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {TABLE} WHERE namespace = $1"))
            .bind(namespace.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap()
    }
}

impl Server for cloakroom_sql::Mysql {
    const DEFAULT_URL: &'static str = "mysql://root@127.0.0.1:3306/test";
    const URL_ENV: &'static str = "CLOAKROOM_MYSQL_URL";
    const DOWN_URL: &'static str = "mysql://root@127.0.0.1:1/test";

    async fn kill(store: &MysqlStore, id: i64) {
        // KILL takes no parameters; the id is an integer the server gave us.
        sqlx::raw_sql(&format!("KILL {id}"))
            .execute(store.pool())
            .await
            .unwrap();
    }

    async fn raw_rows(store: &MysqlStore, namespace: &Namespace) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {TABLE} WHERE namespace = ?"))
            .bind(namespace.as_str())
            .fetch_one(store.pool())
            .await
            .unwrap()
    }
}

fn url<B: Server>() -> String {
    std::env::var(B::URL_ENV).unwrap_or_else(|_| B::DEFAULT_URL.to_owned())
}

async fn store_with<B: Server>(config: StoreConfig) -> RowLockStore<B> {
    let store = RowLockStore::<B>::connect_lazy(&url::<B>(), config).unwrap();
    store
        .migrate()
        .await
        .expect("server reachable (see CLOAKROOM_*_URL)");
    store
}

async fn store<B: Server>() -> RowLockStore<B> {
    store_with(StoreConfig {
        table: TableName::new(TABLE).unwrap(),
        ..StoreConfig::default()
    })
    .await
}

fn key() -> SessionKey {
    let ns = Namespace::new(&format!("t-{}", &SessionId::generate().as_str()[..12])).unwrap();
    SessionKey::new(ns, SessionId::generate())
}

fn write(data: &[u8]) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(Duration::from_secs(600)),
    }
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

async fn hostile_table_names_are_rejected_and_values_round_trip<B: Server>() {
    for bad in ["t; DROP TABLE x; --", "t'--", "t\"", "a.b", "x y"] {
        let url = format!(
            "{}?table={}",
            url::<B>(),
            bad.replace(' ', "%20").replace(';', "%3B")
        );
        let err = RowLockStore::<B>::from_url(&url).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?} gave {err:?}");
    }
    let good = RowLockStore::<B>::from_url(&format!("{}?table={TABLE}", url::<B>()))
        .await
        .unwrap();
    assert_eq!(good.config().table.as_str(), TABLE);

    let store = store::<B>().await;
    let k = key();
    let nasty = b"'; DROP TABLE cloakroom_sql_tests; -- \" \\ \0 $1 ? %s".to_vec();
    store.create(&k, write(&nasty)).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, nasty);
    let guard = store.lock(&k, opts(5_000, 1_000)).await.unwrap();
    let nastier = [nasty.clone(), b"\x00\xff--;".to_vec()].concat();
    guard.save_and_unlock(write(&nastier)).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, nastier);
}

async fn killed_holder_frees_the_session_and_gets_lease_lost<B: Server>() {
    let store = store::<B>().await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let holder = store.lock_row(&k, opts(30_000, 1_000)).await.unwrap();
    let pid = holder.connection_id().await.unwrap();

    let waiter = {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move {
            let guard = store.lock(&k, opts(10_000, 8_000)).await.unwrap();
            let got_it = Instant::now();
            guard.save_and_unlock(write(b"from the waiter")).await.unwrap();
            got_it
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the waiter must wait for the holder");
    let killed_at = Instant::now();
    B::kill(&store, pid).await;
    let got_it = waiter.await.unwrap();
    let handoff = got_it.saturating_duration_since(killed_at);
    assert!(handoff < Duration::from_secs(1), "hand-off took {handoff:?}");

    let late = Box::new(holder)
        .save_and_unlock(write(b"from the killed holder"))
        .await;
    assert!(matches!(late, Err(Error::LeaseLost)), "{late:?}");
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"from the waiter");
}

async fn exhausted_pool_fails_clearly_within_the_deadline<B: Server>() {
    let store = store_with::<B>(StoreConfig {
        table: TableName::new(TABLE).unwrap(),
        max_connections: 2,
        acquire_timeout: Duration::from_millis(500),
        ..StoreConfig::default()
    })
    .await;
    let (a, b, c) = (key(), key(), key());
    let _ga = store.lock(&a, opts(10_000, 1_000)).await.unwrap();
    let _gb = store.lock(&b, opts(10_000, 1_000)).await.unwrap();

    let started = Instant::now();
    let err = store.lock(&c, opts(10_000, 300)).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "{took:?}"
    );

    let started = Instant::now();
    let err = store.load(&c).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(took < Duration::from_millis(1_500), "{took:?}");
}

async fn placeholder_rows_are_invisible_and_removed_on_unlock<B: Server>() {
    let store = store::<B>().await;
    let k = key();
    let guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert!(guard.record().is_none());
    assert!(store.load(&k).await.unwrap().is_none());
    assert_eq!(store.count(&k.namespace).await.unwrap(), 0);
    assert!(store
        .list_ids(&k.namespace, None, 10)
        .await
        .unwrap()
        .ids
        .is_empty());
    let far_future = Timestamp::now().saturating_add(Duration::from_secs(3600));
    let swept = store
        .sweep_expired(&k.namespace, far_future, None, 10)
        .await
        .unwrap();
    assert!(swept.deleted.is_empty());
    guard.unlock().await.unwrap();
    assert_eq!(B::raw_rows(&store, &k.namespace).await, 0);

    // Lock, then create through the guard: a real record at version 1.
    let guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(guard.save_and_unlock(write(b"new")).await.unwrap(), 1);
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 1);
    assert_eq!(B::raw_rows(&store, &k.namespace).await, 1);
}

async fn unreachable_server_is_unavailable<B: Server>() {
    let store = RowLockStore::<B>::from_url(B::DOWN_URL).await.unwrap();
    let err = store.load(&key()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let err = store.lock(&key(), opts(1_000, 200)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::LockTimeout { .. }),
        "{err:?}"
    );
}

async fn sub_second_lock_wait_times_out_promptly<B: Server>() {
    let store = store::<B>().await;
    let k = key();
    let _held = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    for wait_ms in [50, 400, 1_300] {
        let started = Instant::now();
        let err = store.lock(&k, opts(1_000, wait_ms)).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, Error::LockTimeout { .. }), "{err:?}");
        let wait = Duration::from_millis(wait_ms);
        assert!(
            took >= wait && took < wait + Duration::from_millis(250),
            "wait {wait:?} took {took:?}"
        );
    }
}

/// A held row lock must not stall writes to *other* sessions of the same
/// namespace. In a namespace of a row or two, MariaDB chose the (namespace,
/// expires) index for point statements, so creating a new id (cycle_id at
/// login) scanned into the held row and waited out the holder's lease.
async fn a_held_lock_does_not_block_other_sessions_of_its_namespace<B: Server>() {
    // The optimizer's choice follows the table's statistics, so this runs on
    // the default table, where the stall was seen.
    let store = store_with::<B>(StoreConfig::default()).await;
    let held = key();
    store.create(&held, write(b"held")).await.unwrap();
    let guard = store.lock(&held, opts(30_000, 1_000)).await.unwrap();

    let other = SessionKey::new(held.namespace.clone(), SessionId::generate());
    let bound = Duration::from_secs(5);
    let writes = async {
        store.create(&other, write(b"new")).await.unwrap();
        assert!(store
            .touch(&other, Timestamp::now(), write(b"").expires)
            .await
            .unwrap());
        assert_eq!(store.save(&other, write(b"v2"), Some(1)).await.unwrap(), 2);
        assert!(store.load(&other).await.unwrap().is_some());
        assert!(store.delete(&other).await.unwrap());
    };
    let started = Instant::now();
    tokio::time::timeout(bound, writes).await.unwrap_or_else(|_| {
        panic!(
            "writes to another session waited {:?} on a held lock",
            started.elapsed()
        )
    });
    guard.unlock().await.unwrap();
}

/// `migrate()` on a live table (a new application instance starting, every
/// test opening a store) must not stall traffic: on Postgres a no-op CREATE
/// INDEX IF NOT EXISTS queued a table lock behind held session locks, and
/// every new writer queued behind it until the holders' leases ran out.
async fn migrate_while_sessions_are_locked_does_not_stall_writers<B: Server>() {
    let store = store_with::<B>(StoreConfig::default()).await;
    let held = key();
    let guard = store.lock(&held, opts(30_000, 1_000)).await.unwrap();
    let bound = Duration::from_secs(5);
    tokio::time::timeout(bound, store.migrate())
        .await
        .expect("migrate waited on a held session lock")
        .unwrap();
    let other = key();
    tokio::time::timeout(bound, store.create(&other, write(b"new")))
        .await
        .expect("a writer waited behind migrate")
        .unwrap();
    guard.save_and_unlock(write(b"held")).await.unwrap();
    assert!(store.delete(&other).await.unwrap());
}

macro_rules! on_both_servers {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<cloakroom_sql::Postgres>().await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test::<cloakroom_sql::Mysql>().await;
                }
            )*
        }
    };
}

on_both_servers!(
    hostile_table_names_are_rejected_and_values_round_trip,
    killed_holder_frees_the_session_and_gets_lease_lost,
    exhausted_pool_fails_clearly_within_the_deadline,
    placeholder_rows_are_invisible_and_removed_on_unlock,
    unreachable_server_is_unavailable,
    sub_second_lock_wait_times_out_promptly,
    a_held_lock_does_not_block_other_sessions_of_its_namespace,
    migrate_while_sessions_are_locked_does_not_stall_writers,
);
