//! Backend-specific tests of the row-lock stores, run on both servers: the
//! things the conformance suite cannot see from the trait (SQL injection
//! through the table name, killed connections, pool exhaustion, placeholder
//! rows, an unreachable server), the row-lock meaning of `Then::Keep`, the
//! upgrade of a table made before principals, rotation inside the locking
//! transaction, and the round trips of one lock cycle.
#![cfg(all(feature = "postgres", feature = "mysql"))]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_conformance::support::{skip_or_fail, Server};
use cloakroom_core::{
    Error, Finish, Finished, LockGuard, LockOptions, Namespace, Principal, RecordWrite, SessionId,
    SessionKey, SessionStore, StoreUrl, Then, Timestamp,
};
use cloakroom_sql::{MysqlLockGuard, MysqlStore, PostgresLockGuard, PostgresStore, SqlOptions, TableName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TABLE: &str = "cloakroom_sql_tests";

/// One of the two stores, as the tests below use it: its inherent methods,
/// and what a test needs to reach behind the store's back.
trait SqlStore: SessionStore + Clone + Sized + 'static {
    type Guard: HeldRow;
    /// The test server it runs on.
    const SERVER: Server;
    const DEFAULT_PORT: u16;
    /// A URL where no server listens.
    const DOWN_URL: &'static str;
    fn new(options: SqlOptions) -> cloakroom_core::Result<Self>;
    fn from_url(url: &str) -> cloakroom_core::Result<Self>;
    fn options(&self) -> &SqlOptions;
    fn lock_row(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> impl Future<Output = cloakroom_core::Result<Self::Guard>> + Send;
    /// End connection `id` from another connection, as an operator would.
    fn kill(&self, id: i64) -> impl Future<Output = ()> + Send;
    /// Rows of any kind (placeholders too) in `namespace`.
    fn raw_rows(&self, namespace: &Namespace) -> impl Future<Output = i64> + Send;
    /// Create `table` as this crate made it before principals existed.
    fn create_old_table(&self, table: &str) -> impl Future<Output = ()> + Send;
    /// Insert a record into an old-shaped `table`, as the old crate did.
    fn insert_old_row(
        &self,
        table: &str,
        key: &SessionKey,
        expires: Timestamp,
    ) -> impl Future<Output = ()> + Send;
    /// Drop `table`.
    fn drop_table(&self, table: &str) -> impl Future<Output = ()> + Send;
}

/// A store's own guard type.
trait HeldRow: LockGuard + 'static {
    fn connection_id(&self) -> impl Future<Output = cloakroom_core::Result<i64>> + Send;
}

impl SqlStore for PostgresStore {
    type Guard = PostgresLockGuard;
    const SERVER: Server = Server::Postgres;
    const DEFAULT_PORT: u16 = 5432;
    const DOWN_URL: &'static str = "postgres://postgres@127.0.0.1:1/test";

    fn new(options: SqlOptions) -> cloakroom_core::Result<Self> {
        PostgresStore::new(options)
    }

    fn from_url(url: &str) -> cloakroom_core::Result<Self> {
        PostgresStore::from_url(url)
    }

    fn options(&self) -> &SqlOptions {
        PostgresStore::options(self)
    }

    async fn lock_row(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> cloakroom_core::Result<PostgresLockGuard> {
        PostgresStore::lock_row(self, key, options).await
    }

    async fn kill(&self, id: i64) {
        let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1::int)")
            .bind(id)
            .fetch_one(self.pool())
            .await
            .unwrap();
        assert!(killed);
    }

    async fn raw_rows(&self, namespace: &Namespace) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {TABLE} WHERE namespace = $1"))
            .bind(namespace.as_str())
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    async fn create_old_table(&self, table: &str) {
        let ddl = format!(
            "CREATE TABLE {table} ( \
               namespace TEXT COLLATE \"C\" NOT NULL, \
               id TEXT COLLATE \"C\" NOT NULL, \
               data BYTEA NOT NULL, \
               version BIGINT NOT NULL, \
               created BIGINT NOT NULL, \
               accessed BIGINT NOT NULL, \
               expires BIGINT NOT NULL, \
               PRIMARY KEY (namespace, id)); \
             CREATE INDEX {table}_expires ON {table} (namespace, expires)"
        );
        sqlx::raw_sql(&ddl).execute(self.pool()).await.unwrap();
    }

