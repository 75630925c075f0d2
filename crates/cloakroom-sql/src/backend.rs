//! The seam between the shared row-lock store and one database: how to read
//! its connect options and open a pool, how to take a row lock within a
//! deadline, how a holder's lease is enforced, and what the server's error
//! codes mean. Implemented in `postgres.rs` and `mysql.rs` only.

use std::fmt;
use std::time::{Duration, Instant};

use cloakroom_core::{Error, Result, SessionKey};
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::Pool;

use crate::connection::{BoxFuture, Driver, RecordRow};
use crate::error::Failure;
use crate::options::{tls_compiled_in, SqlOptions};
use crate::statements::{Dialect, Statements};

/// The connect options of backend `B`'s driver.
pub(crate) type ConnectOptionsOf<B> =
    <<<B as Backend>::DB as sqlx::Database>::Connection as sqlx::Connection>::Options;

/// Read `B`'s driver URL, without connecting (an invalid one is
/// `Error::Config`).
pub(crate) fn connect_options<B: Backend>(driver_url: &str) -> Result<ConnectOptionsOf<B>> {
    let options: ConnectOptionsOf<B> = driver_url
        .parse()
        .map_err(|e| Error::Config(format!("invalid {} URL: {e}", B::dialect().name())))?;
    if let Some(mode) = B::tls_demanded(&options) {
        tls_compiled_in(B::dialect(), &mode)?;
    }
    Ok(quiet_lock_waits(options))
}

/// A pool of `B` that connects on demand. It starts the pool's maintenance
/// task, so it is called inside the Tokio runtime, on first use.
pub(crate) fn pool<B: Backend>(connect: &ConnectOptionsOf<B>, options: &SqlOptions) -> Pool<B::DB> {
    let pool = PoolOptions::<B::DB>::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .idle_timeout(options.idle_timeout);
    let pool = match B::SETUP {
        Some(setup) => pool.after_connect(move |conn, _meta| B::DB::run_script(conn, setup)),
        None => pool,
    };
    pool.connect_lazy_with(connect.clone())
}

/// One database the row-lock store runs on.
pub(crate) trait Backend: Send + Sync + fmt::Debug + Sized + 'static {
    /// The sqlx database.
    type DB: Driver;

    /// Name used in messages.
    const NAME: &'static str;
    /// Whether the guard must end a lapsed holder's transaction itself
    /// (the server has no sub-second idle-transaction timeout).
    const CLIENT_LEASE_WATCHDOG: bool;
    /// Ends the locking transaction, keeping its writes.
    const COMMIT: &'static str;
    /// Ends the locking transaction, dropping its writes (and its placeholder row).
    const ROLLBACK: &'static str;
    /// Starts a read-committed sweep transaction in which a lock wait gives
    /// up after about a second. A sweep only takes rows that were not locked
    /// (`SKIP LOCKED`), so any wait means it has run into a session in use,
    /// and it must not sit on the rows it holds while it waits (the server's
    /// default is 50 s on MySQL, forever on Postgres).
    const SWEEP_BEGIN: &'static str;
    /// Returns the server's id for the current connection, as a signed integer.
    const CONNECTION_ID: &'static str;

    /// The server's SQL dialect and URL schemes.
    fn dialect() -> Dialect;

    /// Statements every new connection runs first, if any.
    const SETUP: Option<&'static str>;

    /// The TLS mode the connect options insist on (`sslmode VerifyFull`),
    /// if they insist on one: without the `tls` feature that is
    /// `Error::Unsupported`, never a silent plain-text connection.
    fn tls_demanded(options: &ConnectOptionsOf<Self>) -> Option<String>;

    /// What an error the server sent means to the store.
    fn classify_database(err: &dyn sqlx::error::DatabaseError) -> Failure;

    /// The script that begins a locking transaction, settings included, in
    /// one round trip: for a lock that may wait `left` for the row and holds
    /// a lease of `lease`. Only numbers are written into it.
    fn begin_lock(left: Duration, lease: Duration) -> String;

    /// Lock the row of `key` in the transaction that the caller began on
    /// `conn` with [`begin_lock`](Self::begin_lock), inserting a placeholder
    /// row if the key is missing, giving up at `give_up`. Returns the locked
    /// row. On a lock timeout this returns `Ok(None)`; the caller maps it to
    /// `LockTimeout`. A backend that has to start over (a deadlock victim)
    /// begins its transaction again itself.
    fn lock_row<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        sql: &'a Statements,
        key: &'a SessionKey,
        lease: Duration,
        give_up: Instant,
    ) -> BoxFuture<'a, std::result::Result<Option<RecordRow>, sqlx::Error>>;

    /// Extend the server-side part of the lease (if any) to `lease` from now.
    fn renew<'a>(
        conn: &'a mut PoolConnection<Self::DB>,
        lease: Duration,
    ) -> BoxFuture<'a, std::result::Result<(), sqlx::Error>>;
}

/// sqlx logs every statement slower than a second as a WARN "slow
/// statement". A session lock is a statement that waits for another
/// request's row lock, so under contention every waiter would warn, burying
/// real problems. Slow statements are logged at DEBUG instead; errors are
/// returned, not logged, so none is hidden.
fn quiet_lock_waits<O: sqlx::ConnectOptions>(options: O) -> O {
    options.log_slow_statements(log::LevelFilter::Debug, std::time::Duration::from_secs(1))
}
