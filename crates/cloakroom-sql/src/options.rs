//! Options of the Postgres and MySQL stores and their URL form: the table
//! (the one identifier that cannot be a bound parameter, so it is validated
//! here), the pool's settings, and the driver's URL with the driver's own
//! options.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use cloakroom_core::{Error, Result, StoreUrl, DEFAULT_MAX_RECORD_BYTES};
use serde::{de, Deserialize, Deserializer};

use crate::statements::Dialect;

/// Table used when none is configured.
pub const DEFAULT_TABLE: &str = "cloakroom_sessions";

/// A validated SQL table name: `[A-Za-z_][A-Za-z0-9_]{0,62}`.
///
/// Table names are the only text spliced into SQL (identifiers cannot be
/// bound), so nothing else is ever accepted — no quotes, dots, spaces or
/// semicolons, any of which would let a configured name smuggle SQL into
/// every statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    /// Validate a table name.
    pub fn new(name: &str) -> Result<Self> {
        let mut bytes = name.bytes();
        let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
        let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if first_ok && rest_ok && name.len() <= 63 {
            Ok(TableName(name.to_owned()))
        } else {
            Err(Error::Config(invalid_table_name(name)))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn invalid_table_name(name: &str) -> String {
    format!("table name {name:?} does not match [A-Za-z_][A-Za-z0-9_]{{0,62}}")
}

impl Default for TableName {
    fn default() -> Self {
        TableName(DEFAULT_TABLE.to_owned())
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TableName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TableName::new(&name).map_err(|_| de::Error::custom(invalid_table_name(&name)))
    }
}

/// How a [`PostgresStore`](crate::PostgresStore) or
/// [`MysqlStore`](crate::MysqlStore) is set up.
///
/// URL form (see the crate docs for the table of options):
/// `postgres://user@host/db?table=sessions&max_connections=20&sslmode=require`.
///
/// Every request that holds a session lock holds one pooled connection for
/// as long as it holds the lock (the lock *is* that connection's open
/// transaction), so `max_connections` bounds the number of sessions that can
/// be locked at once by this process. When the pool is exhausted, `lock`
/// waits for a connection no longer than its own wait timeout and then fails
/// with [`Error::LockTimeout`]; every other call waits at most
/// `acquire_timeout` and then fails with [`Error::Unavailable`]. Nothing
/// waits forever.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default = "SqlOptions::defaults", deny_unknown_fields)]
pub struct SqlOptions {
    /// The URL handed to the driver (sqlx): `postgres://…` or `mysql://…`,
    /// with only the driver's own query options (TLS and the like; see the
    /// crate docs). It decides which server the options are for.
    #[serde(skip)]
    pub driver_url: String,
    /// Table holding the sessions (default `cloakroom_sessions`).
    pub table: TableName,
    /// Most connections this store opens (default 40, at least 1).
    pub max_connections: u32,
    /// Longest wait for a pooled connection outside of `lock` (default 5 s).
    #[serde(with = "cloakroom_core::store_url::duration")]
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long (default 30 s), so a
    /// burst of locked requests does not keep server connections, which
    /// are shared with every other client, for long.
    #[serde(with = "cloakroom_core::store_url::duration")]
    pub idle_timeout: Duration,
    /// Largest encoded record accepted ([`Error::TooLarge`] beyond).
    pub max_record_bytes: usize,
}

impl SqlOptions {
    /// Defaults for the server at `driver_url` (`postgres://user@host/db`
    /// or `mysql://user@host/db`, with only the driver's own query options).
    pub fn new(driver_url: impl Into<String>) -> Self {
        SqlOptions {
            driver_url: driver_url.into(),
            ..Self::defaults()
        }
    }

    /// Every option at its default, the server not yet known.
    fn defaults() -> Self {
        SqlOptions {
            driver_url: String::new(),
            table: TableName::default(),
            max_connections: 40,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }

    /// Set the table holding the sessions.
    pub fn table(mut self, table: TableName) -> Self {
        self.table = table;
        self
    }

    /// Set the most connections the store opens.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Set the longest wait for a pooled connection outside of `lock`.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Set how long an idle connection is kept.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Set the largest accepted record.
    pub fn max_record_bytes(mut self, limit: usize) -> Self {
        self.max_record_bytes = limit;
        self
    }

    /// Read a store URL: `postgres://` or `postgresql://`, `mysql://` or
    /// `mariadb://`, with the store's options and the driver's own (listed
    /// in the crate docs) in its query. Any other query key is an
    /// [`Error::Config`] naming it. The aliases become the driver's scheme
    /// (`postgres`, `mysql`) in [`driver_url`](Self::driver_url).
    pub fn from_url(url: &StoreUrl) -> Result<Self> {
        let dialect = Dialect::from_scheme(url.scheme()).ok_or_else(|| {
            Error::Config(format!(
                "a SQL store URL starts with postgres://, postgresql://, mysql:// or mariadb://, not {}:",
                url.scheme()
            ))
        })?;
        let mut driver_keys = dialect.driver_keys().to_vec();
        driver_keys.extend(
            url.query()
                .iter()
                .map(|(key, _)| key.as_str())
                .filter(|key| dialect.is_driver_key(key)),
        );
        let (options, driver_query): (SqlOptions, _) = url.split_options(&driver_keys)?;
        let options = SqlOptions {
            driver_url: url.to_driver_url(dialect.driver_scheme(), &driver_query),
            ..options
        };
        options.validate()?;
        Ok(options)
    }

    /// Check the options, whether they came from a URL or the setters, and
    /// say which server the driver URL is for.
    pub(crate) fn validate(&self) -> Result<Dialect> {
        let url = StoreUrl::parse(&self.driver_url)?;
        let dialect = Dialect::from_scheme(url.scheme()).ok_or_else(|| {
            Error::Config(format!(
                "a SQL driver URL starts with postgres:// or mysql://, not {}:",
                url.scheme()
            ))
        })?;
        if url.hosts().len() > 1 {
            return Err(Error::Config(format!(
                "{} store URL: one host only, not a list",
                url.scheme()
            )));
        }
        if let Some((key, _)) = url.query().iter().find(|(key, _)| !dialect.is_driver_key(key)) {
            return Err(Error::Config(format!(
                "{} driver URL: {key:?} is not an option of the driver (its own: {}); \
                 the store's options are set with SqlOptions' setters",
                url.scheme(),
                dialect.driver_keys().join(", ")
            )));
        }
        if let Some((key, value)) = url
            .query()
            .iter()
            .find(|(key, value)| matches!(key.as_str(), "sslmode" | "ssl-mode") && demands_tls(value))
        {
            tls_compiled_in(dialect, &format!("{key}={value}"))?;
        }
        if self.max_connections == 0 {
            return Err(Error::Config("max_connections must be at least 1".into()));
        }
        // Zero would fail every call at once, or (idle) make the pool's
        // reaper spin.
        if self.acquire_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(Error::Config(
                "acquire_timeout and idle_timeout must be longer than zero".into(),
            ));
        }
        Ok(dialect)
    }
}

impl SqlOptions {
    /// The certificate and key files the driver URL names (`sslrootcert`,
    /// `ssl-ca`, `sslcert`, `sslkey`, …), with the key that names each.
    /// The driver reads them when it connects.
    pub(crate) fn tls_files(&self) -> Vec<(String, PathBuf)> {
        let Ok(url) = StoreUrl::parse(&self.driver_url) else {
            return Vec::new();
        };
        url.query()
            .iter()
            .filter(|(key, value)| TLS_FILE_KEYS.contains(&key.as_str()) && !value.is_empty())
            .map(|(key, value)| (key.clone(), PathBuf::from(value)))
            .collect()
    }

    /// The first TLS file of the driver URL that cannot be read now, as the
    /// [`Error::Config`] that names it. The driver's own error for such a
    /// file is an I/O error without the path; a store calls this when a
    /// connection fails with an I/O error, to tell that case apart.
    pub(crate) fn unreadable_tls_file(&self) -> Option<Error> {
        self.tls_files().into_iter().find_map(|(key, path)| {
            std::fs::File::open(&path).err().map(|e| {
                Error::Config(format!(
                    "{key}={}: the TLS file cannot be read: {e}",
                    path.display()
                ))
            })
        })
    }
}

/// The driver URL keys whose values are certificate or key files.
const TLS_FILE_KEYS: &[&str] = &[
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
];

/// Whether an `sslmode`/`ssl-mode` value insists on TLS (Postgres'
/// `require`, `verify-ca`, `verify-full`; MySQL's `REQUIRED`, `VERIFY_CA`,
/// `VERIFY_IDENTITY`). `disable`/`DISABLED`, `allow`, `prefer`/`PREFERRED`
/// do not: they connect in plain text when TLS is not to be had. Values the
/// driver does not know are its to refuse.
pub(crate) fn demands_tls(mode: &str) -> bool {
    matches!(
        mode.to_ascii_lowercase().as_str(),
        "require" | "verify-ca" | "verify-full" | "required" | "verify_ca" | "verify_identity"
    )
}

/// `Ok` if TLS is compiled in; otherwise the [`Error::Unsupported`] naming
/// the feature, so that a connection that must be encrypted is never made
/// in plain text. `what` is the setting that asked for TLS.
pub(crate) fn tls_compiled_in(dialect: Dialect, what: &str) -> Result<()> {
    if cfg!(feature = "tls") {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "{} over TLS ({what}) is left out of this build: turn on the `tls` Cargo feature \
             (of cloakroom, or of cloakroom-sql)",
            dialect.name()
        )))
    }
}

