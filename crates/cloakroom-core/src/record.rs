//! What a backend stores: opaque encoded bytes plus the metadata it needs to
//! lock, fence, expire and sweep.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};
use crate::id::Principal;

/// Wall-clock time as whole milliseconds since the Unix epoch: the unit every
/// backend can store in an integer column, a Redis hash field or a file.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let millis = match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            // A clock before 1970 is a broken clock; treat it as the epoch.
            Err(_) => 0,
        };
        Timestamp(millis)
    }

    /// From milliseconds since the epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This time plus `d`, saturating instead of overflowing.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// This time minus `d`, saturating instead of overflowing.
    pub fn saturating_sub(self, d: Duration) -> Self {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        Timestamp(self.0.saturating_sub(ms))
    }
}

/// One stored session.
///
/// `data` is opaque to stores: the [`SessionData`](crate::SessionData) codec
/// encodes and decodes it. `version` is the fencing and compare-and-set token:
/// it starts at 1 when the record is created and every data write adds 1;
/// [`touch`](crate::SessionStore::touch) leaves it alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Encoded session data.
    pub data: Vec<u8>,
    /// Data version, 1 on creation, +1 on each data write.
    pub version: u64,
    /// When the session was created.
    pub created: Timestamp,
    /// When the session was last used.
    pub accessed: Timestamp,
    /// When the session stops existing. A store never returns a record whose
    /// `expires` is not after the current time, swept or not.
    pub expires: Timestamp,
    /// Who the session belongs to, if anyone: what
    /// [`SessionStore::list_by_principal`](crate::SessionStore::list_by_principal)
    /// finds it by.
    pub principal: Option<Principal>,
}

impl Record {
    /// Whether the record is still live at `now`.
    pub fn is_live_at(&self, now: Timestamp) -> bool {
        self.expires > now
    }
}

/// The part of a record a writer supplies; the store assigns the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordWrite {
    /// Encoded session data.
    pub data: Vec<u8>,
    /// Creation time, kept as is when the record already exists.
    pub created: Timestamp,
    /// Access time.
    pub accessed: Timestamp,
    /// Expiry time.
    pub expires: Timestamp,
    /// Who the session belongs to; replaces the stored one on every write of
    /// data (a touch keeps it).
    pub principal: Option<Principal>,
}

impl RecordWrite {
    /// [`Error::TooLarge`] if the data is over `limit` bytes: checked before
    /// anything is written, so a refused write changes nothing.
    pub fn check_size(&self, limit: usize) -> Result<()> {
        if self.data.len() > limit {
            return Err(Error::TooLarge {
                size: self.data.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The record this write produces at `version`.
    pub fn into_record(self, version: u64) -> Record {
        Record {
            data: self.data,
            version,
            created: self.created,
            accessed: self.accessed,
            expires: self.expires,
            principal: self.principal,
        }
    }
}

/// The check a lock holder makes before it writes: the record it loaded
/// under the lock (`loaded_version`, `None` for a new session) must still be
/// the live one (`live_version`, `None` if missing or expired).
///
/// Someone may have written without the lock meanwhile (an administrator's
/// delete, an unlocked policy sharing the namespace): a deleted or expired
/// record is [`Error::Gone`] (a save must not revive it), another version is
/// [`Error::Conflict`].
pub fn check_loaded_is_live(loaded_version: Option<u64>, live_version: Option<u64>) -> Result<()> {
    match (loaded_version, live_version) {
        (Some(loaded), Some(live)) if loaded == live => Ok(()),
        (Some(expected), Some(found)) => Err(Error::Conflict { expected, found }),
        (Some(_), None) => Err(Error::Gone),
        (None, None) => Ok(()),
        (None, Some(found)) => Err(Error::Conflict { expected: 0, found }),
    }
}