    async fn insert_old_row(&self, table: &str, key: &SessionKey, expires: Timestamp) {
        let now = Timestamp::now().as_millis();
        sqlx::query(&format!(
            "INSERT INTO {table} (namespace, id, data, version, created, accessed, expires) \
             VALUES ($1, $2, $3, 1, $4, $4, $5)"
        ))
        .bind(key.namespace.as_str())
        .bind(key.id.as_str())
        .bind(b"old".to_vec())
        .bind(now)
        .bind(expires.as_millis())
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn drop_table(&self, table: &str) {
        sqlx::raw_sql(&format!("DROP TABLE {table}"))
            .execute(self.pool())
            .await
            .unwrap();
    }
}

impl HeldRow for PostgresLockGuard {
    async fn connection_id(&self) -> cloakroom_core::Result<i64> {
        PostgresLockGuard::connection_id(self).await
    }
}

impl SqlStore for MysqlStore {
    type Guard = MysqlLockGuard;
    const SERVER: Server = Server::Mysql;
    const DEFAULT_PORT: u16 = 3306;
    const DOWN_URL: &'static str = "mysql://root@127.0.0.1:1/test";

    fn new(options: SqlOptions) -> cloakroom_core::Result<Self> {
        MysqlStore::new(options)
    }

    fn from_url(url: &str) -> cloakroom_core::Result<Self> {
        MysqlStore::from_url(url)
    }

    fn options(&self) -> &SqlOptions {
        MysqlStore::options(self)
    }

    async fn lock_row(
        &self,
        key: &SessionKey,
        options: LockOptions,
    ) -> cloakroom_core::Result<MysqlLockGuard> {
        MysqlStore::lock_row(self, key, options).await
    }

    async fn kill(&self, id: i64) {
        // KILL takes no parameters; the id is an integer the server gave us.
        sqlx::raw_sql(&format!("KILL {id}"))
            .execute(self.pool())
            .await
            .unwrap();
    }

    async fn raw_rows(&self, namespace: &Namespace) -> i64 {
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {TABLE} WHERE namespace = ?"))
            .bind(namespace.as_str())
            .fetch_one(self.pool())
            .await
            .unwrap()
    }

    async fn create_old_table(&self, table: &str) {
        let ddl = format!(
            "CREATE TABLE {table} ( \
               namespace VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               data LONGBLOB NOT NULL, \
               version BIGINT NOT NULL, \
               created BIGINT NOT NULL, \
               accessed BIGINT NOT NULL, \
               expires BIGINT NOT NULL, \
               PRIMARY KEY (namespace, id), \
               KEY {table}_expires (namespace, expires) \
             ) ENGINE = InnoDB"
        );
        sqlx::raw_sql(&ddl).execute(self.pool()).await.unwrap();
    }

    async fn insert_old_row(&self, table: &str, key: &SessionKey, expires: Timestamp) {
        let now = Timestamp::now().as_millis();
        sqlx::query(&format!(
            "INSERT INTO {table} (namespace, id, data, version, created, accessed, expires) \
             VALUES (?, ?, ?, 1, ?, ?, ?)"
        ))
        .bind(key.namespace.as_str())
        .bind(key.id.as_str())
        .bind(b"old".to_vec())
        .bind(now)
        .bind(now)
        .bind(expires.as_millis())
        .execute(self.pool())
        .await
        .unwrap();
    }

    async fn drop_table(&self, table: &str) {
        sqlx::raw_sql(&format!("DROP TABLE {table}"))
            .execute(self.pool())
            .await
            .unwrap();
    }
}

impl HeldRow for MysqlLockGuard {
    async fn connection_id(&self) -> cloakroom_core::Result<i64> {
        MysqlLockGuard::connection_id(self).await
    }
}

/// The options of the test server's URL: the default table unless `table`
/// is given below.
fn options<S: SqlStore>() -> SqlOptions {
    SqlOptions::from_url(&StoreUrl::parse(&S::SERVER.url()).unwrap()).unwrap()
}

/// Whether the test server answers; if not, the test is skipped, or fails
/// when the run requires every backend.
async fn reachable<S: SqlStore>() -> bool {
    let server = S::SERVER;
    let open = async {
        let store = S::from_url(&server.url()).map_err(|e| server.unreachable(e))?;
        store.migrate().await.map_err(|e| server.unreachable(e))
    };
    skip_or_fail(open.await).is_some()
}

/// `url` with `key=value` added to its query (the test URLs may have one).
fn with_option(url: &str, pair: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{pair}")
}

async fn store_with<S: SqlStore>(options: SqlOptions) -> S {
    let store = S::new(options).unwrap();
    store.migrate().await.expect("server reachable");
    store
}

async fn store<S: SqlStore>() -> S {
    store_with(options::<S>().table(TableName::new(TABLE).unwrap())).await
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
        principal: None,
    }
}

