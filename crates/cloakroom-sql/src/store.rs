//! [`RowLockStore`]: the [`SessionStore`] implementation shared by Postgres
//! and MySQL/MariaDB, and its constructors. Unlocked operations are single
//! statements; `lock` (in `guard.rs`) hands the locking protocol to the
//! [`Backend`] and wraps the transaction in a
//! [`RowLockGuard`](crate::guard::RowLockGuard).
//!
//! The public store types ([`PostgresStore`](crate::PostgresStore),
//! [`MysqlStore`](crate::MysqlStore)) wrap a `RowLockStore` of their backend;
//! [`public_store!`] writes them.

use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use cloakroom_core::{
    Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Record, RecordWrite,
    Result, SessionId, SessionKey, SessionStore, SweepBatch, Timestamp,
};
use sqlx::pool::PoolConnection;
use sqlx::Pool;

use crate::backend::{Backend, ConnectOptionsOf};
use crate::connection::{Driver, Param, RecordRow, TxConn};
use crate::error::{classify, to_error, Failure};
use crate::options::SqlOptions;
use crate::statements::Statements;

/// Largest sweep batch; bounds the statement's parameter count and the time
/// the sweep holds row locks.
const MAX_SWEEP_BATCH: usize = 1000;

/// A session store on a SQL database, locking sessions with row locks.
/// Cloning shares the pool.
pub(crate) struct RowLockStore<B: Backend> {
    pub(crate) inner: Arc<Inner<B>>,
}

pub(crate) struct Inner<B: Backend> {
    /// The driver's connect options, read once by `new`.
    connect: ConnectOptionsOf<B>,
    /// Created on first use, inside the runtime that runs the store.
    pool: OnceLock<Pool<B::DB>>,
    pub sql: Statements,
    pub options: SqlOptions,
    pub next_token: AtomicU64,
}

impl<B: Backend> Clone for RowLockStore<B> {
    fn clone(&self) -> Self {
        RowLockStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<B: Backend> fmt::Debug for RowLockStore<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowLockStore")
            .field("backend", &B::NAME)
            .field("table", &self.inner.options.table.as_str())
            .finish_non_exhaustive()
    }
}

impl<B: Backend> RowLockStore<B> {
    /// A store with `options`, checked here: an invalid option, or a driver
    /// URL for another server, is [`Error::Config`]. Does no I/O: the pool is
    /// created, and connects, on first use.
    pub(crate) fn new(options: SqlOptions) -> Result<Self> {
        let dialect = options.validate()?;
        if dialect != B::dialect() {
            return Err(Error::Config(format!(
                "a {} store needs a {}:// URL",
                B::NAME,
                B::dialect().schemes().join(":// or ")
            )));
        }
        let connect = crate::backend::connect_options::<B>(&options.driver_url)?;
        Ok(RowLockStore {
            inner: Arc::new(Inner {
                connect,
                pool: OnceLock::new(),
                sql: Statements::new(B::dialect(), &options.table),
                options,
                next_token: AtomicU64::new(0),
            }),
        })
    }

    /// The store's options.
    pub(crate) fn options(&self) -> &SqlOptions {
        &self.inner.options
    }

    /// The connection pool, created by the first call (inside the runtime).
    pub(crate) fn pool(&self) -> &Pool<B::DB> {
        self.inner
            .pool
            .get_or_init(|| crate::backend::pool::<B>(&self.inner.connect, &self.inner.options))
    }

    pub(crate) fn classify(&self, e: &sqlx::Error) -> Failure {
        classify(e, B::classify_database)
    }

    pub(crate) fn map_err(&self, e: sqlx::Error) -> Error {
        // The driver reads the URL's certificate files when it connects, and
        // reports one it cannot read as a bare I/O error: name the file.
        if matches!(e, sqlx::Error::Io(_)) {
            if let Some(config) = self.inner.options.unreadable_tls_file() {
                return config;
            }
        }
        let failure = self.classify(&e);
        to_error(e, failure)
    }

