//! Configuration: the table name (the one identifier that cannot be a bound
//! parameter, so it is validated here), pool settings, and URL parsing.

use std::fmt;
use std::time::Duration;

use cloakroom_core::{Error, Result};

/// Table used when none is configured.
pub const DEFAULT_TABLE: &str = "cloakroom_sessions";

/// A validated SQL table name: `[A-Za-z_][A-Za-z0-9_]{0,62}`.
///
/// Table names are the only text spliced into SQL (identifiers cannot be
/// bound), so nothing else is ever accepted — no quotes, dots, spaces or
/// semicolons (seed 003 built whole statements from strings).
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
            Err(Error::Config(
                "table name must match [A-Za-z_][A-Za-z0-9_]{0,62}".to_owned(),
            ))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
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

/// Connection pool and store settings.
///
/// Every request that holds a session lock holds one pooled connection for
/// as long as it holds the lock (the lock *is* that connection's open
/// transaction), so `max_connections` bounds the number of sessions that can
/// be locked at once by this process. When the pool is exhausted, `lock`
/// waits for a connection no longer than its own wait timeout and then fails
/// with [`Error::LockTimeout`]; every other call waits at most
/// `acquire_timeout` and then fails with [`Error::Unavailable`]. Nothing
/// waits forever.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Table holding the sessions.
    pub table: TableName,
    /// Most connections this store opens (default 40).
    pub max_connections: u32,
    /// Longest wait for a pooled connection outside of `lock` (default 5 s).
    pub acquire_timeout: Duration,
    /// Idle connections above zero are closed after this long (default
    /// 30 s), so a burst of locked requests does not keep server
    /// connections, which are shared with every other client, for long.
    pub idle_timeout: Duration,
    /// Largest encoded record accepted (default 4 MiB).
    pub max_record_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            table: TableName::default(),
            max_connections: 40,
            acquire_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            max_record_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Split a store URL into the driver URL and the store's own settings.
///
/// Accepts the schemes in `schemes` (the first one is what the driver is
/// given) and the optional query parameter `table=name`; other query
/// parameters are left for the driver.
pub(crate) fn parse_url(url: &str, schemes: &[&str]) -> Result<(String, StoreConfig)> {
    let mut parsed = url::Url::parse(url).map_err(|e| Error::Config(format!("invalid store URL: {e}")))?;
    if !schemes.contains(&parsed.scheme()) {
        return Err(Error::Config(format!(
            "store URL scheme must be one of {schemes:?}, not {:?}",
            parsed.scheme()
        )));
    }
    let mut config = StoreConfig::default();
    let mut driver_pairs = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if k == "table" {
            config.table = TableName::new(&v)?;
        } else {
            driver_pairs.push((k.into_owned(), v.into_owned()));
        }
    }
    if driver_pairs.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(driver_pairs);
    }
    let rest = &parsed.as_str()[parsed.scheme().len()..];
    // Scheme aliases (`postgresql`, `mariadb`) are rewritten textually:
    // `Url::set_scheme` refuses some special-scheme changes.
    let driver_url = format!("{}{rest}", schemes.first().copied().unwrap_or_default());
    Ok((driver_url, config))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn urls_keep_driver_params_and_take_the_table() {
        let (url, cfg) = parse_url(
            "postgresql://u@h:5/db?table=my_sessions&sslmode=disable",
            &["postgres", "postgresql"],
        )
        .unwrap();
        assert_eq!(url, "postgres://u@h:5/db?sslmode=disable");
        assert_eq!(cfg.table.as_str(), "my_sessions");
        let (url, cfg) = parse_url("mariadb://root@127.0.0.1:3306/test", &["mysql", "mariadb"]).unwrap();
        assert_eq!(url, "mysql://root@127.0.0.1:3306/test");
        assert_eq!(cfg.table.as_str(), DEFAULT_TABLE);
        assert!(parse_url("mysql://h/db?table=x;--", &["mysql"]).is_err());
        assert!(parse_url("redis://h", &["mysql"]).is_err());
    }
}
