//! Store URLs, parsed once for every backend, and the one syntax of their
//! query options.
//!
//! ```text
//! scheme://[user[:password]@]host[:port][,host[:port]…][/path][?key=value&…]
//! scheme:path[?key=value&…]                 (no authority: sqlite:rel.db, memory:)
//! ```
//!
//! A backend declares its options as a serde struct with
//! `#[serde(default, deny_unknown_fields)]` and reads them with
//! [`StoreUrl::options`]: an unknown key is an [`Error::Config`] naming the
//! key, and every backend accepts the same values:
//!
//! - booleans: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`;
//! - numbers: decimal integers;
//! - durations (fields with `#[serde(with = "cloakroom_core::store_url::duration")]`):
//!   an integer and a unit, `250ms`, `5s`, `2m`, `1h`.
//!
//! A backend whose driver takes options of its own (TLS settings of a
//! database client, say) names them in [`StoreUrl::split_options`], which
//! hands them back untouched.
//!
//! Errors never repeat a password: [`StoreUrl`]'s `Display` hides it.

use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use crate::{Error, Result};

/// A parsed store URL. See the module docs for the grammar.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    scheme: String,
    authority: Option<Authority>,
    raw_path: String,
    path: String,
    query: Vec<(String, String)>,
}

#[derive(Clone, PartialEq, Eq)]
struct Authority {
    /// `user` or `user:password`, still percent-encoded as written.
    userinfo: Option<String>,
    hosts: Vec<String>,
}

impl StoreUrl {
    /// Parse a store URL. The scheme is lowercased; the path is
    /// percent-decoded; query pairs are form-decoded and kept in order.
    pub fn parse(text: &str) -> Result<Self> {
        let (scheme, rest) = text
            .split_once(':')
            .filter(|(s, _)| valid_scheme(s))
            .ok_or_else(|| {
                Error::Config("a store URL starts with a scheme, such as sqlite: or redis://".into())
            })?;
        let scheme = scheme.to_ascii_lowercase();
        let (before_query, query) = match rest.split_once('?') {
            Some((before, query)) => (before, query),
            None => (rest, ""),
        };
        if before_query.contains('#') || query.contains('#') {
            return Err(Error::Config(format!(
                "{scheme} store URL: fragments (#…) are not allowed"
            )));
        }
        let (authority, raw_path) = match before_query.strip_prefix("//") {
            Some(after) => {
                let end = after.find('/').unwrap_or(after.len());
                let (authority, path) = after.split_at(end);
                (Some(parse_authority(&scheme, authority)?), path)
            }
            None => (None, before_query),
        };
        let path = percent_decode(raw_path)
            .ok_or_else(|| Error::Config(format!("{scheme} store URL: the path is not valid UTF-8")))?;
        let query = form_decode(query)
            .ok_or_else(|| Error::Config(format!("{scheme} store URL: the query is not valid UTF-8")))?;
        Ok(StoreUrl {
            scheme,
            authority,
            raw_path: raw_path.to_owned(),
            path,
            query,
        })
    }

    /// The scheme, lowercased (`sqlite`, `redis+cluster`, …).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether the URL has an authority (`scheme://…`).
    pub fn has_authority(&self) -> bool {
        self.authority.is_some()
    }

    /// The `host[:port]` entries of the authority, in order (several for
    /// a comma-separated list of seed nodes). Empty without an authority.
    pub fn hosts(&self) -> &[String] {
        self.authority.as_ref().map_or(&[], |a| &a.hosts)
    }

    /// `user` or `user:password` as written (still percent-encoded).
    pub fn userinfo(&self) -> Option<&str> {
        self.authority.as_ref().and_then(|a| a.userinfo.as_deref())
    }

    /// The percent-decoded path (`/var/lib/app/s.db`, `rel.db`, `/3`, or empty).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The path as written, still percent-encoded, for rebuilding a driver URL.
    pub fn raw_path(&self) -> &str {
        &self.raw_path
    }

