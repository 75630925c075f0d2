//! Options of the SQLite store and their URL form.

use std::path::PathBuf;
use std::time::Duration;

use cloakroom_core::{Error, Result};

/// Default table name.
pub const DEFAULT_TABLE: &str = "cloakroom_sessions";
/// Default size limit of one encoded record.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 4 * 1024 * 1024;
/// Default size past which the WAL file is checkpointed and truncated.
pub const DEFAULT_MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;
/// Most connections one store may keep: more buys nothing against one
/// database-wide write lock, and the bound keeps the permit count sane.
const MAX_CONNECTIONS: usize = 1024;

/// SQLite's `synchronous` setting: how hard a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// No fsync; a power cut may corrupt or lose recent commits.
    Off,
    /// The default with WAL: commits are atomic and consistent; a power cut
    /// may lose the last commits but never corrupts the database.
    #[default]
    Normal,
    /// fsync at every commit: an acknowledged save survives a power cut.
    Full,
    /// Like `Full`, plus a sync of the directory on some file changes.
    Extra,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }

    fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "off" => Ok(Synchronous::Off),
            "normal" => Ok(Synchronous::Normal),
            "full" => Ok(Synchronous::Full),
            "extra" => Ok(Synchronous::Extra),
            _ => Err(Error::Config(format!(
                "synchronous: expected off, normal, full or extra, got {text:?}"
            ))),
        }
    }
}

/// How a [`SqliteStore`](crate::SqliteStore) is set up.
///
/// URL form: `sqlite:///abs/path.db` or `sqlite:relative.db`, with optional
/// query options `table`, `synchronous`, `busy_timeout_ms`,
/// `max_connections`, `max_record_bytes`, `max_wal_bytes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file (created if missing).
    pub path: PathBuf,
    /// The sessions table. Validated as `[A-Za-z_][A-Za-z0-9_]{0,62}`,
    /// because a table name cannot be a bound parameter.
    pub table: String,
    /// See [`Synchronous`]. `Normal` by default.
    pub synchronous: Synchronous,
    /// How long one statement waits for SQLite's database-wide write lock
    /// before failing with [`Error::Unavailable`]. 5 s by default.
    pub busy_timeout: Duration,
    /// Connections kept for this store: one writer, and the rest readers
    /// (at least one reader, so a store with 1 keeps two), each on a thread
    /// of its own.
    pub max_connections: usize,
    /// Largest encoded record accepted ([`Error::TooLarge`] beyond).
    pub max_record_bytes: usize,
    /// Size of the `-wal` file past which the store briefly holds back its
    /// own work to checkpoint and truncate it. Under steady concurrent
    /// traffic SQLite's automatic checkpoint alone never gets to start the
    /// WAL over, and the file grows without bound. 64 MiB by default; a
    /// smaller value means shorter, more frequent pauses.
    pub max_wal_bytes: u64,
}

