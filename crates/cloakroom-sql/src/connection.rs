//! Talking to a connection: the one place that runs statements through sqlx
//! generically ([`Driver`]: bound parameters in, rows out, for any database
//! both backends use), and [`TxConn`], a pooled connection inside a
//! transaction this crate began.
//!
//! Everything above this module (the store, the lock guard) is written once
//! against [`Driver`]; the bounds sqlx needs live only on the blanket impl
//! below, so they are written once too.
//!
//! The transactions here are begun with plain SQL (so that `BEGIN` and its
//! settings travel in one round trip), which sqlx does not track: a
//! connection returned to the pool mid-transaction would carry our row locks
//! into the next borrower's queries. So a [`TxConn`] either ends its
//! transaction explicitly or, when dropped (a cancelled request, a panic),
//! closes the connection, which makes the server roll back and release the
//! locks at once.

use std::future::Future;
use std::pin::Pin;

use cloakroom_core::Principal;
use sqlx::pool::PoolConnection;
use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

/// A boxed, sendable future, as the trait methods below return.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One bound parameter. Every value that reaches SQL goes through one of
/// these, never through the statement text.
#[derive(Clone, Debug)]
pub(crate) enum Param {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
    /// Text or SQL `NULL` (a Postgres principal).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    NullableText(Option<String>),
    /// Bytes or SQL `NULL` (a MySQL principal).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    NullableBytes(Option<Vec<u8>>),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Int(v)
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Text(v.to_owned())
    }
}

impl From<Vec<u8>> for Param {
    fn from(v: Vec<u8>) -> Self {
        Param::Bytes(v)
    }
}

/// The columns of a stored record, in the order every record-reading
/// statement of [`Statements`](crate::statements::Statements) selects them.
#[derive(Debug)]
pub(crate) struct RecordRow {
    pub data: Vec<u8>,
    pub version: i64,
    pub created: i64,
    pub accessed: i64,
    pub expires: i64,
    /// The principal's UTF-8 bytes, checked when the row becomes a record.
    pub principal: Option<Vec<u8>>,
}

/// A session's listing columns: stored id, created, accessed, expires.
pub(crate) type SummaryRow = (String, i64, i64, i64);

/// The one column whose SQL type differs between the servers: the principal
/// is `TEXT` on Postgres and `VARBINARY` on MySQL (where a `_bin` text
/// collation would ignore trailing spaces when comparing), so it is bound and
/// read per database.
pub(crate) trait PrincipalColumn: Database {
    /// The parameter that stores `principal` (`NULL` for none).
    fn principal_param(principal: Option<&Principal>) -> Param;

    /// The principal column at `index` of `row`, as bytes.
    fn read_principal(row: &Self::Row, index: usize) -> sqlx::Result<Option<Vec<u8>>>;
}

#[cfg(feature = "postgres")]
impl PrincipalColumn for sqlx::Postgres {
    fn principal_param(principal: Option<&Principal>) -> Param {
        Param::NullableText(principal.map(|p| p.as_str().to_owned()))
    }

    fn read_principal(row: &sqlx::postgres::PgRow, index: usize) -> sqlx::Result<Option<Vec<u8>>> {
        Ok(row.try_get::<Option<String>, _>(index)?.map(String::into_bytes))
    }
}

#[cfg(feature = "mysql")]
impl PrincipalColumn for sqlx::MySql {
    fn principal_param(principal: Option<&Principal>) -> Param {
        Param::NullableBytes(principal.map(|p| p.as_str().as_bytes().to_vec()))
    }

    fn read_principal(row: &sqlx::mysql::MySqlRow, index: usize) -> sqlx::Result<Option<Vec<u8>>> {
        row.try_get(index)
    }
}

/// `rows_affected` is an inherent method of each driver's result type; this
/// lets the generic code reach it.
pub(crate) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

#[cfg(feature = "postgres")]
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

#[cfg(feature = "mysql")]
impl RowsAffected for sqlx::mysql::MySqlQueryResult {
    fn rows_affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// What the store needs from a database connection.
pub(crate) trait Driver: PrincipalColumn {
    /// Run a statement; returns the number of rows it affected (matched, on
    /// MySQL, where sqlx asks for found rows).
    fn run<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<u64>>;

    /// Rows of [`RecordRow`] columns.
    fn fetch_records<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<RecordRow>>>;

    /// Rows of an id (as text) followed by [`RecordRow`] columns.
    fn fetch_keyed_records<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<(String, RecordRow)>>>;

    /// Rows of [`SummaryRow`] columns.
    fn fetch_summaries<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<SummaryRow>>>;

    /// The first column of each row, as text.
    fn fetch_texts<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<String>>>;

    /// The first column of each row, as an integer.
    fn fetch_ints<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<i64>>>;