    async fn conn(&self) -> Result<PoolConnection<B::DB>> {
        self.pool().acquire().await.map_err(|e| self.map_err(e))
    }

    async fn run(&self, sql: &str, params: Vec<Param>) -> Result<u64> {
        let mut conn = self.conn().await?;
        B::DB::run(&mut conn, sql, params)
            .await
            .map_err(|e| self.map_err(e))
    }

    async fn ints(&self, sql: &str, params: Vec<Param>) -> Result<Vec<i64>> {
        let mut conn = self.conn().await?;
        B::DB::fetch_ints(&mut conn, sql, params)
            .await
            .map_err(|e| self.map_err(e))
    }

    async fn texts(&self, sql: &str, params: Vec<Param>) -> Result<Vec<String>> {
        let mut conn = self.conn().await?;
        B::DB::fetch_texts(&mut conn, sql, params)
            .await
            .map_err(|e| self.map_err(e))
    }

    pub(crate) fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.options.max_record_bytes)
    }

    /// The version of the live record under `key`, if any: what a write that
    /// matched no row finds, to answer `Conflict` rather than `Gone`.
    async fn live_version(&self, key: &SessionKey) -> Result<Option<u64>> {
        let now = Timestamp::now().as_millis();
        let found = self
            .ints(&self.inner.sql.live_version, key_params(key, [now]))
            .await?;
        found.first().map(|&v| version_from_db(v)).transpose()
    }
}