impl SqliteOptions {
    /// Defaults for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            table: DEFAULT_TABLE.to_owned(),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_wal_bytes: DEFAULT_MAX_WAL_BYTES,
        }
    }

    /// Use another table name (checked when the store is opened).
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Set `PRAGMA synchronous`.
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Set the busy timeout.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Set the number of connections.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Set the largest accepted record.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// Set the WAL size that triggers a truncating checkpoint.
    pub fn max_wal_bytes(mut self, limit: u64) -> Self {
        self.max_wal_bytes = limit;
        self
    }

    /// Check the options; [`Error::Config`] names the first bad one.
    pub fn validate(&self) -> Result<()> {
        validate_table_name(&self.table)?;
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(Error::Config(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if self.path.as_os_str().is_empty() {
            return Err(Error::Config("sqlite database path is empty".into()));
        }
        Ok(())
    }

    /// Parse `sqlite:///abs/path.db` or `sqlite:relative.db` with optional
    /// `?table=…&synchronous=…&busy_timeout_ms=…&max_connections=…&max_record_bytes=…&max_wal_bytes=…`.
    pub fn from_url(text: &str) -> Result<Self> {
        let rest = text
            .strip_prefix("sqlite:")
            .ok_or_else(|| Error::Config("sqlite store URL must start with sqlite:".into()))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let path = match path.strip_prefix("//") {
            Some(absolute) if absolute.starts_with('/') => absolute,
            Some(_) => {
                return Err(Error::Config(
                    "sqlite URL must be sqlite:///absolute/path.db or sqlite:relative.db (no host)".into(),
                ))
            }
            None => path,
        };
        let path = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .map_err(|_| Error::Config("sqlite URL path is not UTF-8".into()))?;
        if path.is_empty() || path.starts_with(':') {
            return Err(Error::Config(
                "sqlite URL needs a database file path (in-memory databases are per connection and unsupported)"
                    .into(),
            ));
        }
        let mut options = SqliteOptions::new(path.into_owned());
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let number = |what: &str| -> Result<u64> {
                value
                    .parse()
                    .map_err(|_| Error::Config(format!("{what}: not a number: {value:?}")))
            };
            match &*name {
                "table" => options.table = value.clone().into_owned(),
                "synchronous" => options.synchronous = Synchronous::parse(&value)?,
                "busy_timeout_ms" => options.busy_timeout = Duration::from_millis(number("busy_timeout_ms")?),
                "max_connections" => options.max_connections = number("max_connections")? as usize,
                "max_record_bytes" => options.max_record_bytes = number("max_record_bytes")? as usize,
                "max_wal_bytes" => options.max_wal_bytes = number("max_wal_bytes")?,
                other => {
                    return Err(Error::Config(format!(
                        "sqlite store URL: unknown option {other:?}"
                    )))
                }
            }
        }
        options.validate()?;
        Ok(options)
    }
}

/// A table name goes into SQL text (it cannot be bound), so only plain
/// identifiers are accepted, and none of SQLite's reserved `sqlite_` names.
pub fn validate_table_name(name: &str) -> Result<()> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(Error::Config(
            "table name must match [A-Za-z_][A-Za-z0-9_]{0,62}".into(),
        ));
    }
    if name.to_ascii_lowercase().starts_with("sqlite_") {
        return Err(Error::Config(
            "table names starting with sqlite_ are reserved".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_absolute_and_relative_urls() {
        let abs = SqliteOptions::from_url("sqlite:///var/lib/app/s.db").unwrap();
        assert_eq!(abs.path, PathBuf::from("/var/lib/app/s.db"));
        let rel = SqliteOptions::from_url(
            "sqlite:data/s.db?table=t1&synchronous=full&busy_timeout_ms=250&max_wal_bytes=1048576",
        )
        .unwrap();
        assert_eq!(rel.path, PathBuf::from("data/s.db"));
        assert_eq!(rel.table, "t1");
        assert_eq!(rel.synchronous, Synchronous::Full);
        assert_eq!(rel.busy_timeout, Duration::from_millis(250));
        assert_eq!(rel.max_wal_bytes, 1 << 20);
        assert_eq!(abs.max_wal_bytes, DEFAULT_MAX_WAL_BYTES);
        let spaced = SqliteOptions::from_url("sqlite:///tmp/a%20b.db").unwrap();
        assert_eq!(spaced.path, PathBuf::from("/tmp/a b.db"));
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "postgres://x/y",
            "sqlite://host/x.db",
            "sqlite:",
            "sqlite::memory:",
            "sqlite:x.db?synchronous=sometimes",
            "sqlite:x.db?colour=red",
            "sqlite:x.db?max_connections=0",
            "sqlite:x.db?max_connections=18446744073709551615",
            "sqlite:x.db?max_wal_bytes=lots",
            "sqlite:x.db?table=a;b",
        ] {
            assert!(
                matches!(SqliteOptions::from_url(bad), Err(Error::Config(_))),
                "accepted {bad}"
            );
        }
    }

    #[test]
    fn table_names_are_plain_identifiers() {
        for good in ["sessions", "_s", "S_1", &"a".repeat(63)] {
            assert!(validate_table_name(good).is_ok(), "rejected {good}");
        }
        for bad in [
            "",
            "1abc",
            "a b",
            "s\"; DROP TABLE x; --",
            "a-b",
            "sqlite_master",
            "sé",
            &"a".repeat(64),
        ] {
            assert!(validate_table_name(bad).is_err(), "accepted {bad:?}");
        }
    }
}
