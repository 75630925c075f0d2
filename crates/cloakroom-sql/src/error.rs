//! Driver errors: what each one means to the store ([`Failure`]) and the
//! cloakroom error it becomes, keeping the driver error as its source.

use cloakroom_core::Error;

/// What a driver error means to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The connection is gone or the server cannot serve: refused, reset,
    /// shutting down, killed, pool exhausted. Retryable; inside a lock it
    /// means the lock (the transaction) is lost.
    Unavailable,
    /// A lock wait timed out or a `NOWAIT` found the row locked.
    LockBusy,
    /// A deadlock victim; the statement (on MySQL, the transaction) can be retried.
    Deadlock,
    /// A schema change found its column or index already there (MySQL):
    /// a concurrent migration made it first.
    AlreadyDone,
    /// Anything else.
    Other,
}

/// Classify `err`, asking `database_code` about errors the server sent.
pub(crate) fn classify(
    err: &sqlx::Error,
    database_code: fn(&dyn sqlx::error::DatabaseError) -> Failure,
) -> Failure {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Failure::Unavailable,
        sqlx::Error::Database(db) => database_code(db.as_ref()),
        _ => Failure::Other,
    }
}

/// The cloakroom error for a driver error of the given class.
pub(crate) fn to_error(err: sqlx::Error, failure: Failure) -> Error {
    match failure {
        Failure::Unavailable => Error::unavailable(err),
        _ => Error::backend(err),
    }
}

/// Postgres SQLSTATEs.
#[cfg(feature = "postgres")]
pub(crate) fn postgres_code(err: &dyn sqlx::error::DatabaseError) -> Failure {
    let code = err.code();
    match code.as_deref() {
        // lock_not_available: lock_timeout or NOWAIT.
        Some("55P03") => Failure::LockBusy,
        Some("40P01") => Failure::Deadlock,
        // admin_shutdown (also pg_terminate_backend), crash_shutdown,
        // cannot_connect_now, idle_in_transaction_session_timeout, too many
        // connections, and the whole connection_exception class.
        Some("57P01" | "57P02" | "57P03" | "25P03" | "53300") => Failure::Unavailable,
        Some(c) if c.starts_with("08") => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// MySQL / MariaDB error numbers.
#[cfg(feature = "mysql")]
pub(crate) fn mysql_code(err: &dyn sqlx::error::DatabaseError) -> Failure {
    let Some(my) = err.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() else {
        return Failure::Other;
    };
    match my.number() {
        // ER_LOCK_WAIT_TIMEOUT (also MariaDB's NOWAIT), ER_LOCK_NOWAIT (MySQL 8).
        1205 | 3572 => Failure::LockBusy,
        1213 => Failure::Deadlock,
        // ER_DUP_FIELDNAME, ER_DUP_KEYNAME.
        1060 | 1061 => Failure::AlreadyDone,
        // Server shutdown, connection killed, query interrupted by KILL, too
        // many connections, and the client-side "server gone" family.
        1040 | 1053 | 1077 | 1078 | 1079 | 1080 | 1152 | 1153 | 1158 | 1159 | 1160 | 1161 | 1317 | 1927
        | 2002 | 2003 | 2006 | 2013 | 2055 | 4031 => Failure::Unavailable,
        _ => Failure::Other,
    }
}
