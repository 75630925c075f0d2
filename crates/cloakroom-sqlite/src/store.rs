//! [`SqliteStore`]: the [`SessionStore`] implementation.
//!
//! Every write runs on the store's writer thread ([`writer`](crate::writer)),
//! inside its batch's `BEGIN IMMEDIATE` transaction (SQLite's write lock
//! taken up front, so a read-then-write never fails half way with a stale
//! snapshot); `load`, `list_ids`, `count` and `list_by_principal` run on
//! reader connections. No transaction outlives a batch: SQLite's write lock
//! is database-wide, and holding it across a request would serialize every
//! session (Symfony's SQLite handler held `BEGIN IMMEDIATE` for a whole
//! request and did).

use std::sync::Arc;

use async_trait::async_trait;
use cloakroom_core::{
    Acquired, Capabilities, Cursor, Error, IdPage, LockKind, LockOptions, Namespace, Principal, Record,
    RecordWrite, Result, SessionId, SessionKey, SessionStore, SessionSummary, StoreUrl, SweepBatch,
    SweptRecord, Timestamp,
};
use rusqlite::{params, OptionalExtension};
use tokio::sync::OnceCell;

use crate::database::Database;
use crate::error::sql_error;
use crate::options::{SqliteOptions, Synchronous};
use crate::row::{now_ms, read_current, record_columns, record_columns_from, record_from_columns, write_row};

/// Sessions in one SQLite database file, safe across threads and OS processes
/// on one host. Cloning shares the same connections.
///
/// Building one touches no file: the database is opened on first use, so
/// call [`SessionStore::migrate`] once before use (idempotent), which is
/// also where a database that cannot be opened shows.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    options: SqliteOptions,
    /// Set by the first operation that gets its threads started; left
    /// unset (for the next operation to try again) if they cannot be.
    database: OnceCell<Arc<Database>>,
}

impl SqliteStore {
    /// A store with `options`; [`Error::Config`] if they are invalid (for
    /// example a table name that is not a plain identifier). Opens nothing:
    /// the database file is created or opened on first use.
    pub fn new(options: SqliteOptions) -> Result<Self> {
        options.validate()?;
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                options,
                database: OnceCell::new(),
            }),
        })
    }

    /// A store from `sqlite:///abs/path.db` or `sqlite:relative.db` (see
    /// [`SqliteOptions::from_url`]). Two processes given the same file share
    /// sessions and locks. Opens nothing, like [`new`](Self::new).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_store_url(&StoreUrl::parse(url)?)
    }

    pub(crate) fn from_store_url(url: &StoreUrl) -> Result<Self> {
        Self::new(SqliteOptions::from_url(url)?)
    }

    /// The options in force.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.options
    }

    /// The open database, opened now if this is the first use.
    async fn database(&self) -> Result<&Arc<Database>> {
        self.inner
            .database
            .get_or_try_init(|| async { Database::open(&self.inner.options).map(Arc::new) })
            .await
    }

    fn check_size(&self, write: &RecordWrite) -> Result<()> {
        write.check_size(self.inner.options.max_record_bytes)
    }
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
        let durable = self.inner.options.synchronous != Synchronous::Off;
        Capabilities::new(LockKind::Lease)
            .named("sqlite")
            .multi_process()
            .durable(durable)
            // A rotation is one writer job: one transaction (see `guard`).
            .atomic_rotation()
            .max_record_bytes(self.inner.options.max_record_bytes)
    }

    /// Creates the table and its indexes, and brings a table made by an
    /// older version up to date (each connection also does the latter as
    /// it opens). One transaction holding SQLite's write lock, so two
    /// processes migrating at once take turns and the second finds the
    /// work done.
    async fn migrate(&self) -> Result<()> {
        self.database()
            .await?
            .write(|sql, conn| {
                conn.execute_batch(&sql.migrate)
                    .and_then(|()| crate::schema::upgrade_in_tx(conn, sql))
                    .and_then(|()| conn.execute_batch(&sql.principal_index))
                    .map_err(sql_error)
            })
            .await
    }

    async fn load(&self, key: &SessionKey) -> Result<Option<Record>> {
        let key = key.clone();
        self.database()
            .await?
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
        self.database()
            .await?
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
        self.database()
            .await?
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
        self.database()
            .await?
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
        self.database()
            .await?
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
        crate::guard::try_lock(self.database().await?, key, options).await
    }

    async fn list_ids(&self, namespace: &Namespace, cursor: Option<Cursor>, limit: usize) -> Result<IdPage> {
        let after = parse_cursor(cursor)?;
        let namespace = namespace.clone();
        let limit = limit.max(1);
        self.database()
            .await?
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
        self.database()
            .await?
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

    async fn list_by_principal(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let (namespace, principal) = (namespace.clone(), principal.clone());
        self.database()
            .await?
            .read(move |sql, conn| {
                let mut stmt = conn.prepare_cached(&sql.by_principal).map_err(sql_error)?;
                let rows = stmt
                    .query_map(params![namespace.as_str(), principal.as_str(), now_ms()], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, i64>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, i64>(3)?,
                        ))
                    })
                    .map_err(sql_error)?;
                rows.map(|row| {
                    let (id, created, accessed, expires) = row.map_err(sql_error)?;
                    Ok(SessionSummary {
                        id: id_from_sql(id)?,
                        created: Timestamp::from_millis(created),
                        accessed: Timestamp::from_millis(accessed),
                        expires: Timestamp::from_millis(expires),
                    })
                })
                .collect()
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
        self.database()
            .await?
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
                                |row| Ok((row.get::<_, String>(0)?, record_columns_from(row, 1)?)),
                            )
                            .map_err(sql_error)?;
                        rows.map(|row| {
                            let (id, columns) = row.map_err(sql_error)?;
                            Ok(SweptRecord {
                                id: id_from_sql(id)?,
                                record: record_from_columns(columns)?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?
                    };
                    tx.prepare_cached(&sql.sweep_placeholders)
                        .and_then(|mut stmt| {
                            stmt.execute(params![namespace.as_str(), wall_now, limit_param(limit)])
                        })
                        .map_err(sql_error)?;
                    // RETURNING gives no order; the cursor is the largest id.
                    deleted.sort_unstable_by(|a, b| a.id.cmp(&b.id));
                    let next = if deleted.len() >= limit {
                        deleted.last().map(|swept| Cursor::after(&swept.id))
                    } else {
                        None
                    };
                    Ok(SweepBatch { deleted, next })
                }
            })
            .await
    }
}