/// Never shows a password, neither the URL's nor a `password` option's.
impl fmt::Debug for SqlOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlOptions")
            .field("driver_url", &redacted(&self.driver_url))
            .field("table", &self.table.as_str())
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_record_bytes", &self.max_record_bytes)
            .finish()
    }
}

fn redacted(driver_url: &str) -> String {
    let Ok(url) = StoreUrl::parse(driver_url) else {
        return "(not a URL)".to_owned();
    };
    let query: Vec<(String, String)> = url
        .query()
        .iter()
        .map(|(key, value)| {
            let value = if key == "password" { "***" } else { value };
            (key.clone(), value.to_owned())
        })
        .collect();
    // `StoreUrl`'s `Display` hides the password of the user info.
    StoreUrl::parse(&url.to_driver_url(url.scheme(), &query))
        .map_or_else(|_| "(not a URL)".to_owned(), |url| url.to_string())
}

/// Postgres' URL schemes; the first is the driver's.
const POSTGRES_SCHEMES: &[&str] = &["postgres", "postgresql"];
/// MySQL's and MariaDB's URL schemes; the first is the driver's.
const MYSQL_SCHEMES: &[&str] = &["mysql", "mariadb"];

/// The query options sqlx 0.8 reads from a Postgres URL
/// (`PgConnectOptions::from_str`), plus `options[name]` keys (see
/// [`Dialect::is_driver_key`]).
const POSTGRES_DRIVER_KEYS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The query options sqlx 0.8 reads from a MySQL URL
/// (`MySqlConnectOptions::from_str`).
const MYSQL_DRIVER_KEYS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslca",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "charset",
    "collation",
    "statement-cache-capacity",
    "socket",
    "timezone",
    "time-zone",
];

