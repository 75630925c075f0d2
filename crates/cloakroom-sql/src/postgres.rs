//! Postgres: [`PostgresStore`], its guard and its [`OPENER`].
//!
//! One statement locks the row (inserting a placeholder for a new session),
//! `lock_timeout` bounds the wait, and the server itself ends a holder that
//! sits idle past its lease (`idle_in_transaction_session_timeout`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_core::{Opener, Result, SessionKey, SessionStore, StoreUrl};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgSslMode};

use crate::backend::Backend;
use crate::connection::{BoxFuture, Driver, RecordRow};
use crate::error::{postgres_code, Failure};
use crate::guard::public_guard;
use crate::options::SqlOptions;
use crate::statements::{Dialect, Statements};
use crate::store::{key_params, public_store};

public_store!(
    /// A cloakroom session store on Postgres, locking sessions with row
    /// locks. Cloning shares the connection pool.
    PostgresStore,
    guard PostgresLockGuard,
    backend Postgres,
    database sqlx::Postgres,
);

public_guard!(
    /// A held lock of a [`PostgresStore`]: an open transaction on one pooled
    /// connection.
    PostgresLockGuard,
    backend Postgres,
);

/// Opens `postgres://` and `postgresql://` URLs as a [`PostgresStore`],
/// without connecting.
pub const OPENER: Opener = Opener {
    schemes: Dialect::Postgres.schemes(),
    open,
};

fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    Ok(Arc::new(PostgresStore::new(SqlOptions::from_url(url)?)?))
}

/// The Postgres [`Backend`].
#[derive(Debug)]
pub(crate) struct Postgres;

impl Backend for Postgres {
    type DB = sqlx::Postgres;
    const NAME: &'static str = "postgres";
    const CLIENT_LEASE_WATCHDOG: bool = false;
    const COMMIT: &'static str = "COMMIT";
    const ROLLBACK: &'static str = "ROLLBACK";
    const SWEEP_BEGIN: &'static str = "BEGIN; SET LOCAL lock_timeout = '1s'";
    const CONNECTION_ID: &'static str = "SELECT pg_backend_pid()::int8";
    const SETUP: Option<&'static str> = None;

    fn dialect() -> Dialect {
        Dialect::Postgres
    }

    /// The URL is read as libpq reads it, `PG*` environment variables and
    /// the password file (`~/.pgpass`) included; `PGSSLMODE` too.
    fn tls_demanded(options: &PgConnectOptions) -> Option<String> {
        let mode = options.get_ssl_mode();
        matches!(
            mode,
            PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
        )
        .then(|| format!("sslmode {mode:?}"))
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

/// Whole milliseconds of `d`, at least 1 (0 turns Postgres' timeouts off).
fn millis_at_least_one(d: Duration) -> u128 {
    d.as_millis().max(1)
}
