//! [`SqliteStore`]: the [`SessionStore`] implementation.
//!
//! Every write runs on the store's writer thread ([`writer`](crate::writer)),
//! inside its batch's `BEGIN IMMEDIATE` transaction (SQLite's write lock
//! taken up front, so a read-then-write never fails half way with a stale
//! snapshot); `load`, `list_ids` and `count` run on reader connections. No
//! transaction outlives a batch: SQLite's write lock is database-wide, and
//! holding it across a request would serialize every session (Symfony's
//! SQLite handler held `BEGIN IMMEDIATE` for a whole request and did).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cloakroom_core::{
    Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Record, RecordWrite,
    Result, SessionId, SessionKey, SessionStore, SweepBatch, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::config::SqliteOptions;
use crate::pool::{sql_error, Readers};
use crate::schema::Sql;
use crate::writer::Writer;

/// Sessions in one SQLite database file, safe across threads and OS processes
/// on one host. Cloning shares the same connections.
///
/// Call [`SessionStore::migrate`] once before use (idempotent).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) writer: Writer,
    readers: Readers,
    pub(crate) options: SqliteOptions,
}

impl SqliteStore {
    /// A store on the database file at `path` with default options. Opens
    /// nothing yet: connections are made on first use (the writer and
    /// reader threads start here).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        Self::with_options(SqliteOptions::new(path))
    }

    /// A store with explicit options; [`Error::Config`] if they are invalid
    /// (for example a table name that is not a plain identifier).
    pub fn with_options(options: SqliteOptions) -> Result<Self> {
        options.validate()?;
        let sql = Arc::new(Sql::new(&options.table));
        // Held shared by each read, exclusively by the writer's WAL
        // checkpoint (see `checkpoint`).
        let gate = Arc::new(RwLock::new(()));
        // One connection writes; the rest of `max_connections` read, and
        // there is always at least one reader.
        let readers = options.max_connections.saturating_sub(1).max(1);
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                writer: Writer::start(&options, sql.clone(), gate.clone())?,
                readers: Readers::start(readers, &options, &sql, &gate)?,
                options,
            }),
        })
    }

    /// A store from `sqlite:///abs/path.db` or `sqlite:relative.db` (see
    /// [`SqliteOptions::from_url`]). Two processes given the same file share
    /// sessions and locks.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::with_options(SqliteOptions::from_url(url)?)
    }

    /// The options in force.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.options
    }

    fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.options.max_record_bytes)
    }
}

impl Inner {
    /// Run `work` on the writer thread, in its next batch's transaction,
    /// and wait for the committed result.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Sql, &Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.run(move |conn, sql| work(sql, conn)).await
    }

    /// Run `work` on a reader connection.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Sql, &Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.readers.run(move |conn, sql| work(sql, conn)).await
    }
}

pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}

/// The metadata of a row, as writers check it.
#[derive(Debug)]
pub(crate) struct Current {
    pub version: u64,
    pub created: Timestamp,
    pub expires: Timestamp,
    pub lock_token: Option<String>,
    pub lock_until: Option<i64>,
}

impl Current {
    /// The row's version if it is a live record (not a placeholder, not expired).
    pub(crate) fn live_version(&self, now: i64) -> Option<u64> {
        (self.version > 0 && self.expires.as_millis() > now).then_some(self.version)
    }

    pub(crate) fn is_locked(&self, now: i64) -> bool {
        self.lock_token.is_some() && self.lock_until.is_some_and(|until| until > now)
    }
}

pub(crate) fn read_current(conn: &Connection, sql: &Sql, key: &SessionKey) -> Result<Option<Current>> {
    conn.prepare_cached(&sql.current)
        .and_then(|mut stmt| {
            stmt.query_row(params![key.namespace.as_str(), key.id.as_str()], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, Option<i64>>(4)?,
                ))
            })
            .optional()
        })
        .map_err(sql_error)?
        .map(|(version, created, expires, lock_token, lock_until)| {
            Ok(Current {
                version: version_from_sql(version)?,
                created: Timestamp::from_millis(created),
                expires: Timestamp::from_millis(expires),
                lock_token,
                lock_until,
            })
        })
        .transpose()
}

fn version_from_sql(version: i64) -> Result<u64> {
    u64::try_from(version).map_err(|_| Error::Corrupt {
        reason: format!("negative record version {version}"),
    })
}