#[async_trait]
impl<B: Backend> SessionStore for RowLockStore<B> {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new(LockKind::RowLock)
            .named(B::NAME)
            .multi_process()
            .durable(true)
            .max_record_bytes(self.inner.options.max_record_bytes)
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        B::DB::run_script(&mut conn, &self.inner.sql.migrate)
            .await
            .map_err(|e| self.map_err(e))
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let now = Timestamp::now();
        let mut conn = self.conn().await?;
        let rows = B::DB::fetch_records(
            &mut conn,
            &self.inner.sql.load,
            key_params(key, [now.as_millis()]),
        )
        .await
        .map_err(|e| self.map_err(e))?;
        match rows.into_iter().next() {
            Some(row) => live_record(row, now),
            None => Ok(None),
        }
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let sql = &self.inner.sql;
        // Two tries: a record that expires between the insert and the version
        // probe makes the probe find nothing, and then the key is free again.
        for _ in 0..2 {
            let now = Timestamp::now().as_millis();
            let over_expired = vec![
                Param::Bytes(write.data.clone()),
                write.created.as_millis().into(),
                write.accessed.as_millis().into(),
                write.expires.as_millis().into(),
                key.namespace.as_str().into(),
                key.id.as_str().into(),
                now.into(),
            ];
            let mut done = self.run(&sql.create_over_expired, over_expired).await? > 0;
            if !done {
                let insert = vec![
                    key.namespace.as_str().into(),
                    key.id.as_str().into(),
                    Param::Bytes(write.data.clone()),
                    write.created.as_millis().into(),
                    write.accessed.as_millis().into(),
                    write.expires.as_millis().into(),
                ];
                done = self.run(&sql.create_insert, insert).await? > 0;
            }
            if done {
                return Ok(write.into_record(1));
            }
            if let Some(found) = self.live_version(key).await? {
                return Err(Error::Conflict { expected: 0, found });
            }
        }
        Err(Error::backend(format!(
            "{}: create kept racing with an expiring record",
            B::NAME
        )))
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        // Never an upsert: a save that matches no live row reports why and
        // writes nothing, so a logged-out session stays logged out.
        loop {
            let base = match expected {
                Some(v) => v,
                // Last writer wins: compare-and-set against whatever is there now.
                None => self.live_version(key).await?.ok_or(Error::Gone)?,
            };
            let params = vec![
                Param::Bytes(write.data.clone()),
                write.accessed.as_millis().into(),
                write.expires.as_millis().into(),
                key.namespace.as_str().into(),
                key.id.as_str().into(),
                version_to_db(base)?.into(),
                Timestamp::now().as_millis().into(),
            ];
            if self.run(&self.inner.sql.save_cas, params).await? > 0 {
                return Ok(base + 1);
            }
            match (self.live_version(key).await?, expected) {
                (None, _) => return Err(Error::Gone),
                (Some(found), Some(expected)) => return Err(Error::Conflict { expected, found }),
                // Another writer got in between; a lossy save simply goes again.
                (Some(_), None) => continue,
            }
        }
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let now = Timestamp::now().as_millis();
        Ok(self
            .run(&self.inner.sql.delete_live, key_params(key, [now]))
            .await?
            > 0)
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let mut params = vec![accessed.as_millis().into(), expires.as_millis().into()];
        params.extend(key_params(key, [Timestamp::now().as_millis()]));
        Ok(self.run(&self.inner.sql.touch_live, params).await? > 0)
    }

    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        Ok(match self.try_lock_row(key, options).await? {
            Some(guard) => Acquired::Locked(Box::new(guard)),
            None => Acquired::BUSY,
        })
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = cursor_to_db(cursor)?;
        let limit = limit.max(1);
        let params = vec![
            namespace.as_str().into(),
            Param::Text(after),
            Timestamp::now().as_millis().into(),
            limit_to_db(limit + 1),
        ];
        let mut ids = parse_ids(self.texts(&self.inner.sql.list_ids, params).await?)?;
        let next = if ids.len() > limit {
            ids.truncate(limit);
            ids.last().map(Cursor::after)
        } else {
            None
        };
        Ok(IdPage { ids, next })
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let params = vec![namespace.as_str().into(), Timestamp::now().as_millis().into()];
        let n = self.ints(&self.inner.sql.count, params).await?;
        Ok(n.first().copied().unwrap_or(0).max(0).unsigned_abs())
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let after = cursor_to_db(cursor)?;
        let limit = limit.clamp(1, MAX_SWEEP_BATCH);
        let page = vec![
            namespace.as_str().into(),
            Param::Text(after),
            now.as_millis().into(),
            limit_to_db(limit),
        ];
        let (deleted, next) = match self.sweep_locked_page(namespace, page.clone()).await? {
            Some(ids) => {
                let next = next_page(&ids, limit);
                (ids, next)
            }
            None => {
                tracing::warn!(
                    backend = B::NAME,
                    namespace = namespace.as_str(),
                    "a sweep batch ran into a row lock; sweeping that page row by row"
                );
                let ids = self.texts(&self.inner.sql.sweep_candidates, page).await?;
                let next = next_page(&ids, limit);
                (self.sweep_one_by_one(namespace, now, &ids).await?, next)
            }
        };
        Ok(SweepBatch {
            deleted: parse_ids(deleted)?,
            next,
        })
    }
}

/// Where the sweep goes on after a page of `ids`: a full page may be
/// followed by more.
fn next_page(ids: &[String], limit: usize) -> Option<Cursor> {
    if ids.len() == limit {
        ids.last().map(|id| Cursor(id.clone()))
    } else {
        None
    }
}

