//! io failures as cloakroom errors.

use std::io;

use cloakroom_core::Error;
use tokio::task::JoinError;

/// Every io failure is a backend failure (a full disk, a read-only mount, a
/// permission problem): none of them is fixed by retrying the same request.
pub(crate) fn io_error(e: io::Error) -> Error {
    Error::backend(e)
}

/// A blocking-pool task that panicked or was cancelled by a runtime shutting
/// down: what it was doing is unknown, so it is a backend failure.
pub(crate) fn worker_error(e: JoinError) -> Error {
    Error::backend(format!("file store worker failed: {e}"))
}
