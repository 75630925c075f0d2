//! Postgres: one statement locks the row (inserting a placeholder for a new
//! session), `lock_timeout` bounds the wait, and the server itself ends a
//! holder that sits idle past its lease (`idle_in_transaction_session_timeout`).

use std::time::{Duration, Instant};

use cloakroom_core::{Error, Result, SessionKey};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Pool;

use crate::backend::{millis_at_least_one, Backend};
use crate::config::StoreConfig;
use crate::driver::{BoxFuture, Driver, RecordRow};
use crate::error::{postgres_code, Failure};
use crate::sql::{Dialect, Statements};
use crate::store::{key_params, RowLockStore};

/// A cloakroom session store on Postgres (row locks).
pub type PostgresStore = RowLockStore<Postgres>;

/// A held lock of a [`PostgresStore`].
pub type PostgresLockGuard = crate::guard::RowLockGuard<Postgres>;

/// The Postgres [`Backend`].
#[derive(Debug)]
pub struct Postgres;

impl Backend for Postgres {
    type DB = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];
    const CLIENT_LEASE_WATCHDOG: bool = false;
    const COMMIT: &'static str = "COMMIT";
    const ROLLBACK: &'static str = "ROLLBACK";
    const SWEEP_BEGIN: &'static str = "BEGIN; SET LOCAL lock_timeout = '1s'";
    const CONNECTION_ID: &'static str = "SELECT pg_backend_pid()::int8";

    fn dialect() -> Dialect {
        Dialect::Postgres
    }

    fn pool(url: &str, config: &StoreConfig) -> Result<Pool<Self::DB>> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| Error::Config(format!("invalid Postgres URL: {e}")))?;
        Ok(PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .idle_timeout(config.idle_timeout)
            .connect_lazy_with(options))
    }

    fn classify_database(err: &dyn sqlx::error::DatabaseError) -> Failure {
        postgres_code(err)
    }

    fn begin_lock(left: Duration, lease: Duration) -> String {
        format!("BEGIN; {}", settings(left, lease))
    }

    fn lock_row<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        sql: &'a Statements,
        key: &'a SessionKey,
        lease: Duration,
        give_up: Instant,
    ) -> BoxFuture<'a, std::result::Result<Option<RecordRow>, sqlx::Error>> {
        Box::pin(async move {
            // The caller ran `begin_lock`: the first attempt goes straight to
            // the locking statement.
            let mut next = Before::Nothing;
            loop {
                // The first attempt is made even with no time left (its
                // `lock_timeout` is then 1 ms): a lock that may not wait still
                // takes a free row.
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() && !matches!(next, Before::Nothing) {
                    return Ok(None);
                }
                match next {
                    Before::Nothing => {}
                    // Another attempt in the same transaction waits only for
                    // what is left.
                    Before::Settings => sqlx::Postgres::run_script(conn, &settings(left, lease)).await?,
                    Before::Begin => sqlx::Postgres::run_script(conn, &Self::begin_lock(left, lease)).await?,
                }
                next = Before::Settings;
                let params = [key_params(key, []), key_params(key, [])].concat();
                match sqlx::Postgres::fetch_records(conn, &sql.lock_or_insert, params).await {
                    Ok(rows) => {
                        if let Some(row) = rows.into_iter().next() {
                            return Ok(Some(row));
                        }
                        // A concurrent insert committed after this statement's
                        // snapshot: the row exists now, go again.
                    }
                    Err(e) => match crate::error::classify(&e, postgres_code) {
                        Failure::LockBusy => return Ok(None),
                        Failure::Deadlock => {
                            sqlx::Postgres::run_script(conn, "ROLLBACK").await?;
                            next = Before::Begin;
                        }
                        _ => return Err(e),
                    },
                }
            }
        })
    }

    fn renew<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        lease: Duration,
    ) -> BoxFuture<'a, std::result::Result<(), sqlx::Error>> {
        Box::pin(async move {
            // Any statement restarts the server's idle timer; this one also
            // sets it to the new lease.
            let script = format!(
                "SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
                millis_at_least_one(lease)
            );
            sqlx::Postgres::run_script(conn, &script).await
        })
    }
}

/// What `lock_row` runs before its next attempt.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    Settings,
    Begin,
}

/// The locking transaction's settings: how long its lock statement may wait
/// and when the server ends it if its holder goes quiet. Durations formatted
/// as integers are the only values written into these statements; `SET`
/// takes no bound parameters.
fn settings(left: Duration, lease: Duration) -> String {
    format!(
        "SET LOCAL lock_timeout = '{}ms'; SET LOCAL idle_in_transaction_session_timeout = '{}ms'",
        millis_at_least_one(left),
        millis_at_least_one(lease),
    )
}