impl<B: Backend> RowLockStore<B> {
    /// One sweep page in one transaction: lock the expired rows nobody holds
    /// (`SKIP LOCKED`) and delete exactly those, which nothing can renew or
    /// remove meanwhile. `None` if a statement waited on a row lock after
    /// all, past [`Backend::SWEEP_BEGIN`]'s bound: the transaction is rolled
    /// back and the caller falls back to
    /// [`sweep_one_by_one`](Self::sweep_one_by_one). That should not happen,
    /// yet CI once saw MariaDB 10.11 wait 50 s (its default) inside the sweep
    /// of the conformance case that holds an expired session, and 40 reruns
    /// did not show why; so a wait costs a second and a slower page instead
    /// of failing the sweep.
    async fn sweep_locked_page(
        &self,
        namespace: &Namespace,
        page: Vec<Param>,
    ) -> Result<Option<Vec<String>>> {
        let mut tx = TxConn::new(self.conn().await?);
        B::DB::run_script(tx.conn(), B::SWEEP_BEGIN)
            .await
            .map_err(|e| self.map_err(e))?;
        match self.select_and_delete(&mut tx, namespace, page).await {
            Ok((ids, deleted)) if deleted == ids.len() as u64 => {
                tx.end(B::COMMIT).await.map_err(|e| self.map_err(e))?;
                Ok(Some(ids))
            }
            Ok((ids, deleted)) => {
                let _ = tx.end(B::ROLLBACK).await;
                Err(Error::backend(format!(
                    "{}: sweep deleted {deleted} of {} locked rows",
                    B::NAME,
                    ids.len()
                )))
            }
            Err(e) if self.classify(&e) == Failure::LockBusy => {
                let _ = tx.end(B::ROLLBACK).await;
                Ok(None)
            }
            Err(e) => Err(self.map_err(e)),
        }
    }

    /// The locking select of a sweep page and the delete of what it locked:
    /// the ids and how many rows went.
    async fn select_and_delete(
        &self,
        tx: &mut TxConn<B::DB>,
        namespace: &Namespace,
        page: Vec<Param>,
    ) -> sqlx::Result<(Vec<String>, u64)> {
        let sql = &self.inner.sql;
        let ids = B::DB::fetch_texts(tx.conn(), &sql.sweep_select, page).await?;
        if ids.is_empty() {
            return Ok((ids, 0));
        }
        let mut delete = vec![namespace.as_str().into()];
        delete.extend(ids.iter().map(|id| Param::Text(id.clone())));
        let deleted = B::DB::run(tx.conn(), &sql.sweep_delete(ids.len()), delete).await?;
        Ok((ids, deleted))
    }

    /// Delete each of `ids` that is still expired at `now`, each in a short
    /// transaction of its own with the same bounded lock wait. A row whose
    /// lock stays held is a session in use and is left for a later sweep (a
    /// sweep must never delete a session someone holds), at the cost of that
    /// wait; the expiry check in the statement keeps a session renewed since
    /// the page was read.
    async fn sweep_one_by_one(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        ids: &[String],
    ) -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for id in ids {
            let mut tx = TxConn::new(self.conn().await?);
            B::DB::run_script(tx.conn(), B::SWEEP_BEGIN)
                .await
                .map_err(|e| self.map_err(e))?;
            let params = vec![
                namespace.as_str().into(),
                Param::Text(id.clone()),
                now.as_millis().into(),
            ];
            match B::DB::run(tx.conn(), &self.inner.sql.sweep_delete_one, params).await {
                Ok(n) => {
                    tx.end(B::COMMIT).await.map_err(|e| self.map_err(e))?;
                    if n > 0 {
                        deleted.push(id.clone());
                    }
                }
                Err(e) if self.classify(&e) == Failure::LockBusy => {
                    let _ = tx.end(B::ROLLBACK).await;
                }
                Err(e) => return Err(self.map_err(e)),
            }
        }
        Ok(deleted)
    }
}

/// `(namespace, id, extra…)`, the leading parameters of most statements.
pub(crate) fn key_params<const N: usize>(key: &SessionKey, extra: [i64; N]) -> Vec<Param> {
    let mut params = vec![key.namespace.as_str().into(), key.id.as_str().into()];
    params.extend(extra.into_iter().map(Param::Int));
    params
}