/// A write of `data` for `principal`.
fn write_for(data: &[u8], principal: &Principal) -> RecordWrite {
    RecordWrite {
        principal: Some(principal.clone()),
        ..write(data)
    }
}

fn listed(summaries: Vec<cloakroom_core::SessionSummary>) -> Vec<SessionId> {
    summaries.into_iter().map(|s| s.id).collect()
}

fn opts(lease_ms: u64, wait_ms: u64) -> LockOptions {
    LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

async fn hostile_table_names_are_rejected_and_values_round_trip<S: SqlStore>() {
    for bad in ["t; DROP TABLE x; --", "t'--", "t\"", "a.b", "x y"] {
        let url = with_option(
            &S::SERVER.url(),
            &format!("table={}", bad.replace(' ', "%20").replace(';', "%3B")),
        );
        let err = S::from_url(&url).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?} gave {err:?}");
    }
    let good = S::from_url(&with_option(&S::SERVER.url(), &format!("table={TABLE}"))).unwrap();
    assert_eq!(good.options().table.as_str(), TABLE);

    let store = store::<S>().await;
    let k = key();
    let nasty = b"'; DROP TABLE cloakroom_sql_tests; -- \" \\ \0 $1 ? %s".to_vec();
    store.create(&k, write(&nasty)).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, nasty);
    let guard = store.lock(&k, opts(5_000, 1_000)).await.unwrap();
    let nastier = [nasty.clone(), b"\x00\xff--;".to_vec()].concat();
    guard.save_and_unlock(write(&nastier)).await.unwrap();
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, nastier);
}

async fn killed_holder_frees_the_session_and_gets_lease_lost<S: SqlStore>() {
    let store = store::<S>().await;
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
    store.kill(pid).await;
    let got_it = waiter.await.unwrap();
    let handoff = got_it.saturating_duration_since(killed_at);
    assert!(handoff < Duration::from_secs(1), "hand-off took {handoff:?}");

    let late = Box::new(holder)
        .save_and_unlock(write(b"from the killed holder"))
        .await;
    assert!(matches!(late, Err(Error::LeaseLost)), "{late:?}");
    assert_eq!(store.load(&k).await.unwrap().unwrap().data, b"from the waiter");
}

async fn exhausted_pool_fails_clearly_within_the_deadline<S: SqlStore>() {
    let store = store_with::<S>(
        options::<S>()
            .table(TableName::new(TABLE).unwrap())
            .max_connections(2)
            .acquire_timeout(Duration::from_millis(500)),
    )
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

async fn placeholder_rows_are_invisible_and_removed_on_unlock<S: SqlStore>() {
    let store = store::<S>().await;
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
    assert_eq!(store.raw_rows(&k.namespace).await, 0);

    // Lock, then create through the guard: a real record at version 1.
    let guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(guard.save_and_unlock(write(b"new")).await.unwrap(), 1);
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 1);
    assert_eq!(store.raw_rows(&k.namespace).await, 1);
}

async fn unreachable_server_is_unavailable<S: SqlStore>() {
    let store = S::from_url(S::DOWN_URL).unwrap();
    let err = store.load(&key()).await.unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    assert!(err.is_retryable());
    let err = store.lock(&key(), opts(1_000, 200)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. } | Error::LockTimeout { .. }),
        "{err:?}"
    );
}

