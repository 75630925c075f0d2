//! The one place that talks to sqlx generically: run a statement with bound
//! parameters and read rows back, for any database both backends use.
//!
//! Everything above this module (the store, the lock guard) is written once
//! against [`Driver`]; the bounds sqlx needs live only on the blanket impl
//! below, so they are written once too.

use std::future::Future;
use std::pin::Pin;

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Row, Type};

/// A boxed, sendable future, as the trait methods below return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One bound parameter. Every value that reaches SQL goes through one of
/// these, never through the statement text.
#[derive(Clone, Debug)]
pub enum Param {
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
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
/// statement of [`Statements`](crate::sql::Statements) selects them.
#[derive(Debug)]
pub struct RecordRow {
    pub data: Vec<u8>,
    pub version: i64,
    pub created: i64,
    pub accessed: i64,
    pub expires: i64,
}

/// `rows_affected` is an inherent method of each driver's result type; this
/// lets the generic code reach it.
pub trait RowsAffected {
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
pub trait Driver: Database {
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
    DB: Database,
    DB::QueryResult: RowsAffected,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Vec<u8>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
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
            rows.iter()
                .map(|row| {
                    Ok(RecordRow {
                        data: row.try_get(0)?,
                        version: row.try_get(1)?,
                        created: row.try_get(2)?,
                        accessed: row.try_get(3)?,
                        expires: row.try_get(4)?,
                    })
                })
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

fn bind_all<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, DB::Arguments<'q>>,
    params: Vec<Param>,
) -> sqlx::query::Query<'q, DB, DB::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Vec<u8>: Encode<'q, DB> + Type<DB>,
{
    for p in params {
        query = match p {
            Param::Int(v) => query.bind(v),
            Param::Text(v) => query.bind(v),
            Param::Bytes(v) => query.bind(v),
        };
    }
    query
}
