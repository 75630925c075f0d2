//! The one error type of cloakroom.

use std::time::Duration;

/// A boxed error from a backend driver, kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, cloakroom_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong with a session, as a thing the caller can act on.
///
/// Backends map their driver errors onto these variants: a refused or dropped
/// connection is [`Error::Unavailable`] (retry later), anything else they
/// cannot classify is [`Error::Backend`] with the driver error as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A session id or namespace failed the strict parse. No backend saw it.
    #[error("invalid {what}: {reason}")]
    InvalidId {
        /// `"session id"` or `"namespace"`.
        what: &'static str,
        /// Why it was rejected (never echoes the raw input, which may be huge or hostile).
        reason: &'static str,
    },

    /// The session lock was not acquired within the wait timeout.
    /// Retry later, or answer the request with 503 and `Retry-After`.
    #[error("timed out after {waited:?} waiting for the session lock")]
    LockTimeout {
        /// How long the caller waited.
        waited: Duration,
    },

    /// An optimistic save found a newer version in the store: someone else
    /// saved first. Reload and redo the change.
    #[error("session changed meanwhile: expected version {expected}, store has {found}")]
    Conflict {
        /// The version this writer read.
        expected: u64,
        /// The version found in the store.
        found: u64,
    },

    /// The lock's lease ran out before this save, so another holder may have
    /// taken the lock and written. The save was refused and changed nothing.
    #[error("the session lock's lease ran out; the save was refused and changed nothing")]
    LeaseLost,

    /// The session was deleted (logout) or expired while this writer held a
    /// copy. The save was dropped so that it cannot bring the session back.
    #[error("the session was deleted or expired meanwhile; the save was dropped")]
    Gone,

    /// This request already finished with its session (committed it early
    /// to release the lock before a long operation, rolled it back, or
    /// deleted it): a later change could not be saved, so it is refused
    /// rather than silently dropped. Reads still see the committed data.
    #[error("the session was already committed or released in this request; later changes are refused")]
    Released,

    /// The stored bytes are not a cloakroom record this version can read.
    #[error("corrupt session record: {reason}")]
    Corrupt {
        /// What was wrong with the bytes.
        reason: String,
    },

    /// The encoded session is larger than the configured or backend limit.
    /// Nothing was written.
    #[error("session record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit in force.
        limit: usize,
    },

    /// A stored value does not decode as the type asked for. The other keys of
    /// the session are unaffected and still readable.
    #[error("session value {key:?} does not decode as {type_name}: {source}")]
    Decode {
        /// The session key whose value failed.
        key: String,
        /// The Rust type asked for.
        type_name: &'static str,
        /// The decoder's error.
        #[source]
        source: rmp_serde::decode::Error,
    },

    /// A value could not be encoded (for example a map with non-string keys
    /// that the serializer rejects).
    #[error("session value {key:?} could not be encoded: {source}")]
    Encode {
        /// The session key being written.
        key: String,
        /// The encoder's error.
        #[source]
        source: rmp_serde::encode::Error,
    },

    /// The backend cannot be reached right now (connection refused or lost,
    /// server restarting, pool exhausted past the deadline). Retryable.
    #[error("session store unavailable: {source}")]
    Unavailable {
        /// The driver error.
        #[source]
        source: BoxError,
    },

    /// The requested combination cannot keep cloakroom's promise, or the
    /// backend was not compiled in (for example a URL scheme whose Cargo
    /// feature is off, or a single-process store asked to serve several).
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// A configuration value (URL, option) is malformed.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Any other backend failure, with the driver error as its source.
    #[error("session store error: {source}")]
    Backend {
        /// The driver error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Wrap a driver error as [`Error::Backend`].
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Error::Backend {
            source: source.into(),
        }
    }

    /// Wrap a driver error as [`Error::Unavailable`].
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Error::Unavailable {
            source: source.into(),
        }
    }

    /// Whether the same request may succeed if simply tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::LockTimeout { .. } | Error::Conflict { .. } | Error::Unavailable { .. }
        )
    }
}