/// The record in `row` if it is a real record (not a lock placeholder) live at `now`.
pub(crate) fn live_record(row: RecordRow, now: Timestamp) -> Result<Option<Record>> {
    if row.version <= 0 || row.expires <= now.as_millis() {
        return Ok(None);
    }
    Ok(Some(Record {
        data: row.data,
        version: version_from_db(row.version)?,
        created: Timestamp::from_millis(row.created),
        accessed: Timestamp::from_millis(row.accessed),
        expires: Timestamp::from_millis(row.expires),
    }))
}

pub(crate) fn version_from_db(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::Corrupt {
        reason: format!("negative record version {v}"),
    })
}

pub(crate) fn version_to_db(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::Config(format!("record version {v} does not fit a BIGINT")))
}

fn limit_to_db(n: usize) -> Param {
    Param::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Cursors are the last id returned; ids are ASCII and sort by bytes in
/// both schemas, so `id > cursor` resumes exactly after it.
fn cursor_to_db(cursor: Option<Cursor>) -> Result<String> {
    match cursor {
        None => Ok(String::new()),
        Some(c) => SessionId::parse(&c.0)
            .map(|id| id.as_str().to_owned())
            .map_err(|_| Error::Config("not a cursor of this store".into())),
    }
}

fn parse_ids(ids: Vec<String>) -> Result<Vec<SessionId>> {
    ids.iter()
        .map(|id| {
            SessionId::parse(id).map_err(|_| Error::Corrupt {
                reason: "a stored session id does not parse".into(),
            })
        })
        .collect()
}

/// Writes a public store type: a newtype over the [`RowLockStore`] of one
/// backend, with its constructors and a [`SessionStore`] impl that forwards
/// every call. Its guard type is written by
/// [`public_guard!`](crate::guard::public_guard) in the same module.
macro_rules! public_store {
    (
        $(#[$doc:meta])*
        $store:ident, guard $guard:ident, backend $backend:ty, database $db:ty $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $store($crate::store::RowLockStore<$backend>);

        impl $store {
            /// A store with `options`, checked here: an invalid option, or a
            /// driver URL for another server, is
            /// [`Error::Config`](cloakroom_core::Error::Config).
            ///
            /// Does no I/O: the connection pool is created by the first call
            /// (inside the Tokio runtime that makes it) and connects as
            /// needed, so this succeeds while the server is down. Call
            /// [`migrate`](cloakroom_core::SessionStore::migrate) to create
            /// the table and to find out whether the server is reachable.
            pub fn new(options: $crate::SqlOptions) -> cloakroom_core::Result<Self> {
                $crate::store::RowLockStore::new(options).map($store)
            }

            /// A store from its URL (forms and options in the crate docs):
            /// [`SqlOptions::from_url`](crate::SqlOptions::from_url), then
            /// [`new`](Self::new), so it does no I/O either.
            pub fn from_url(url: &str) -> cloakroom_core::Result<Self> {
                let url = cloakroom_core::StoreUrl::parse(url)?;
                Self::new($crate::SqlOptions::from_url(&url)?)
            }

            /// The store's options.
            pub fn options(&self) -> &$crate::SqlOptions {
                self.0.options()
            }

            /// The connection pool, for monitoring. Creates it if no call
            /// has yet, so call it inside a Tokio runtime, like the store's
            /// other methods.
            pub fn pool(&self) -> &sqlx::Pool<$db> {
                self.0.pool()
            }

            /// Take the lock on `key`, like
            /// [`SessionStore::lock`](cloakroom_core::SessionStore::lock),
            /// returning the concrete guard (which can tell its server
            /// connection id).
            pub async fn lock_row(
                &self,
                key: &cloakroom_core::SessionKey,
                options: cloakroom_core::LockOptions,
            ) -> cloakroom_core::Result<$guard> {
                self.0.lock_row(key, options).await.map($guard)
            }
        }

        #[async_trait::async_trait]
        impl cloakroom_core::SessionStore for $store {
            fn capabilities(&self) -> cloakroom_core::Capabilities {
                self.0.capabilities()
            }

            async fn migrate(&self) -> cloakroom_core::Result<()> {
                self.0.migrate().await
            }

            async fn load(
                &self,
                key: &cloakroom_core::SessionKey,
            ) -> cloakroom_core::Result<Option<cloakroom_core::Record>> {
                self.0.load(key).await
            }

            async fn create(
                &self,
                key: &cloakroom_core::SessionKey,
                write: cloakroom_core::RecordWrite,
            ) -> cloakroom_core::Result<cloakroom_core::Record> {
                self.0.create(key, write).await
            }

            async fn save(
                &self,
                key: &cloakroom_core::SessionKey,
                write: cloakroom_core::RecordWrite,
                expected: Option<u64>,
            ) -> cloakroom_core::Result<u64> {
                self.0.save(key, write, expected).await
            }

            async fn delete(&self, key: &cloakroom_core::SessionKey) -> cloakroom_core::Result<bool> {
                self.0.delete(key).await
            }

            async fn touch(
                &self,
                key: &cloakroom_core::SessionKey,
                accessed: cloakroom_core::Timestamp,
                expires: cloakroom_core::Timestamp,
            ) -> cloakroom_core::Result<bool> {
                self.0.touch(key, accessed, expires).await
            }

            async fn try_lock(
                &self,
                key: &cloakroom_core::SessionKey,
                options: cloakroom_core::LockOptions,
            ) -> cloakroom_core::Result<cloakroom_core::Acquired> {
                self.0.try_lock(key, options).await
            }

            async fn lock(
                &self,
                key: &cloakroom_core::SessionKey,
                options: cloakroom_core::LockOptions,
            ) -> cloakroom_core::Result<Box<dyn cloakroom_core::LockGuard>> {
                self.0.lock(key, options).await
            }

            async fn list_ids(
                &self,
                namespace: &cloakroom_core::Namespace,
                cursor: Option<cloakroom_core::Cursor>,
                limit: usize,
            ) -> cloakroom_core::Result<cloakroom_core::IdPage> {
                self.0.list_ids(namespace, cursor, limit).await
            }

            async fn count(&self, namespace: &cloakroom_core::Namespace) -> cloakroom_core::Result<u64> {
                self.0.count(namespace).await
            }

            async fn sweep_expired(
                &self,
                namespace: &cloakroom_core::Namespace,
                now: cloakroom_core::Timestamp,
                cursor: Option<cloakroom_core::Cursor>,
                limit: usize,
            ) -> cloakroom_core::Result<cloakroom_core::SweepBatch> {
                self.0.sweep_expired(namespace, now, cursor, limit).await
            }
        }
    };
}

pub(crate) use public_store;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use cloakroom_core::{
        LockGuard, LockOptions, Namespace, RecordWrite, SessionId, SessionKey, SessionStore, Timestamp,
    };

    use cloakroom_conformance::support::{skip_or_fail, Server};

    use super::RowLockStore;
    use crate::backend::Backend;
    use crate::SqlOptions;

    /// The store on `server`, migrated; `None` (the test is skipped) if the
    /// server is down, unless the run requires every backend.
    async fn store<B: Backend>(server: Server) -> Option<RowLockStore<B>> {
        let open = async {
            let url = cloakroom_core::StoreUrl::parse(&server.url()).map_err(|e| server.unreachable(e))?;
            let store = SqlOptions::from_url(&url)
                .and_then(RowLockStore::<B>::new)
                .map_err(|e| server.unreachable(e))?;
            store.migrate().await.map_err(|e| server.unreachable(e))?;
            Ok(store)
        };
        skip_or_fail(open.await)
    }

    /// Building a store (from a URL, or through the opener) reads the
    /// options and nothing else: no server, and no runtime, is needed.
    #[test]
    fn stores_are_built_without_a_server_or_a_runtime() {
        #[cfg(feature = "postgres")]
        {
            let store =
                crate::PostgresStore::from_url("postgresql://u@127.0.0.1:1/db?table=t&sslmode=disable")
                    .unwrap();
            assert_eq!(store.options().table.as_str(), "t");
            let url = cloakroom_core::StoreUrl::parse("postgres://u@127.0.0.1:1/db").unwrap();
            assert!((crate::postgres::OPENER.open)(&url).is_ok());
            let wrong = crate::PostgresStore::new(SqlOptions::new("mysql://u@127.0.0.1:1/db"));
            assert!(
                matches!(wrong, Err(cloakroom_core::Error::Config(_))),
                "{wrong:?}"
            );
        }
        #[cfg(feature = "mysql")]
        {
            let store = crate::MysqlStore::from_url("mariadb://u@127.0.0.1:1/db?max_connections=2").unwrap();
            assert_eq!(store.options().max_connections, 2);
            let url = cloakroom_core::StoreUrl::parse("mysql://u@127.0.0.1:1/db").unwrap();
            assert!((crate::mysql::OPENER.open)(&url).is_ok());
            let wrong = crate::MysqlStore::from_url("postgres://u@127.0.0.1:1/db");
            assert!(
                matches!(wrong, Err(cloakroom_core::Error::Config(_))),
                "{wrong:?}"
            );
        }
    }

    fn write(ttl: Duration) -> RecordWrite {
        let now = Timestamp::now();
        RecordWrite {
            data: b"x".to_vec(),
            created: now,
            accessed: now,
            expires: now.saturating_add(ttl),
        }
    }

    /// The fallback keeps the sweep's promise on its own: it deletes the
    /// expired rows, never one whose lock is held (it gives up on that row
    /// after the bounded wait) nor one that is live.
    async fn one_by_one_spares_held_and_live_sessions<B: Backend>(store: RowLockStore<B>) {
        let namespace =
            Namespace::new(&format!("fallback-{}", &SessionId::generate().as_str()[..16])).unwrap();
        let key = || SessionKey::new(namespace.clone(), SessionId::generate());
        let (gone_a, held, gone_b, live) = (key(), key(), key(), key());
        for k in [&gone_a, &held, &gone_b] {
            store.create(k, write(Duration::from_millis(50))).await.unwrap();
        }
        store
            .create(&live, write(Duration::from_secs(3600)))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let guard = store
            .lock_row(
                &held,
                LockOptions::new(Duration::from_secs(30), Duration::from_secs(1)),
            )
            .await
            .unwrap();

        let ids: Vec<String> = [&gone_a, &held, &gone_b, &live]
            .iter()
            .map(|k| k.id.as_str().to_owned())
            .collect();
        let mut deleted = store
            .sweep_one_by_one(&namespace, Timestamp::now(), &ids)
            .await
            .unwrap();
        deleted.sort();
        let mut expected = vec![gone_a.id.as_str().to_owned(), gone_b.id.as_str().to_owned()];
        expected.sort();
        assert_eq!(deleted, expected, "exactly the expired sessions nobody holds");
        assert!(
            store.load(&live).await.unwrap().is_some(),
            "a live session was swept"
        );

        Box::new(guard).unlock().await.unwrap();
        let again = store
            .sweep_one_by_one(&namespace, Timestamp::now(), &ids)
            .await
            .unwrap();
        assert_eq!(again, vec![held.id.as_str().to_owned()], "once released it goes");
    }

    #[cfg(feature = "postgres")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_one_by_one_spares_held_and_live_sessions() {
        if let Some(store) = store::<crate::postgres::Postgres>(Server::Postgres).await {
            one_by_one_spares_held_and_live_sessions(store).await;
        }
    }

    #[cfg(feature = "mysql")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn mysql_one_by_one_spares_held_and_live_sessions() {
        if let Some(store) = store::<crate::mysql::Mysql>(Server::Mysql).await {
            one_by_one_spares_held_and_live_sessions(store).await;
        }
    }
}
