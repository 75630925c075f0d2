//! MySQL and MariaDB: [`MysqlStore`], its guard and its [`OPENER`].
//!
//! `innodb_lock_wait_timeout` counts whole seconds, so a
//! lock attempt waits in the server for the whole seconds of its wait, and
//! one with less than a second left tries `FOR UPDATE NOWAIT` (the core's
//! backoff then decides when to try again); the guard's watchdog
//! ends a holder's transaction at its lease (the server has no sub-second
//! idle-transaction timeout). Locking transactions run at READ COMMITTED so
//! that they take no gap locks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cloakroom_core::{Opener, Result, SessionKey, SessionStore, StoreUrl};
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::pool::PoolConnection;
use sqlx::MySql;

use crate::backend::Backend;
use crate::connection::{BoxFuture, Driver, RecordRow};
use crate::error::{mysql_code, Failure};
use crate::guard::public_guard;
use crate::options::SqlOptions;
use crate::statements::{Dialect, Statements};
use crate::store::{key_params, public_store};

public_store!(
    /// A cloakroom session store on MySQL 8 or MariaDB 10.6+, locking
    /// sessions with row locks. Cloning shares the connection pool.
    MysqlStore,
    guard MysqlLockGuard,
    backend Mysql,
    database sqlx::MySql,
);

public_guard!(
    /// A held lock of a [`MysqlStore`]: an open transaction on one pooled
    /// connection.
    MysqlLockGuard,
    backend Mysql,
);

/// Opens `mysql://` and `mariadb://` URLs as a [`MysqlStore`], without
/// connecting.
pub const OPENER: Opener = Opener {
    schemes: Dialect::MySql.schemes(),
    open,
};

fn open(url: &StoreUrl) -> Result<Arc<dyn SessionStore>> {
    Ok(Arc::new(MysqlStore::new(SqlOptions::from_url(url)?)?))
}

/// The MySQL / MariaDB [`Backend`].
#[derive(Debug)]
pub(crate) struct Mysql;

impl Backend for Mysql {
    type DB = MySql;
    const NAME: &'static str = "mysql";
    const CLIENT_LEASE_WATCHDOG: bool = true;
    // The lock's wait and idle settings are put back so that unlocked
    // statements on this pooled connection behave as the server's defaults say.
    const COMMIT: &'static str =
        "COMMIT; SET SESSION innodb_lock_wait_timeout = DEFAULT, SESSION wait_timeout = DEFAULT";
    const ROLLBACK: &'static str =
        "ROLLBACK; SET SESSION innodb_lock_wait_timeout = DEFAULT, SESSION wait_timeout = DEFAULT";
    // Whole seconds; COMMIT and ROLLBACK above put the default back.
    const SWEEP_BEGIN: &'static str =
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET SESSION innodb_lock_wait_timeout = 1; BEGIN";
    const CONNECTION_ID: &'static str = "SELECT CAST(CONNECTION_ID() AS SIGNED)";
    // Unlocked writes too: at READ COMMITTED an UPDATE does not wait on rows
    // that do not match it, nor take gap locks.
    const SETUP: Option<&'static str> = Some("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED");

    fn dialect() -> Dialect {
        Dialect::MySql
    }

    fn tls_demanded(options: &MySqlConnectOptions) -> Option<String> {
        let mode = options.get_ssl_mode();
        matches!(
            mode,
            MySqlSslMode::Required | MySqlSslMode::VerifyCa | MySqlSslMode::VerifyIdentity
        )
        .then(|| format!("ssl-mode {mode:?}"))
    }

    fn classify_database(err: &dyn sqlx::error::DatabaseError) -> Failure {
        mysql_code(err)
    }

    fn begin_lock(left: Duration, lease: Duration) -> String {
        // Whole seconds only; 0 (MariaDB) means "do not wait". The idle
        // limit is the server's half of the lease: the guard's watchdog
        // rolls a lapsed holder back, but a holder that is frozen (a
        // stopped process or VM) runs no watchdog, and InnoDB would keep its
        // row lock for as long as the connection lives. The server closes a
        // connection idle for `wait_timeout`, ending the transaction.
        format!(
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; \
             SET SESSION innodb_lock_wait_timeout = {}, SESSION wait_timeout = {}; BEGIN",
            left.as_secs(),
            idle_limit(lease)
        )
    }

    fn lock_row<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        sql: &'a Statements,
        key: &'a SessionKey,
        lease: Duration,
        give_up: Instant,
    ) -> BoxFuture<'a, std::result::Result<Option<RecordRow>, sqlx::Error>> {
        Box::pin(async move {
            // The caller ran `begin_lock`.
            let mut begin = false;
            let mut first_attempt = true;
            loop {
                let left = give_up.saturating_duration_since(Instant::now());
                if begin {
                    MySql::run_script(conn, &Self::begin_lock(left, lease)).await?;
                    begin = false;
                }
                // Wait in the server (queued, woken at once) for the whole
                // seconds set above; only the first attempt, as the setting
                // may exceed what is left later.
                let select = if first_attempt && left.as_secs() >= 1 {
                    &sql.lock_wait
                } else {
                    &sql.lock_nowait
                };
                first_attempt = false;
                let attempt = match MySql::fetch_records(conn, select, key_params(key, [])).await {
                    Ok(rows) => match rows.into_iter().next() {
                        Some(row) => return Ok(Some(row)),
                        None => insert_placeholder(conn, sql, key).await,
                    },
                    Err(e) => Err(e),
                };
                match attempt {
                    Ok(Some(row)) => return Ok(Some(row)),
                    // Someone else created the row meanwhile: lock that one.
                    Ok(None) => continue,
                    Err(e) => match crate::error::classify(&e, mysql_code) {
                        Failure::LockBusy => {}
                        // A deadlock victim's whole transaction is rolled back.
                        Failure::Deadlock => begin = true,
                        _ => return Err(e),
                    },
                }
                // Busy: the core's backoff decides when to try again.
                if !begin {
                    return Ok(None);
                }
            }
        })
    }

    fn renew<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        lease: Duration,
    ) -> BoxFuture<'a, std::result::Result<(), sqlx::Error>> {
        // Any statement restarts the server's idle timer; this one also
        // sets it to the new lease (the watchdog has the client's half).
        Box::pin(async move {
            let script = format!("SET SESSION wait_timeout = {}", idle_limit(lease));
            MySql::run_script(conn, &script).await
        })
    }
}

/// The server's idle limit for a lock held for `lease`: whole seconds,
/// rounded up, so that the server never ends a transaction before the
/// holder's own deadline.
fn idle_limit(lease: Duration) -> u64 {
    lease.as_millis().div_ceil(1000).max(1) as u64
}

/// Insert the lock placeholder for a missing session; the inserting
/// transaction holds the new row's lock. `None` if the key exists after all.
async fn insert_placeholder(
    conn: &mut PoolConnection<MySql>,
    sql: &Statements,
    key: &SessionKey,
) -> std::result::Result<Option<RecordRow>, sqlx::Error> {
    let inserted = MySql::run(conn, &sql.insert_placeholder, key_params(key, [])).await?;
    Ok((inserted == 1).then(|| RecordRow {
        data: Vec::new(),
        version: 0,
        created: 0,
        accessed: 0,
        expires: 0,
        principal: None,
    }))
}
