//! A session's row: its columns read into what the store works with, and
//! written from a record.

use cloakroom_core::{Error, Principal, Record, RecordWrite, Result, SessionKey, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::sql_error;
use crate::schema::Sql;

/// The wall clock as rows keep time: milliseconds since the epoch.
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

/// The raw columns `version, data, created, accessed, expires, principal`
/// of a row.
pub(crate) type RecordColumns = (i64, Option<Vec<u8>>, i64, i64, i64, Option<String>);

/// Read [`RecordColumns`] from a row, starting at column `first`.
pub(crate) fn record_columns_from(row: &Row<'_>, first: usize) -> rusqlite::Result<RecordColumns> {
    Ok((
        row.get(first)?,
        row.get(first + 1)?,
        row.get(first + 2)?,
        row.get(first + 3)?,
        row.get(first + 4)?,
        row.get(first + 5)?,
    ))
}

/// Read [`RecordColumns`] from a row that holds nothing else.
pub(crate) fn record_columns(row: &Row<'_>) -> rusqlite::Result<RecordColumns> {
    record_columns_from(row, 0)
}

/// A record from its raw columns; [`Error::Corrupt`] if they cannot be one.
pub(crate) fn record_from_columns(columns: RecordColumns) -> Result<Record> {
    let (version, data, created, accessed, expires, principal) = columns;
    Ok(Record {
        data: data.ok_or_else(|| Error::Corrupt {
            reason: "record row without data".into(),
        })?,
        version: version_from_sql(version)?,
        created: Timestamp::from_millis(created),
        accessed: Timestamp::from_millis(accessed),
        expires: Timestamp::from_millis(expires),
        principal: principal.as_deref().map(principal_from_sql).transpose()?,
    })
}

/// A stored principal; [`Error::Corrupt`] if it is not one (the store only
/// writes valid ones).
pub(crate) fn principal_from_sql(text: &str) -> Result<Principal> {
    Principal::new(text).map_err(|_| Error::Corrupt {
        reason: "a row's principal is not a valid principal".into(),
    })
}

/// Write `write` (its principal included) as version `version` of the row
/// of `key`, with `sql` one of the statements that take these eight
/// parameters.
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
                write.principal.as_ref().map(Principal::as_str),
            ])
        })
        .map_err(sql_error)?;
    Ok(())
}
