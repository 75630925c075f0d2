//! SQLite and file errors as cloakroom errors.

use std::fmt;
use std::path::{Path, PathBuf};

use cloakroom_core::Error;
use rusqlite::ErrorCode;

/// SQLite errors as cloakroom errors: a database still busy after the busy
/// timeout (another process holds the write lock too long) is
/// [`Error::Unavailable`], retryable; anything else is [`Error::Backend`].
pub(crate) fn sql_error(e: rusqlite::Error) -> Error {
    if is_busy(&e) {
        Error::unavailable(e)
    } else {
        Error::backend(e)
    }
}

/// Whether SQLite gave up waiting for a lock another connection held.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Whether `e` is a failure of SQLite itself (to roll back), rather than a
/// lock holder's refused write (`LeaseLost`, `Gone`, …), which may have
/// released the lock and must be committed.
pub(crate) fn is_sql_failure(e: &Error) -> bool {
    matches!(e, Error::Backend { .. } | Error::Unavailable { .. })
}

/// The database file could not be created: [`Error::Backend`], as SQLite's
/// own "unable to open database file" would be, but naming the file.
pub(crate) fn create_error(path: &Path, source: std::io::Error) -> Error {
    Error::backend(CreateFailed {
        path: path.to_owned(),
        source,
    })
}

#[derive(Debug)]
struct CreateFailed {
    path: PathBuf,
    source: std::io::Error,
}

impl fmt::Display for CreateFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot create the sqlite database {}: {}",
            self.path.display(),
            self.source
        )
    }
}

impl std::error::Error for CreateFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}