async fn sub_second_lock_wait_times_out_promptly<S: SqlStore>() {
    let store = store::<S>().await;
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
async fn a_held_lock_does_not_block_other_sessions_of_its_namespace<S: SqlStore>() {
    // The optimizer's choice follows the table's statistics, so this runs on
    // the default table, where the stall was seen.
    let store = store_with::<S>(options::<S>()).await;
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
async fn migrate_while_sessions_are_locked_does_not_stall_writers<S: SqlStore>() {
    let store = store_with::<S>(options::<S>()).await;
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

fn save(data: &[u8]) -> Finish {
    Finish::Save(write(data))
}

/// The lock is free: another holder gets it at once.
async fn assert_free<S: SqlStore>(store: &S, k: &SessionKey) {
    let started = Instant::now();
    let guard = store.lock(k, opts(5_000, 2_000)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "the lock was still held: {:?}",
        started.elapsed()
    );
    guard.unlock().await.unwrap();
}

/// Two kept saves and a release: the release commits both, the last one
/// wins, and the guard's record follows every write so each save is
/// fenced against the one before.
async fn kept_saves_chain_and_a_release_commits_them<S: SqlStore>() {
    let store = store::<S>().await;
    assert!(!store.capabilities().durable_while_locked);
    let k = key();
    let created = store.create(&k, write(b"v1")).await.unwrap();
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();

    assert_eq!(
        guard.finish(save(b"a"), Then::Keep).await.unwrap(),
        Finished::Saved { version: 2 }
    );
    let record = guard.record().unwrap();
    assert_eq!((record.version, record.data.as_slice()), (2, &b"a"[..]));
    assert_eq!(record.created, created.created, "created is kept");
    assert_eq!(
        guard.finish(save(b"b"), Then::Keep).await.unwrap(),
        Finished::Saved { version: 3 }
    );
    assert_eq!(guard.record().unwrap().version, 3);
    assert_eq!(
        guard.finish(Finish::Nothing, Then::Keep).await.unwrap(),
        Finished::Nothing
    );

    assert_eq!(
        guard.finish(Finish::Nothing, Then::Release).await.unwrap(),
        Finished::Nothing
    );
    let loaded = store.load(&k).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.data.as_slice()), (3, &b"b"[..]));
    assert_eq!(loaded.created, created.created);
    let spent = guard.finish(Finish::Nothing, Then::Release).await;
    assert!(matches!(spent, Err(Error::LeaseLost)), "{spent:?}");
    assert_free(&store, &k).await;
}

/// Row-lock semantics: a kept write lives in the locking transaction, so
/// another connection's `load` sees the last committed version until the
/// release commits.
async fn a_kept_write_is_invisible_to_others_until_the_release<S: SqlStore>() {
    let store = store::<S>().await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(
        guard.finish(save(b"kept"), Then::Keep).await.unwrap(),
        Finished::Saved { version: 2 }
    );
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"v1"[..]));

    assert_eq!(
        guard.finish(save(b"released"), Then::Release).await.unwrap(),
        Finished::Saved { version: 3 }
    );
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (3, &b"released"[..]));
}

/// A release with nothing to write after a kept write must COMMIT, not
/// roll back: here a new session, created under the lock, must exist
/// afterwards (and its lock placeholder must not linger).
async fn a_release_with_nothing_commits_a_kept_write<S: SqlStore>() {
    let store = store::<S>().await;
    let k = key();
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert!(guard.record().is_none());
    assert_eq!(
        guard.finish(save(b"new"), Then::Keep).await.unwrap(),
        Finished::Saved { version: 1 }
    );
    assert!(
        store.load(&k).await.unwrap().is_none(),
        "visible before the commit"
    );
    guard.unlock().await.unwrap();
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"new"[..]));
    assert_eq!(store.raw_rows(&k.namespace).await, 1);
}

/// A lease that runs out during a chain: the next finish is `LeaseLost`
/// and nothing of the chain was written.
async fn a_lapsed_lease_loses_the_whole_chain<S: SqlStore>() {
    let store = store::<S>().await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let mut guard = store.lock(&k, opts(600, 1_000)).await.unwrap();
    guard.finish(save(b"a"), Then::Keep).await.unwrap();
    let (accessed, expires) = (Timestamp::now(), write(b"").expires);
    assert_eq!(
        guard
            .finish(Finish::Touch { accessed, expires }, Then::Keep)
            .await
            .unwrap(),
        Finished::Touched
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let late = guard.finish(save(b"late"), Then::Release).await;
    assert!(matches!(late, Err(Error::LeaseLost)), "{late:?}");
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"v1"[..]));
    let again = guard.finish(Finish::Nothing, Then::Release).await;
    assert!(matches!(again, Err(Error::LeaseLost)), "{again:?}");
    assert_free(&store, &k).await;
}

/// `Then::Keep` keeps the lease's deadline on the server too. A statement
/// restarts Postgres' idle-in-transaction timer, so without care a kept write
/// near the end of the lease would hold the row a whole lease longer.
async fn a_kept_write_does_not_extend_the_lease_on_the_server<S: SqlStore>() {
    let store = store::<S>().await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let lease = Duration::from_millis(1_500);
    let mut guard = store.lock(&k, opts(1_500, 1_000)).await.unwrap();
    let locked_at = Instant::now();
    let waiter = {
        let (store, k) = (store.clone(), k.clone());
        tokio::spawn(async move {
            let guard = store.lock(&k, opts(10_000, 8_000)).await.unwrap();
            let version = guard.record().map(|r| r.version);
            guard.unlock().await.unwrap();
            (Instant::now(), version)
        })
    };
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    guard.finish(save(b"kept"), Then::Keep).await.unwrap();
    // The holder goes quiet.
    let (got_it, version) = waiter.await.unwrap();
    let after = got_it.saturating_duration_since(locked_at);
    assert!(
        after >= lease - Duration::from_millis(50) && after < lease + Duration::from_millis(600),
        "the waiter got the lock {after:?} after it was taken, with a lease of {lease:?}"
    );
    assert_eq!(version, Some(1), "the unreleased kept write was rolled back");
    let late = guard.finish(Finish::Nothing, Then::Release).await;
    assert!(matches!(late, Err(Error::LeaseLost)), "{late:?}");
}