    /// Run statements without parameters, several at once if separated by
    /// `;` (DDL, `BEGIN`, `COMMIT`, session settings built from numbers).
    fn run_script<'a>(conn: &'a mut Self::Connection, sql: &'a str) -> BoxFuture<'a, sqlx::Result<()>>;
}

impl<DB> Driver for DB
where
    DB: PrincipalColumn,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn run<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<u64>> {
        Box::pin(async move {
            let done = bind_all(sqlx::query(sql), params).execute(conn).await?;
            Ok(done.rows_affected())
        })
    }

    fn fetch_records<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<RecordRow>>> {
        Box::pin(async move {
            let rows = bind_all(sqlx::query(sql), params).fetch_all(conn).await?;
            rows.iter().map(|row| record_at::<DB>(row, 0)).collect()
        })
    }

    fn fetch_keyed_records<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<(String, RecordRow)>>> {
        Box::pin(async move {
            let rows = bind_all(sqlx::query(sql), params).fetch_all(conn).await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, record_at::<DB>(row, 1)?)))
                .collect()
        })
    }

    fn fetch_summaries<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<SummaryRow>>> {
        Box::pin(async move {
            let rows = bind_all(sqlx::query(sql), params).fetch_all(conn).await?;
            rows.iter()
                .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?)))
                .collect()
        })
    }

    fn fetch_texts<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<String>>> {
        Box::pin(async move {
            let rows = bind_all(sqlx::query(sql), params).fetch_all(conn).await?;
            rows.iter().map(|row| row.try_get(0)).collect()
        })
    }

    fn fetch_ints<'a>(
        conn: &'a mut Self::Connection,
        sql: &'a str,
        params: Vec<Param>,
    ) -> BoxFuture<'a, sqlx::Result<Vec<i64>>> {
        Box::pin(async move {
            let rows = bind_all(sqlx::query(sql), params).fetch_all(conn).await?;
            rows.iter().map(|row| row.try_get(0)).collect()
        })
    }

    fn run_script<'a>(conn: &'a mut Self::Connection, sql: &'a str) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(async move {
            conn.execute(sqlx::raw_sql(sql)).await?;
            Ok(())
        })
    }
}

/// The [`RecordRow`] columns of `row`, starting at column `first`.
fn record_at<DB>(row: &DB::Row, first: usize) -> sqlx::Result<RecordRow>
where
    DB: PrincipalColumn,
    for<'q> i64: Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Decode<'q, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    Ok(RecordRow {
        data: row.try_get(first)?,
        version: row.try_get(first + 1)?,
        created: row.try_get(first + 2)?,
        accessed: row.try_get(first + 3)?,
        expires: row.try_get(first + 4)?,
        principal: DB::read_principal(row, first + 5)?,
    })
}

fn bind_all<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    params: Vec<Param>,
) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB>,
    Option<Vec<u8>>: Encode<'q, DB>,
{
    for p in params {
        query = match p {
            Param::Int(v) => query.bind(v),
            Param::Text(v) => query.bind(v),
            Param::Bytes(v) => query.bind(v),
            Param::NullableText(v) => query.bind(v),
            Param::NullableBytes(v) => query.bind(v),
        };
    }
    query
}

/// A connection inside a transaction this crate began.
pub(crate) struct TxConn<DB: Driver> {
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Driver> std::fmt::Debug for TxConn<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxConn")
            .field("open", &self.conn.is_some())
            .finish()
    }
}

impl<DB: Driver> TxConn<DB> {
    /// Wrap a connection on which a transaction is about to begin.
    pub(crate) fn new(conn: PoolConnection<DB>) -> Self {
        TxConn { conn: Some(conn) }
    }

    /// The connection, while the transaction is open.
    pub(crate) fn conn(&mut self) -> &mut PoolConnection<DB> {
        // `conn` is only taken by `end` and `drop`, which consume `self`.
        match self.conn.as_mut() {
            Some(c) => c,
            None => unreachable!("TxConn used after its transaction ended"),
        }
    }

    /// End the transaction with `script` (a commit or rollback) and return the
    /// connection to the pool. If that fails the connection is closed instead.
    pub(crate) async fn end(mut self, script: &str) -> sqlx::Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let out = DB::run_script(&mut conn, script).await;
        if out.is_err() {
            close(conn);
        }
        out
    }
}

impl<DB: Driver> Drop for TxConn<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn);
        }
    }
}

/// Close a connection without returning it to the pool.
fn close<DB: Driver>(mut conn: PoolConnection<DB>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Sends the protocol's goodbye on a spawned task.
        conn.close_on_drop();
        drop(conn);
    } else {
        // No runtime to spawn on: drop the socket, which the server sees as a
        // disconnect all the same.
        drop(conn.detach());
    }
}
