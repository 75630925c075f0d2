//! Options of the SQLite store and their URL form.

use std::path::PathBuf;
use std::time::Duration;

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::Deserialize;

/// Default table name.
pub const DEFAULT_TABLE: &str = "cloakroom_sessions";
/// Default size past which the WAL file is checkpointed and truncated.
pub const DEFAULT_MAX_WAL_BYTES: u64 = 64 * 1024 * 1024;
/// Most connections one store may keep: more buys nothing against one
/// database-wide write lock, and the bound keeps the permit count sane.
const MAX_CONNECTIONS: usize = 1024;

/// SQLite's `synchronous` setting: how hard a commit waits for the disk.
/// In a URL: `off`, `normal`, `full` or `extra` (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
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
}

/// How a [`SqliteStore`](crate::SqliteStore) is set up.
///
/// URL form: `sqlite:///abs/path.db` or `sqlite:relative.db`, with optional
/// query options named after the fields below (`table`, `synchronous`,
/// `busy_timeout`, `max_connections`, `max_record_bytes`, `max_wal_bytes`);
/// see [`from_url`](Self::from_url).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteOptions {
    /// The database file (created if missing, readable by its owner only).
    /// In a URL, its path.
    #[serde(skip)]
    pub path: PathBuf,
    /// The sessions table. Validated as `[A-Za-z_][A-Za-z0-9_]{0,62}`,
    /// because a table name cannot be a bound parameter.
    pub table: String,
    /// See [`Synchronous`]. `Normal` by default.
    pub synchronous: Synchronous,
    /// How long one statement waits for SQLite's database-wide write lock
    /// before failing with [`Error::Unavailable`]. 5 s by default; in a URL,
    /// `busy_timeout=250ms`, `5s`, `2m` or `1h`.
    #[serde(with = "cloakroom_core::store_url::duration")]
    pub busy_timeout: Duration,
    /// Connections kept for this store: one writer, and the rest readers
    /// (at least one reader, so a store with 1 keeps two), each on a thread
    /// of its own. Between 1 and 1024; 4 by default.
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

/// The defaults, with an empty [`path`](SqliteOptions::path) that
/// [`validate`](SqliteOptions::validate) rejects: set one (or use
/// [`SqliteOptions::new`]).
impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            path: PathBuf::new(),
            table: DEFAULT_TABLE.to_owned(),
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_wal_bytes: DEFAULT_MAX_WAL_BYTES,
        }
    }
}

impl SqliteOptions {
    /// Defaults for the database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            ..SqliteOptions::default()
        }
    }

    /// Use another table name.
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

    /// Check the options, however they were made; [`Error::Config`] names
    /// the first bad one.
    pub fn validate(&self) -> Result<()> {
        validate_table_name(&self.table)?;
        if self.max_connections == 0 || self.max_connections > MAX_CONNECTIONS {
            return Err(Error::Config(format!(
                "max_connections must be between 1 and {MAX_CONNECTIONS}"
            )));
        }
        if self.path.as_os_str().is_empty() || self.path.as_os_str().as_encoded_bytes().starts_with(b":") {
            return Err(Error::Config(
                "sqlite needs a database file path (in-memory databases are per connection and unsupported)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Options from `sqlite:///abs/path.db` or `sqlite:relative.db` (the
    /// path percent-decoded; no host), with optional
    /// `?table=…&synchronous=…&busy_timeout=…&max_connections=…&max_record_bytes=…&max_wal_bytes=…`.
    /// Every option is checked ([`validate`](Self::validate)); an unknown
    /// one is an [`Error::Config`] naming it.
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        if url.scheme() != "sqlite" {
            return Err(Error::Config("sqlite store URL must start with sqlite:".into()));
        }
        if !url.hosts().is_empty() || url.userinfo().is_some() {
            return Err(Error::Config(
                "sqlite URL must be sqlite:///absolute/path.db or sqlite:relative.db (no host)".into(),
            ));
        }
        let mut options: SqliteOptions = url.options()?;
        options.path = PathBuf::from(url.path());
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

    fn from_url(text: &str) -> Result<SqliteOptions> {
        SqliteOptions::from_url(&StoreUrl::parse(text)?)
    }

    #[test]
    fn parses_absolute_and_relative_urls() {
        let abs = from_url("sqlite:///var/lib/app/s.db").unwrap();
        assert_eq!(abs.path, PathBuf::from("/var/lib/app/s.db"));
        assert_eq!(abs, SqliteOptions::new("/var/lib/app/s.db"));
        let rel = from_url(
            "sqlite:data/s.db?table=t1&synchronous=full&busy_timeout=250ms&max_connections=2\
             &max_record_bytes=1000&max_wal_bytes=1048576",
        )
        .unwrap();
        assert_eq!(
            rel,
            SqliteOptions::new("data/s.db")
                .table("t1")
                .synchronous(Synchronous::Full)
                .busy_timeout(Duration::from_millis(250))
                .max_connections(2)
                .max_record_bytes(1000)
                .max_wal_bytes(1 << 20)
        );
        assert_eq!(abs.max_wal_bytes, DEFAULT_MAX_WAL_BYTES);
        assert_eq!(abs.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
        let spaced = from_url("sqlite:///tmp/a%20b.db").unwrap();
        assert_eq!(spaced.path, PathBuf::from("/tmp/a b.db"));
        assert_eq!(
            from_url("sqlite:x.db?synchronous=EXTRA&busy_timeout=2s").unwrap(),
            SqliteOptions::new("x.db")
                .synchronous(Synchronous::Extra)
                .busy_timeout(Duration::from_secs(2))
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "postgres://x/y",
            "sqlite://host/x.db",
            "sqlite://user@/x.db",
            "sqlite:",
            "sqlite://",
            "sqlite::memory:",
            "sqlite:x.db?synchronous=sometimes",
            "sqlite:x.db?colour=red",
            "sqlite:x.db?max_connections=0",
            "sqlite:x.db?max_connections=18446744073709551615",
            "sqlite:x.db?max_wal_bytes=lots",
            "sqlite:x.db?table=a;b",
            // Durations take a unit, and the old millisecond option is gone.
            "sqlite:x.db?busy_timeout=250",
            "sqlite:x.db?busy_timeout_ms=250",
        ] {
            assert!(matches!(from_url(bad), Err(Error::Config(_))), "accepted {bad}");
        }
    }

    #[test]
    fn the_url_and_the_builder_are_checked_alike() {
        for (url, built) in [
            (
                "sqlite:x.db?max_connections=0",
                SqliteOptions::new("x.db").max_connections(0),
            ),
            (
                "sqlite:x.db?max_connections=1025",
                SqliteOptions::new("x.db").max_connections(1025),
            ),
            ("sqlite:x.db?table=a-b", SqliteOptions::new("x.db").table("a-b")),
            ("sqlite::memory:", SqliteOptions::new(":memory:")),
        ] {
            let (Err(Error::Config(from_url)), Err(Error::Config(from_builder))) =
                (from_url(url), built.validate())
            else {
                panic!("{url} or its builder form was accepted");
            };
            assert_eq!(from_url, from_builder, "{url}");
        }
        assert!(SqliteOptions::default().validate().is_err(), "no path");
        assert!(SqliteOptions::new("x.db")
            .max_connections(1024)
            .validate()
            .is_ok());
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