    /// Every query pair, decoded, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// Read every query option into `T` (see the module docs for the
    /// syntax). A key `T` does not know is an [`Error::Config`] naming it.
    pub fn options<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(self.split_options(&[])?.0)
    }

    /// Like [`options`](Self::options), but the keys in `driver_keys` are
    /// not `T`'s: they are handed back, in order, for the driver's own URL.
    pub fn split_options<T: DeserializeOwned>(
        &self,
        driver_keys: &[&str],
    ) -> Result<(T, Vec<(String, String)>)> {
        let (driver, ours): (Vec<_>, Vec<_>) = self
            .query
            .iter()
            .cloned()
            .partition(|(key, _)| driver_keys.contains(&key.as_str()));
        let mut seen = std::collections::HashSet::new();
        if let Some((key, _)) = ours.iter().find(|(key, _)| !seen.insert(key.clone())) {
            return Err(Error::Config(format!(
                "{} store URL: option {key:?} is given twice",
                self.scheme
            )));
        }
        let map = de::value::MapDeserializer::new(ours.into_iter().map(|(k, v)| (k, OptionValue(v))));
        let options = T::deserialize(map).map_err(|e: OptionError| {
            let mut text = format!("{} store URL: {}", self.scheme, e.0);
            if text.contains("unknown field") && !driver_keys.is_empty() {
                text.push_str(&format!(" (the driver's own: {})", driver_keys.join(", ")));
            }
            Error::Config(text)
        })?;
        Ok((options, driver))
    }

    /// The URL rebuilt for a driver: `scheme` in place of this one, the same
    /// authority and path, and only the `query` pairs given.
    pub fn to_driver_url(&self, scheme: &str, query: &[(String, String)]) -> String {
        let mut out = format!("{scheme}:");
        if let Some(authority) = &self.authority {
            out.push_str("//");
            if let Some(userinfo) = &authority.userinfo {
                out.push_str(userinfo);
                out.push('@');
            }
            out.push_str(&authority.hosts.join(","));
        }
        out.push_str(&self.raw_path);
        if !query.is_empty() {
            out.push('?');
            out.push_str(&form_encode(query));
        }
        out
    }
}

impl std::str::FromStr for StoreUrl {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        StoreUrl::parse(text)
    }
}

/// The URL with any password replaced by `***`.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if let Some(authority) = &self.authority {
            f.write_str("//")?;
            if let Some(userinfo) = &authority.userinfo {
                match userinfo.split_once(':') {
                    Some((user, _)) => write!(f, "{user}:***@")?,
                    None => write!(f, "{userinfo}@")?,
                }
            }
            f.write_str(&authority.hosts.join(","))?;
        }
        f.write_str(&self.raw_path)?;
        if !self.query.is_empty() {
            write!(f, "?{}", form_encode(&self.query))?;
        }
        Ok(())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

fn valid_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_authority(scheme: &str, text: &str) -> Result<Authority> {
    let (userinfo, hosts) = match text.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo.to_owned()), hosts),
        None => (None, text),
    };
    let hosts: Vec<String> = if hosts.is_empty() {
        Vec::new()
    } else {
        hosts.split(',').map(str::to_owned).collect()
    };
    if hosts.iter().any(String::is_empty) {
        return Err(Error::Config(format!(
            "{scheme} store URL: empty host in the host list"
        )));
    }
    Ok(Authority { userinfo, hosts })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        let escaped = (byte == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(decoded) => {
                out.push(decoded);
                i += 3;
            }
            None => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn form_decode(query: &str) -> Option<Vec<(String, String)>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((
                percent_decode(&key.replace('+', " "))?,
                percent_decode(&value.replace('+', " "))?,
            ))
        })
        .collect()
}

fn form_encode(pairs: &[(String, String)]) -> String {
    fn encode(text: &str, out: &mut String) {
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                    out.push(byte as char)
                }
                _ => out.push_str(&format!("%{byte:02X}")),
            }
        }
    }
    let mut out = String::new();
    for (i, (key, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode(key, &mut out);
        out.push('=');
        encode(value, &mut out);
    }
    out
}

/// Parse a boolean option value (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn parse_flag(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Parse a duration option value: an integer and a unit, `250ms`, `5s`,
/// `2m` or `1h`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => None,
    }?;
    Some(std::time::Duration::from_millis(millis))
}

/// Serde support for duration options, for
/// `#[serde(with = "cloakroom_core::store_url::duration")]`: `250ms`, `5s`,
/// `2m`, `1h`. Written back in milliseconds.
pub mod duration {
    use std::time::Duration;

    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Read a duration such as `250ms` or `5s`.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "expected a duration such as 250ms, 5s, 2m or 1h, got {text:?}"
            ))
        })
    }

    /// Write a duration as `<n>ms`.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{}ms", duration.as_millis()))
    }
}

/// One query option value, deserialized with the shared syntax.
struct OptionValue(String);

#[derive(Debug)]
struct OptionError(String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

impl de::Error for OptionError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        OptionError(msg.to_string())
    }
}