/// A kept delete leaves the row deleted inside the transaction (and still
/// locked): a later save under the same lock recreates the session at
/// version 1, and a touch then moves its expiry.
async fn a_kept_delete_then_save_recreates_the_session<S: SqlStore>() {
    let store = store::<S>().await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(
        guard.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: true }
    );
    assert!(guard.record().is_none());
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 1);
    assert_eq!(
        guard.finish(Finish::Delete, Then::Keep).await.unwrap(),
        Finished::Deleted { was_live: false }
    );
    let touch_gone = {
        // On a second session: a touch without a record is Gone, and the
        // failure rolls back that guard's kept delete.
        let other = key();
        store.create(&other, write(b"other")).await.unwrap();
        let mut g = store.lock(&other, opts(10_000, 1_000)).await.unwrap();
        g.finish(Finish::Delete, Then::Keep).await.unwrap();
        let (accessed, expires) = (Timestamp::now(), write(b"").expires);
        let out = g.finish(Finish::Touch { accessed, expires }, Then::Keep).await;
        assert!(
            store.load(&other).await.unwrap().is_some(),
            "the kept delete was rolled back"
        );
        assert_free(&store, &other).await;
        out
    };
    assert!(matches!(touch_gone, Err(Error::Gone)), "{touch_gone:?}");

    let reborn = write(b"reborn");
    let created = reborn.created;
    assert_eq!(
        guard.finish(Finish::Save(reborn), Then::Keep).await.unwrap(),
        Finished::Saved { version: 1 }
    );
    assert_eq!(guard.record().unwrap().created, created);
    let expires = Timestamp::now().saturating_add(Duration::from_secs(7_200));
    let accessed = Timestamp::now();
    assert_eq!(
        guard
            .finish(Finish::Touch { accessed, expires }, Then::Keep)
            .await
            .unwrap(),
        Finished::Touched
    );
    assert_eq!(guard.record().unwrap().expires, expires);
    guard.finish(Finish::Nothing, Then::Release).await.unwrap();
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"reborn"[..]));
    assert_eq!((seen.accessed, seen.expires), (accessed, expires));

    // A kept delete that a release commits.
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    guard.finish(Finish::Delete, Then::Keep).await.unwrap();
    guard.unlock().await.unwrap();
    assert!(store.load(&k).await.unwrap().is_none());
    assert_eq!(store.raw_rows(&k.namespace).await, 0);
}

/// A finish that fails after kept writes releases the lock, spends the
/// guard and writes nothing of the chain.
async fn a_failed_finish_rolls_back_the_kept_writes<S: SqlStore>() {
    let store = store_with::<S>(
        options::<S>()
            .table(TableName::new(TABLE).unwrap())
            .max_record_bytes(64),
    )
    .await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let mut guard = store.lock(&k, opts(10_000, 1_000)).await.unwrap();
    guard.finish(save(b"small"), Then::Keep).await.unwrap();
    let too_large = guard.finish(save(&[7; 100]), Then::Release).await;
    assert!(matches!(too_large, Err(Error::TooLarge { .. })), "{too_large:?}");
    let seen = store.load(&k).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"v1"[..]));
    let spent = guard.finish(Finish::Nothing, Then::Keep).await;
    assert!(matches!(spent, Err(Error::LeaseLost)), "{spent:?}");
    assert_free(&store, &k).await;
}

/// `lock` takes an idle connection without the pool's liveness ping (the
/// BEGIN round trip tests it). One that died while idle, killed here as a
/// server restart or an idle timeout would, must cost the lock nothing but a
/// fresh connection.
async fn a_lock_on_a_dead_idle_connection_takes_another<S: SqlStore>() {
    let operator = store::<S>().await;
    let store = store_with::<S>(
        options::<S>()
            .table(TableName::new(TABLE).unwrap())
            .max_connections(1),
    )
    .await;
    let k = key();
    store.create(&k, write(b"v1")).await.unwrap();
    let guard = store.lock_row(&k, opts(10_000, 1_000)).await.unwrap();
    let idle = guard.connection_id().await.unwrap();
    Box::new(guard).unlock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    operator.kill(idle).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut guard = store.lock_row(&k, opts(10_000, 2_000)).await.unwrap();
    assert_ne!(guard.connection_id().await.unwrap(), idle);
    assert_eq!(guard.record().unwrap().version, 1);
    assert_eq!(
        guard.finish(save(b"v2"), Then::Release).await.unwrap(),
        Finished::Saved { version: 2 }
    );
    assert_eq!(store.load(&k).await.unwrap().unwrap().version, 2);
}