/// The raw columns `version, data, created, accessed, expires` of a row.
pub(crate) type RecordColumns = (i64, Option<Vec<u8>>, i64, i64, i64);

/// Read [`RecordColumns`] from a row.
pub(crate) fn record_columns(row: &Row<'_>) -> rusqlite::Result<RecordColumns> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
}

/// A record from its raw columns; [`Error::Corrupt`] if they cannot be one.
pub(crate) fn record_from_columns(columns: RecordColumns) -> Result<Record> {
    let (version, data, created, accessed, expires) = columns;
    Ok(Record {
        data: data.ok_or_else(|| Error::Corrupt {
            reason: "record row without data".into(),
        })?,
        version: version_from_sql(version)?,
        created: Timestamp::from_millis(created),
        accessed: Timestamp::from_millis(accessed),
        expires: Timestamp::from_millis(expires),
    })
}

/// Write `write` as version `version` of the row of `key` (which exists).
pub(crate) fn write_row(
    tx: &Connection,
    sql: &str,
    key: &SessionKey,
    version: u64,
    created: Timestamp,
    write: &RecordWrite,
) -> Result<()> {
    let version = i64::try_from(version).map_err(|_| Error::backend("record version overflow"))?;
    tx.prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.execute(params![
                key.namespace.as_str(),
                key.id.as_str(),
                version,
                write.data,
                created.as_millis(),
                write.accessed.as_millis(),
                write.expires.as_millis(),
            ])
        })
        .map_err(sql_error)?;
    Ok(())
}

/// Where an id-ordered page resumes: after the cursor's id, or from the start.
fn parse_cursor(cursor: Option<Cursor>) -> Result<String> {
    Ok(Cursor::resume_after(cursor)?.map_or_else(String::new, |id| id.as_str().to_owned()))
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit.max(1)).unwrap_or(i64::MAX)
}

fn id_from_sql(text: String) -> Result<SessionId> {
    SessionId::parse(&text).map_err(|_| Error::Corrupt {
        reason: "a row's id is not a session id".into(),
    })
}

