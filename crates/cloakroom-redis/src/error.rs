//! redis-rs errors as cloakroom errors.

use cloakroom_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// `Unavailable` for anything a retry later may cure (connection refused or
/// dropped, timeouts, a server still loading its dataset, a cluster that is
/// resharding or down); `Backend` for everything else.
pub(crate) fn map_redis(err: RedisError) -> Error {
    if is_transient(&err) {
        Error::unavailable(err)
    } else {
        Error::backend(err)
    }
}

fn is_transient(err: &RedisError) -> bool {
    if err.is_io_error() || err.is_connection_refusal() || err.is_connection_dropped() || err.is_timeout() {
        return true;
    }
    matches!(
        err.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    ) || err.code() == Some("BUSY")
}

/// A reply that does not have the shape our own scripts return.
pub(crate) fn unexpected_reply(what: &str, value: &redis::Value) -> Error {
    Error::backend(format!("unexpected redis reply to {what}: {value:?}"))
}