impl<'de> IntoDeserializer<'de, OptionError> for OptionValue {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! number {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, OptionError> {
                match self.0.parse::<$ty>() {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(OptionError(format!(
                        "expected a number, got {:?}", self.0
                    ))),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for OptionValue {
    type Error = OptionError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, OptionError> {
        visitor.visit_string(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, OptionError> {
        match parse_flag(&self.0) {
            Some(flag) => visitor.visit_bool(flag),
            None => Err(OptionError(format!(
                "expected true or false (or 1/0, yes/no, on/off), got {:?}",
                self.0
            ))),
        }
    }

    number! {
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_f32 => visit_f32: f32,
        deserialize_f64 => visit_f64: f64,
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, OptionError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> std::result::Result<V::Value, OptionError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, OptionError> {
        visitor.visit_enum(self.0.to_ascii_lowercase().into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        durable: bool,
        max_record_bytes: usize,
        #[serde(with = "duration")]
        wait: Duration,
        table: Option<String>,
        mode: Mode,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Normal,
        Full,
    }

    #[test]
    fn parses_every_part() {
        let url = StoreUrl::parse("Redis+Cluster://u:p%40ss@h1:7000,h2:7001/3?prefix=a%3Ab&x=1").unwrap();
        assert_eq!(url.scheme(), "redis+cluster");
        assert_eq!(url.hosts(), ["h1:7000", "h2:7001"]);
        assert_eq!(url.userinfo(), Some("u:p%40ss"));
        assert_eq!(url.path(), "/3");
        assert_eq!(
            url.query(),
            [("prefix".into(), "a:b".into()), ("x".into(), "1".into())]
        );
        assert_eq!(
            url.to_string(),
            "redis+cluster://u:***@h1:7000,h2:7001/3?prefix=a:b&x=1"
        );

        let opaque = StoreUrl::parse("sqlite:data/a%20b.db").unwrap();
        assert!(!opaque.has_authority());
        assert_eq!(opaque.path(), "data/a b.db");
        let file = StoreUrl::parse("file:///var/lib/app").unwrap();
        assert!(file.has_authority());
        assert!(file.hosts().is_empty());
        assert_eq!(file.path(), "/var/lib/app");
        assert_eq!(StoreUrl::parse("memory:").unwrap().path(), "");
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in [
            "",
            "no-scheme-here",
            "://x",
            "1abc:x",
            "redis://a,,b",
            "redis://h#frag",
        ] {
            assert!(matches!(StoreUrl::parse(bad), Err(Error::Config(_))), "{bad:?}");
        }
    }

    #[test]
    fn options_share_one_syntax() {
        let url = StoreUrl::parse("x:?durable=on&max_record_bytes=10&wait=250ms&table=t&mode=FULL").unwrap();
        let options: Example = url.options().unwrap();
        assert_eq!(
            options,
            Example {
                durable: true,
                max_record_bytes: 10,
                wait: Duration::from_millis(250),
                table: Some("t".into()),
                mode: Mode::Full,
            }
        );
        for (flag, value) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("off", false),
            ("No", false),
        ] {
            let url = StoreUrl::parse(&format!("x:?durable={flag}")).unwrap();
            assert_eq!(url.options::<Example>().unwrap().durable, value, "{flag}");
        }
        for (text, millis) in [("5s", 5_000), ("2m", 120_000), ("1h", 3_600_000), ("0ms", 0)] {
            assert_eq!(parse_duration(text), Some(Duration::from_millis(millis)));
        }
        for bad in ["5", "s", "5 s", "-1s", "1.5s", "5sec"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn option_errors_name_the_key_or_value() {
        let error = |text: &str| match StoreUrl::parse(text).unwrap().options::<Example>() {
            Err(Error::Config(message)) => message,
            other => panic!("{text}: expected Config, got {other:?}"),
        };
        assert!(error("x:?colour=red").contains("colour"));
        assert!(error("x:?durable=maybe").contains("maybe"));
        assert!(error("x:?max_record_bytes=lots").contains("lots"));
        assert!(error("x:?wait=5").contains("250ms"));
        assert!(error("x:?durable=1&durable=0").contains("twice"));
    }

    #[test]
    fn driver_keys_pass_through_in_order() {
        let url = StoreUrl::parse("postgresql://u:p@h:5/db?sslmode=require&durable=1&application_name=a%20b")
            .unwrap();
        let (options, driver): (Example, _) = url.split_options(&["sslmode", "application_name"]).unwrap();
        assert!(options.durable);
        assert_eq!(
            url.to_driver_url("postgres", &driver),
            "postgres://u:p@h:5/db?sslmode=require&application_name=a%20b"
        );
        let Err(Error::Config(message)) = url.options::<Example>() else {
            panic!("driver keys are unknown to options()");
        };
        assert!(message.contains("sslmode"), "{message}");
    }
}