#[async_trait]
impl SessionStore for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        // With synchronous=OFF a power cut can lose or corrupt commits.
        let durable = self.inner.options.synchronous != crate::Synchronous::Off;
        Capabilities::new(
            true,
            durable,
            LockKind::Lease,
            self.inner.options.max_record_bytes,
        )
    }

    async fn migrate(&self) -> Result<()> {
        self.inner
            .write(|sql, conn| conn.execute_batch(&sql.migrate).map_err(sql_error))
            .await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.inner
            .read(move |sql, conn| {
                conn.prepare_cached(&sql.load)
                    .and_then(|mut stmt| {
                        stmt.query_row(
                            params![key.namespace.as_str(), key.id.as_str(), now_ms()],
                            record_columns,
                        )
                        .optional()
                    })
                    .map_err(sql_error)?
                    .map(record_from_columns)
                    .transpose()
            })
            .await
    }

    async fn create(&self, key: &SessionKey, write: RecordWrite) -> Result<Record> {
        self.check_size(&write)?;
        let key = key.clone();
        self.inner
            .write(move |sql, conn| {
                let tx = conn;
                let current = read_current(tx, sql, &key)?;
                if let Some(found) = current.and_then(|c| c.live_version(now_ms())) {
                    return Err(Error::Conflict { expected: 0, found });
                }
                write_row(tx, &sql.insert_or_replace_expired, &key, 1, write.created, &write)?;
                Ok(write.into_record(1))
            })
            .await
    }

    async fn save(&self, key: &SessionKey, write: RecordWrite, expected: Option<u64>) -> Result<u64> {
        self.check_size(&write)?;
        let key = key.clone();
        self.inner
            .write(move |sql, conn| {
                let tx = conn;
                let current = read_current(tx, sql, &key)?;
                let Some((live, created)) =
                    current.and_then(|c| c.live_version(now_ms()).map(|v| (v, c.created)))
                else {
                    return Err(Error::Gone);
                };
                if let Some(expected) = expected.filter(|e| *e != live) {
                    return Err(Error::Conflict {
                        expected,
                        found: live,
                    });
                }
                write_row(tx, &sql.update_data, &key, live + 1, created, &write)?;
                Ok(live + 1)
            })
            .await
    }

    async fn delete(&self, key: &SessionKey) -> Result<bool> {
        let key = key.clone();
        self.inner
            .write(move |sql, conn| {
                {
                    let tx = conn;
                    let now = now_ms();
                    let Some(current) = read_current(tx, sql, &key)? else {
                        return Ok(false);
                    };
                    // A held lock stays held (as a placeholder row): its
                    // holder's save then fails with Gone instead of another
                    // locker sneaking in meanwhile.
                    let statement = if current.is_locked(now) {
                        &sql.make_placeholder
                    } else {
                        &sql.delete_row
                    };
                    tx.prepare_cached(statement)
                        .and_then(|mut stmt| stmt.execute(params![key.namespace.as_str(), key.id.as_str()]))
                        .map_err(sql_error)?;
                    Ok(current.live_version(now).is_some())
                }
            })
            .await
    }

    async fn touch(&self, key: &SessionKey, accessed: Timestamp, expires: Timestamp) -> Result<bool> {
        let key = key.clone();
        self.inner
            .write(move |sql, conn| {
                let changed = conn
                    .prepare_cached(&sql.touch_live)
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            key.namespace.as_str(),
                            key.id.as_str(),
                            now_ms(),
                            accessed.as_millis(),
                            expires.as_millis(),
                        ])
                    })
                    .map_err(sql_error)?;
                Ok(changed > 0)
            })
            .await
    }

    async fn try_lock(&self, key: &SessionKey, options: LockOptions) -> Result<Acquired> {
        crate::lock::try_lock(&self.inner, key, options).await
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = parse_cursor(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.inner
            .read(move |sql, conn| {
                let mut stmt = conn.prepare_cached(&sql.list).map_err(sql_error)?;
                // One more than asked, to know whether another page follows.
                let rows = stmt
                    .query_map(
                        params![namespace.as_str(), after, now_ms(), limit_param(limit + 1)],
                        |row| row.get::<_, String>(0),
                    )
                    .map_err(sql_error)?;
                let mut ids = Vec::with_capacity(limit);
                let mut more = false;
                for id in rows {
                    let id = id_from_sql(id.map_err(sql_error)?)?;
                    if ids.len() == limit {
                        more = true;
                        break;
                    }
                    ids.push(id);
                }
                let next = if more { ids.last().map(Cursor::after) } else { None };
                Ok(IdPage { ids, next })
            })
            .await
    }

    async fn count(&self, namespace: &Namespace) -> Result<u64> {
        let namespace = namespace.clone();
        self.inner
            .read(move |sql, conn| {
                let n: i64 = conn
                    .prepare_cached(&sql.count)
                    .and_then(|mut stmt| {
                        stmt.query_row(params![namespace.as_str(), now_ms()], |row| row.get(0))
                    })
                    .map_err(sql_error)?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn sweep_expired(
        &self,
        namespace: &Namespace,
        now: Timestamp,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<SweepBatch> {
        let after = parse_cursor(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.inner
            .write(move |sql, conn| {
                {
                    let tx = conn;
                    let wall_now = now_ms();
                    let mut deleted = {
                        let mut stmt = tx.prepare_cached(&sql.sweep).map_err(sql_error)?;
                        let rows = stmt
                            .query_map(
                                params![
                                    namespace.as_str(),
                                    after,
                                    now.as_millis(),
                                    wall_now,
                                    limit_param(limit)
                                ],
                                |row| row.get::<_, String>(0),
                            )
                            .map_err(sql_error)?;
                        rows.map(|id| id.map_err(sql_error).and_then(id_from_sql))
                            .collect::<Result<Vec<_>>>()?
                    };
                    tx.prepare_cached(&sql.sweep_placeholders)
                        .and_then(|mut stmt| {
                            stmt.execute(params![namespace.as_str(), wall_now, limit_param(limit)])
                        })
                        .map_err(sql_error)?;
                    // RETURNING gives no order; the cursor is the largest id.
                    deleted.sort_unstable();
                    let next = if deleted.len() >= limit {
                        deleted.last().map(Cursor::after)
                    } else {
                        None
                    };
                    Ok(SweepBatch { deleted, next })
                }
            })
            .await
    }
}