/// A wait of zero means "do not wait for a holder", not "fail": a free
/// session is locked (even by a store with no connection open yet), a held
/// one times out at once.
async fn a_lock_that_may_not_wait_takes_a_free_session<S: SqlStore>() {
    let k = key();
    store::<S>().await.create(&k, write(b"v1")).await.unwrap();
    let cold = S::new(options::<S>().table(TableName::new(TABLE).unwrap())).unwrap();
    let held = cold.lock(&k, opts(10_000, 0)).await.unwrap();
    assert_eq!(held.record().unwrap().version, 1);
    let started = Instant::now();
    let busy = cold.lock(&k, opts(10_000, 0)).await;
    assert!(matches!(busy, Err(Error::LockTimeout { .. })), "{busy:?}");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    held.unlock().await.unwrap();
    cold.lock(&k, opts(10_000, 0))
        .await
        .unwrap()
        .unlock()
        .await
        .unwrap();
}

/// A table made before principals existed, with a live and an expired
/// record in it, is upgraded in place by `migrate` (two processes at once,
/// then again: idempotent); its old records read with no principal, and
/// everything new works on it.
async fn an_old_table_is_upgraded_in_place<S: SqlStore>() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let table = format!("cloakroom_upgrade_{}_{nanos}", std::process::id());
    let operator = store::<S>().await;
    operator.create_old_table(&table).await;
    let (live, expired) = (key(), key());
    let expired = SessionKey::new(live.namespace.clone(), expired.id);
    let hour = Timestamp::now().saturating_add(Duration::from_secs(3600));
    operator.insert_old_row(&table, &live, hour).await;
    operator
        .insert_old_row(&table, &expired, Timestamp::from_millis(1))
        .await;

    let open = || S::new(options::<S>().table(TableName::new(&table).unwrap())).unwrap();
    let (a, b) = (open(), open());
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
    a.migrate().await.unwrap();

    let old = a.load(&live).await.unwrap().unwrap();
    assert_eq!(
        (old.data.as_slice(), old.version, old.principal),
        (&b"old"[..], 1, None)
    );
    let nobody = Principal::new("nobody").unwrap();
    assert!(a
        .list_by_principal(&live.namespace, &nobody)
        .await
        .unwrap()
        .is_empty());

    // A principal given to an old record, through the guard, and to a new one.
    let alice = Principal::new("alice").unwrap();
    let guard = a.lock(&live, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(guard.record().unwrap().principal, None);
    assert_eq!(guard.save_and_unlock(write_for(b"v2", &alice)).await.unwrap(), 2);
    let fresh = SessionKey::new(live.namespace.clone(), SessionId::generate());
    b.create(&fresh, write_for(b"new", &alice)).await.unwrap();
    let mut mine = listed(b.list_by_principal(&live.namespace, &alice).await.unwrap());
    mine.sort();
    let mut expected = vec![live.id.clone(), fresh.id.clone()];
    expected.sort();
    assert_eq!(mine, expected);

    // The old expired record is swept with no principal.
    let swept = a
        .sweep_expired(&live.namespace, Timestamp::now(), None, 10)
        .await
        .unwrap();
    assert_eq!(swept.deleted.len(), 1);
    assert_eq!(swept.deleted[0].id, expired.id);
    assert_eq!(swept.deleted[0].record.principal, None);
    assert_eq!(swept.deleted[0].record.data, b"old");

    operator.drop_table(&table).await;
}