/// What the URLs of each server look like.
impl Dialect {
    /// The server whose store URLs use `scheme` (lowercase).
    pub(crate) fn from_scheme(scheme: &str) -> Option<Self> {
        if POSTGRES_SCHEMES.contains(&scheme) {
            Some(Dialect::Postgres)
        } else if MYSQL_SCHEMES.contains(&scheme) {
            Some(Dialect::MySql)
        } else {
            None
        }
    }

    /// The server's name in messages.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "Postgres",
            Dialect::MySql => "MySQL",
        }
    }

    /// The URL schemes of this server's stores.
    pub(crate) const fn schemes(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => POSTGRES_SCHEMES,
            Dialect::MySql => MYSQL_SCHEMES,
        }
    }

    /// The scheme the driver is given.
    fn driver_scheme(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// The query options the driver reads, by name.
    fn driver_keys(self) -> &'static [&'static str] {
        match self {
            Dialect::Postgres => POSTGRES_DRIVER_KEYS,
            Dialect::MySql => MYSQL_DRIVER_KEYS,
        }
    }

    /// Whether `key` is one of the driver's query options, including
    /// Postgres' `options[name]` (a server setting for the connection).
    fn is_driver_key(self, key: &str) -> bool {
        self.driver_keys().contains(&key)
            || (self == Dialect::Postgres && key.starts_with("options[") && key.ends_with(']'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SqlOptions> {
        SqlOptions::from_url(&StoreUrl::parse(text)?)
    }

    #[test]
    fn table_names_are_validated() {
        for ok in ["sessions", "_t", "T_1", &"a".repeat(63)] {
            assert!(TableName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "a-b",
            "s; DROP TABLE x; --",
            "a\"b",
            "a'b",
            "public.sessions",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(TableName::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_keep_driver_options_and_take_the_stores() {
        let o = parse(
            "postgresql://u:pw@h:5/db?table=my_sessions&sslmode=disable&max_connections=3\
             &acquire_timeout=250ms&idle_timeout=2m&max_record_bytes=10&options[search_path]=s",
        )
        .unwrap();
        assert_eq!(
            o.driver_url,
            "postgres://u:pw@h:5/db?sslmode=disable&options%5Bsearch_path%5D=s"
        );
        assert_eq!(o.table.as_str(), "my_sessions");
        assert_eq!(o.max_connections, 3);
        assert_eq!(o.acquire_timeout, Duration::from_millis(250));
        assert_eq!(o.idle_timeout, Duration::from_secs(120));
        assert_eq!(o.max_record_bytes, 10);
        assert_eq!(o.validate().unwrap(), Dialect::Postgres);

        let o = parse("mariadb://root@127.0.0.1:3306/test?ssl-mode=disabled&charset=utf8mb4").unwrap();
        assert_eq!(
            o.driver_url,
            "mysql://root@127.0.0.1:3306/test?ssl-mode=disabled&charset=utf8mb4"
        );
        assert_eq!(o.table.as_str(), DEFAULT_TABLE);
        assert_eq!(o, SqlOptions::new(o.driver_url.clone()));
        assert_eq!(o.max_record_bytes, DEFAULT_MAX_RECORD_BYTES);
    }

    #[test]
    fn bad_urls_name_what_is_wrong() {
        let config = |url: &str| match parse(url) {
            Err(Error::Config(message)) => message,
            other => panic!("{url}: {other:?}"),
        };
        assert!(config("mysql://h/db?table=x;--").contains("table name"));
        assert!(config("redis://h").contains("redis"));
        // Another server's driver options are not this one's.
        assert!(config("mysql://h/db?sslrootcert=x").contains("sslrootcert"));
        assert!(config("postgres://h/db?socket=/tmp/s").contains("socket"));
        assert!(config("postgres://h/db?connect_timeout=5").contains("connect_timeout"));
        assert!(config("postgres://h/db?acquire_timeout=5").contains("duration"));
        assert!(config("postgres://h/db?max_connections=0").contains("max_connections"));
        assert!(config("postgres://h/db?idle_timeout=0s").contains("idle_timeout"));
        assert!(config("postgres://h1,h2/db").contains("one host"));
    }

    #[test]
    fn the_builder_is_held_to_the_same_rules() {
        let ok = SqlOptions::new("postgres://h/db?sslmode=prefer");
        assert_eq!(ok.validate().unwrap(), Dialect::Postgres);
        for bad in [
            SqlOptions::new("postgres://h/db?table=x"),
            SqlOptions::new("redis://h"),
            SqlOptions::new("not a url"),
            SqlOptions::new("mysql://h/db").max_connections(0),
            SqlOptions::new("mysql://h/db").acquire_timeout(Duration::ZERO),
        ] {
            assert!(
                matches!(bad.validate(), Err(Error::Config(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn tls_modes_and_files_are_the_drivers() {
        for mode in [
            "require",
            "verify-ca",
            "verify-full",
            "REQUIRED",
            "VERIFY_CA",
            "verify_identity",
        ] {
            assert!(demands_tls(mode), "{mode}");
        }
        for mode in ["disable", "allow", "prefer", "DISABLED", "PREFERRED", ""] {
            assert!(!demands_tls(mode), "{mode}");
        }
        // Without the feature, the strict modes are refused (below).
        let (pg, my) = if cfg!(feature = "tls") {
            ("verify-full", "VERIFY_IDENTITY")
        } else {
            ("prefer", "PREFERRED")
        };
        let o = parse(&format!(
            "postgres://h/db?sslmode={pg}&sslrootcert=/etc/ca.pem&table=t"
        ))
        .unwrap();
        assert_eq!(
            o.driver_url,
            format!("postgres://h/db?sslmode={pg}&sslrootcert=/etc/ca.pem")
        );
        assert_eq!(
            o.tls_files(),
            [("sslrootcert".to_owned(), PathBuf::from("/etc/ca.pem"))]
        );
        let o = parse(&format!("mysql://h/db?ssl-mode={my}&ssl-ca=/nonexistent/ca.pem")).unwrap();
        assert_eq!(
            o.driver_url,
            format!("mysql://h/db?ssl-mode={my}&ssl-ca=/nonexistent/ca.pem")
        );
        match o.unreadable_tls_file() {
            Some(Error::Config(m)) => assert!(m.contains("ssl-ca=/nonexistent/ca.pem"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(SqlOptions::new("mysql://h/db").unreadable_tls_file().is_none());
    }

    /// Without the feature, a URL that insists on TLS is refused, naming
    /// the feature; it never connects in plain text. Modes that allow plain
    /// text are accepted.
    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_modes_name_the_missing_feature() {
        for url in [
            "postgres://h/db?sslmode=require",
            "postgresql://h/db?ssl-mode=verify-full&sslrootcert=/ca.pem",
            "mysql://h/db?ssl-mode=REQUIRED",
            "mariadb://h/db?sslmode=verify_identity",
        ] {
            match parse(url) {
                Err(Error::Unsupported(m)) => assert!(m.contains("`tls`"), "{url}: {m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let built = SqlOptions::new("postgres://h/db?sslmode=verify-ca").validate();
        assert!(matches!(built, Err(Error::Unsupported(_))), "{built:?}");
        for url in ["postgres://h/db?sslmode=prefer", "mysql://h/db?ssl-mode=DISABLED"] {
            assert!(parse(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn debug_hides_passwords() {
        let o = SqlOptions::new("postgres://u:secret@h/db?password=hidden&sslmode=require");
        let shown = format!("{o:?}");
        assert!(!shown.contains("secret") && !shown.contains("hidden"), "{shown}");
        assert!(shown.contains("sslmode=require"), "{shown}");
    }
}
