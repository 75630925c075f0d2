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
    Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Principal, Record,
    RecordWrite, Result, SessionId, SessionKey, SessionStore, SessionSummary, SweepBatch, SweptRecord,
    Timestamp,
};
use sqlx::pool::PoolConnection;
use sqlx::Pool;

use crate::backend::{Backend, ConnectOptionsOf};
use crate::connection::{Driver, Param, PrincipalColumn, RecordRow, TxConn};
use crate::error::{classify, to_error, Failure};
use crate::options::SqlOptions;
use crate::statements::{MysqlUpgrade, Statements};

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

    /// Bring a MySQL table made before principals up to date (see
    /// [`MysqlUpgrade`]): add what the catalog says is missing.
    async fn upgrade_mysql(&self, conn: &mut PoolConnection<B::DB>, upgrade: &MysqlUpgrade) -> Result<()> {
        let table = self.inner.options.table.as_str();
        let count = |rows: Vec<i64>| rows.first().copied().unwrap_or(0);
        let columns = B::DB::fetch_ints(conn, &upgrade.column_exists, vec![table.into()])
            .await
            .map_err(|e| self.map_err(e))?;
        if count(columns) == 0 {
            self.alter_unless_done(conn, &upgrade.add_column).await?;
        }
        let params = vec![table.into(), upgrade.index_name.as_str().into()];
        let indexed = B::DB::fetch_ints(conn, &upgrade.index_exists, params)
            .await
            .map_err(|e| self.map_err(e))?;
        if count(indexed) == 0 {
            self.alter_unless_done(conn, &upgrade.add_index).await?;
        }
        Ok(())
    }

    /// Run one `ALTER` of a MySQL upgrade; a concurrent migration that made
    /// the same change first makes it fail as a duplicate, which is success.
    async fn alter_unless_done(&self, conn: &mut PoolConnection<B::DB>, sql: &str) -> Result<()> {
        match B::DB::run_script(conn, sql).await {
            Ok(()) => Ok(()),
            Err(e) if self.classify(&e) == Failure::AlreadyDone => Ok(()),
            Err(e) => Err(self.map_err(e)),
        }
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
            // Required of a row-lock store (kept writes wait for the commit):
            // `Finish::Rotate` runs in the locking transaction, see `guard.rs`.
            .atomic_rotation()
            .max_record_bytes(self.inner.options.max_record_bytes)
    }

    async fn migrate(&self) -> Result<()> {
        let mut conn = self.conn().await?;
        B::DB::run_script(&mut conn, &self.inner.sql.migrate)
            .await
            .map_err(|e| self.map_err(e))?;
        if let Some(upgrade) = &self.inner.sql.mysql_upgrade {
            self.upgrade_mysql(&mut conn, upgrade).await?;
        }
        Ok(())
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
            let mut done = self
                .run(
                    &sql.create_over_expired,
                    over_expired_params::<B>(key, &write, now),
                )
                .await?
                > 0;
            if !done {
                done = self
                    .run(&sql.create_insert, insert_params::<B>(key, &write))
                    .await?
                    > 0;
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
                B::DB::principal_param(write.principal.as_ref()),
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

    /// One indexed read of committed rows: a session deleted, expired,
    /// rotated away or given another principal is not in it, and a kept
    /// write that no release has committed yet is not either.
    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let params = vec![
            namespace.as_str().into(),
            B::DB::principal_param(Some(principal)),
            Timestamp::now().as_millis().into(),
        ];
        let mut conn = self.conn().await?;
        let rows = B::DB::fetch_summaries(&mut conn, &self.inner.sql.list_by_principal, params)
            .await
            .map_err(|e| self.map_err(e))?;
        rows.into_iter()
            .map(|(id, created, accessed, expires)| {
                Ok(SessionSummary {
                    id: parse_id(&id)?,
                    created: Timestamp::from_millis(created),
                    accessed: Timestamp::from_millis(accessed),
                    expires: Timestamp::from_millis(expires),
                })
            })
            .collect()
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
            Some(rows) => {
                let next = next_page(rows.len(), rows.last().map(|(id, _)| id), limit);
                (rows, next)
            }
            None => {
                tracing::warn!(
                    backend = B::NAME,
                    namespace = namespace.as_str(),
                    "a sweep batch ran into a row lock; sweeping that page row by row"
                );
                let ids = self.texts(&self.inner.sql.sweep_candidates, page).await?;
                let next = next_page(ids.len(), ids.last(), limit);
                (self.sweep_one_by_one(namespace, now, &ids).await?, next)
            }
        };
        let deleted = deleted
            .into_iter()
            .map(|(id, row)| {
                Ok(SweptRecord {
                    id: parse_id(&id)?,
                    record: stored_record(row)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(SweepBatch { deleted, next })
    }
}

/// A record row and the id it was stored under, as a sweep read it.
type KeyedRow = (String, RecordRow);

/// Where the sweep goes on after a page of `len` ids ending at `last`: a
/// full page may be followed by more.
fn next_page(len: usize, last: Option<&String>, limit: usize) -> Option<Cursor> {
    if len == limit {
        last.map(|id| Cursor(id.clone()))
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
    ) -> Result<Option<Vec<KeyedRow>>> {
        let mut tx = TxConn::new(self.conn().await?);
        B::DB::run_script(tx.conn(), B::SWEEP_BEGIN)
            .await
            .map_err(|e| self.map_err(e))?;
        match self.select_and_delete(&mut tx, namespace, page).await {
            Ok((rows, deleted)) if deleted == rows.len() as u64 => {
                tx.end(B::COMMIT).await.map_err(|e| self.map_err(e))?;
                Ok(Some(rows))
            }
            Ok((rows, deleted)) => {
                let _ = tx.end(B::ROLLBACK).await;
                Err(Error::backend(format!(
                    "{}: sweep deleted {deleted} of {} locked rows",
                    B::NAME,
                    rows.len()
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
    /// the rows (as they were deleted) and how many went.
    async fn select_and_delete(
        &self,
        tx: &mut TxConn<B::DB>,
        namespace: &Namespace,
        page: Vec<Param>,
    ) -> sqlx::Result<(Vec<KeyedRow>, u64)> {
        let sql = &self.inner.sql;
        let rows = B::DB::fetch_keyed_records(tx.conn(), &sql.sweep_select, page).await?;
        if rows.is_empty() {
            return Ok((rows, 0));
        }
        let deleted = self.delete_locked(tx, namespace, &rows).await?;
        Ok((rows, deleted))
    }

    /// Delete `rows`, which this sweep transaction has locked, by key.
    async fn delete_locked(
        &self,
        tx: &mut TxConn<B::DB>,
        namespace: &Namespace,
        rows: &[KeyedRow],
    ) -> sqlx::Result<u64> {
        let mut delete = vec![namespace.as_str().into()];
        delete.extend(rows.iter().map(|(id, _)| Param::Text(id.clone())));
        B::DB::run(tx.conn(), &self.inner.sql.sweep_delete(rows.len()), delete).await
    }

    /// Delete each of `ids` that is still expired at `now`, each in a short
    /// transaction of its own with the same bounded lock wait. A row whose
    /// lock stays held is a session in use and is left for a later sweep (a
    /// sweep must never delete a session someone holds), at the cost of that
    /// wait; the expiry check in the locking select keeps a session renewed
    /// since the page was read, and the lock it takes keeps the row as read
    /// until the delete.
    async fn sweep_one_by_one(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        ids: &[String],
    ) -> Result<Vec<KeyedRow>> {
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
            let swept =
                match B::DB::fetch_keyed_records(tx.conn(), &self.inner.sql.sweep_lock_one, params).await {
                    Ok(rows) if rows.is_empty() => Ok(rows),
                    Ok(rows) => match self.delete_locked(&mut tx, namespace, &rows).await {
                        Ok(n) if n == rows.len() as u64 => Ok(rows),
                        Ok(n) => {
                            let _ = tx.end(B::ROLLBACK).await;
                            return Err(Error::backend(format!(
                                "{}: sweep deleted {n} of {} locked rows",
                                B::NAME,
                                rows.len()
                            )));
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
            match swept {
                Ok(rows) => {
                    tx.end(B::COMMIT).await.map_err(|e| self.map_err(e))?;
                    deleted.extend(rows);
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
    stored_record(row).map(Some)
}

/// The record in `row` as stored, live or not.
fn stored_record(row: RecordRow) -> Result<Record> {
    Ok(Record {
        data: row.data,
        version: version_from_db(row.version)?,
        created: Timestamp::from_millis(row.created),
        accessed: Timestamp::from_millis(row.accessed),
        expires: Timestamp::from_millis(row.expires),
        principal: row.principal.map(principal_from_db).transpose()?,
    })
}

/// A stored principal; one that is not a valid [`Principal`] was not written
/// by this store.
fn principal_from_db(bytes: Vec<u8>) -> Result<Principal> {
    let corrupt = || Error::Corrupt {
        reason: "a stored principal is not a valid principal".into(),
    };
    let text = String::from_utf8(bytes).map_err(|_| corrupt())?;
    Principal::new(&text).map_err(|_| corrupt())
}

/// `(data, created, accessed, expires, principal, ns, id, now)`: a new
/// record written over an expired row (`create_over_expired`,
/// `held_rotate_over_expired`).
pub(crate) fn over_expired_params<B: Backend>(key: &SessionKey, write: &RecordWrite, now: i64) -> Vec<Param> {
    vec![
        Param::Bytes(write.data.clone()),
        write.created.as_millis().into(),
        write.accessed.as_millis().into(),
        write.expires.as_millis().into(),
        B::DB::principal_param(write.principal.as_ref()),
        key.namespace.as_str().into(),
        key.id.as_str().into(),
        now.into(),
    ]
}

/// `(ns, id, data, created, accessed, expires, principal)`: a new record
/// inserted where its key has no row (`create_insert`, `held_rotate_insert`).
pub(crate) fn insert_params<B: Backend>(key: &SessionKey, write: &RecordWrite) -> Vec<Param> {
    vec![
        key.namespace.as_str().into(),
        key.id.as_str().into(),
        Param::Bytes(write.data.clone()),
        write.created.as_millis().into(),
        write.accessed.as_millis().into(),
        write.expires.as_millis().into(),
        B::DB::principal_param(write.principal.as_ref()),
    ]
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
    ids.iter().map(|id| parse_id(id)).collect()
}

fn parse_id(id: &str) -> Result<SessionId> {
    SessionId::parse(id).map_err(|_| Error::Corrupt {
        reason: "a stored session id does not parse".into(),
    })
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

            async fn list_by_principal(
                &self,
                namespace: &cloakroom_core::Namespace,
                principal: &cloakroom_core::Principal,
            ) -> cloakroom_core::Result<Vec<cloakroom_core::SessionSummary>> {
                self.0.list_by_principal(namespace, principal).await
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
            principal: Some(cloakroom_core::Principal::new("swept").unwrap()),
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
        let swept = store
            .sweep_one_by_one(&namespace, Timestamp::now(), &ids)
            .await
            .unwrap();
        for (_, row) in &swept {
            assert_eq!(row.data, b"x", "a swept row comes back as stored");
            assert_eq!(row.principal.as_deref(), Some(&b"swept"[..]));
        }
        let mut deleted: Vec<String> = swept.into_iter().map(|(id, _)| id).collect();
        deleted.sort();
        let mut expected = vec![gone_a.id.as_str().to_owned(), gone_b.id.as_str().to_owned()];
        expected.sort();
        assert_eq!(deleted, expected, "exactly the expired sessions nobody holds");
        assert!(
            store.load(&live).await.unwrap().is_some(),
            "a live session was swept"
        );

        Box::new(guard).unlock().await.unwrap();
        let again: Vec<String> = store
            .sweep_one_by_one(&namespace, Timestamp::now(), &ids)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
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