/// Rotation runs in the locking transaction: refused, it rolls everything
/// back (kept writes included) and the guard is spent; kept, nothing is
/// visible to others until the release commits both ids at once.
async fn a_rotation_is_one_transaction<S: SqlStore>() {
    let store = store_with::<S>(
        options::<S>()
            .table(TableName::new(TABLE).unwrap())
            .max_record_bytes(64),
    )
    .await;
    assert!(store.capabilities().rotates_atomically);
    let bob = Principal::new("bob").unwrap();
    let old = key();
    let to = |k: &SessionKey| SessionKey::new(k.namespace.clone(), SessionId::generate());
    store.create(&old, write_for(b"v1", &bob)).await.unwrap();

    // Onto a live id: Conflict, and the kept save before it is rolled back.
    let taken = to(&old);
    store.create(&taken, write(b"taken")).await.unwrap();
    let mut guard = store.lock(&old, opts(10_000, 1_000)).await.unwrap();
    guard.finish(save(b"kept"), Then::Keep).await.unwrap();
    let rotate = |to: &SessionKey, data: &[u8]| Finish::Rotate {
        to: to.id.clone(),
        write: write_for(data, &bob),
    };
    let refused = guard.finish(rotate(&taken, b"moved"), Then::Keep).await;
    assert!(matches!(refused, Err(Error::Conflict { .. })), "{refused:?}");
    let spent = guard.finish(Finish::Nothing, Then::Release).await;
    assert!(matches!(spent, Err(Error::LeaseLost)), "{spent:?}");
    let seen = store.load(&old).await.unwrap().unwrap();
    assert_eq!((seen.version, seen.data.as_slice()), (1, &b"v1"[..]));
    assert_eq!(store.load(&taken).await.unwrap().unwrap().data, b"taken");

    // Onto its own id, too large, without a record, after a kept delete:
    // refused, nothing written.
    let mut guard = store.lock(&old, opts(10_000, 1_000)).await.unwrap();
    let own = guard.finish(rotate(&old, b"x"), Then::Release).await;
    assert!(matches!(own, Err(Error::Conflict { .. })), "{own:?}");
    let mut guard = store.lock(&old, opts(10_000, 1_000)).await.unwrap();
    let large = guard.finish(rotate(&to(&old), &[7; 100]), Then::Release).await;
    assert!(matches!(large, Err(Error::TooLarge { .. })), "{large:?}");
    let mut guard = store.lock(&key(), opts(10_000, 1_000)).await.unwrap();
    let nothing = guard.finish(rotate(&to(&old), b"x"), Then::Release).await;
    assert!(matches!(nothing, Err(Error::Gone)), "{nothing:?}");
    let mut guard = store.lock(&old, opts(10_000, 1_000)).await.unwrap();
    guard.finish(Finish::Delete, Then::Keep).await.unwrap();
    let deleted = guard.finish(rotate(&to(&old), b"x"), Then::Release).await;
    assert!(matches!(deleted, Err(Error::Gone)), "{deleted:?}");
    assert_eq!(store.load(&old).await.unwrap().unwrap().version, 1);

    // Kept: invisible until the release, then both at once.
    let new = to(&old);
    let mut guard = store.lock(&old, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(
        guard.finish(rotate(&new, b"moved"), Then::Keep).await.unwrap(),
        Finished::Rotated
    );
    assert!(
        guard.record().is_none(),
        "the guard holds the old id with no record"
    );
    assert!(store.load(&old).await.unwrap().is_some());
    assert!(store.load(&new).await.unwrap().is_none());
    assert_eq!(
        listed(store.list_by_principal(&old.namespace, &bob).await.unwrap()),
        vec![old.id.clone()]
    );
    guard.unlock().await.unwrap();
    assert!(store.load(&old).await.unwrap().is_none());
    let moved = store.load(&new).await.unwrap().unwrap();
    assert_eq!((moved.version, moved.data.as_slice()), (1, &b"moved"[..]));
    assert_eq!(moved.principal.as_ref(), Some(&bob));
    assert_eq!(
        listed(store.list_by_principal(&old.namespace, &bob).await.unwrap()),
        vec![new.id.clone()]
    );
    assert_eq!(store.raw_rows(&old.namespace).await, 2, "the new id and `taken`");

    // Over an expired record of the new id.
    let stale = to(&old);
    let mut expired = write(b"stale");
    expired.expires = Timestamp::from_millis(1);
    store.create(&stale, expired).await.unwrap();
    let mut guard = store.lock(&new, opts(10_000, 1_000)).await.unwrap();
    assert_eq!(
        guard
            .finish(rotate(&stale, b"again"), Then::Release)
            .await
            .unwrap(),
        Finished::Rotated
    );
    assert_eq!(store.load(&stale).await.unwrap().unwrap().data, b"again");
    assert!(store.load(&new).await.unwrap().is_none());
}

macro_rules! on_both_servers {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            use cloakroom_sql::PostgresStore;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if super::reachable::<PostgresStore>().await {
                        super::$test::<PostgresStore>().await;
                    }
                }
            )*
        }
        mod mysql {
            use cloakroom_sql::MysqlStore;

            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    if super::reachable::<MysqlStore>().await {
                        super::$test::<MysqlStore>().await;
                    }
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
    kept_saves_chain_and_a_release_commits_them,
    a_kept_write_is_invisible_to_others_until_the_release,
    a_release_with_nothing_commits_a_kept_write,
    a_lapsed_lease_loses_the_whole_chain,
    a_kept_write_does_not_extend_the_lease_on_the_server,
    a_kept_delete_then_save_recreates_the_session,
    a_failed_finish_rolls_back_the_kept_writes,
    a_lock_on_a_dead_idle_connection_takes_another,
    a_lock_that_may_not_wait_takes_a_free_session,
    an_old_table_is_upgraded_in_place,
    a_rotation_is_one_transaction,
);

/// A TCP proxy in front of the server that counts round trips: every time
/// the client speaks again after the server has answered is one more. The
/// drivers here never pipeline, so this is the number of waits for the
/// server.
struct Proxy {
    addr: SocketAddr,
    trips: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let trips = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&trips);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(upstream).await.unwrap();
                // Whether the client's next bytes start a new round trip.
                let clients_turn = Arc::new(AtomicBool::new(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let (turn, counter) = (Arc::clone(&clients_turn), Arc::clone(&counter));
                tokio::spawn(pipe(client_read, server_write, move || {
                    if turn.swap(false, Ordering::SeqCst) {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                }));
                tokio::spawn(pipe(server_read, client_write, move || {
                    clients_turn.store(true, Ordering::SeqCst);
                }));
            }
        });
        Proxy { addr, trips }
    }

    fn trips(&self) -> u64 {
        self.trips.load(Ordering::SeqCst)
    }
}

/// Copy bytes one way, calling `seen` before forwarding each read.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: impl Fn() + Send + 'static,
) {
    let mut buf = vec![0; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen();
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Round trips of one locked request on a warm pooled connection: lock and
/// load, a kept save, a save that releases. Runs on a current-thread runtime,
/// so the pool's own ping when a released connection goes back to the pool
/// (spawned in the background) cannot run before a count is read.
async fn round_trips_of_a_lock_cycle<S: SqlStore>() -> (u64, u64, u64) {
    let direct = store::<S>().await;
    let server = StoreUrl::parse(&options::<S>().driver_url).unwrap();
    let host_port = server
        .hosts()
        .first()
        .cloned()
        .unwrap_or_else(|| "localhost".into());
    let (host, port) = host_port
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse().ok()?)))
        .unwrap_or((host_port.as_str(), S::DEFAULT_PORT));
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let upstream = tokio::net::lookup_host((host, port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let authority = |hosts: &str| match server.userinfo() {
        Some(userinfo) => format!("//{userinfo}@{hosts}"),
        None => format!("//{hosts}"),
    };
    let proxied = server.to_driver_url(server.scheme(), server.query()).replacen(
        &authority(&host_port),
        &authority(&format!("127.0.0.1:{}", proxy.addr.port())),
        1,
    );
    let store = S::new(
        SqlOptions::new(proxied)
            .table(TableName::new(TABLE).unwrap())
            .max_connections(1),
    )
    .unwrap();
    let k = key();
    direct.create(&k, write(b"v1")).await.unwrap();
    let options = opts(10_000, 2_000);

    // Warm up: connect, and prepare every statement on the connection.
    let mut guard = store.lock(&k, options).await.unwrap();
    guard.finish(save(b"warm"), Then::Keep).await.unwrap();
    guard.finish(save(b"warm"), Then::Release).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let before = proxy.trips();
    let mut guard = store.lock(&k, options).await.unwrap();
    let lock = proxy.trips() - before;
    assert_eq!(guard.record().unwrap().version, 3);
    let before = proxy.trips();
    guard.finish(save(b"kept"), Then::Keep).await.unwrap();
    let keep = proxy.trips() - before;
    let before = proxy.trips();
    guard.finish(save(b"last"), Then::Release).await.unwrap();
    let release = proxy.trips() - before;
    assert_eq!(direct.load(&k).await.unwrap().unwrap().version, 5);
    println!(
        "{}: lock+load {lock}, kept save {keep}, save+release {release} round trips",
        S::SERVER.name()
    );
    (lock, keep, release)
}

mod round_trips {
    use cloakroom_sql::{MysqlStore, PostgresStore};

    use super::{reachable, round_trips_of_a_lock_cycle};

    #[tokio::test]
    async fn postgres() {
        if reachable::<PostgresStore>().await {
            let trips = round_trips_of_a_lock_cycle::<PostgresStore>().await;
            assert_eq!(trips, (2, 1, 2), "(lock+load, kept save, save+release)");
        }
    }

    #[tokio::test]
    async fn mysql() {
        if reachable::<MysqlStore>().await {
            let trips = round_trips_of_a_lock_cycle::<MysqlStore>().await;
            assert_eq!(trips, (2, 1, 2), "(lock+load, kept save, save+release)");
        }
    }
}
