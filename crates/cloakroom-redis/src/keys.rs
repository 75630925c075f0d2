//! Key layout. Every key of one session carries the hash tag `{ns:id}`, so the
//! record, its lock and its wake-up keys live in one Cluster slot and one
//! script may touch them all:
//!
//! ```text
//! <prefix>{<ns>:<id>}           hash: data, version, created, accessed, expires,
//!                               and, for a session with a principal,
//!                               principal, indexed_until; PEXPIREAT
//!                               expires + expired_grace
//! <prefix>{<ns>:<id>}:lock      string: the holder's random token, PX lease
//! <prefix>{<ns>:<id>}:waiting   string flag, PX: a lock attempt failed lately
//! <prefix>{<ns>:<id>}:wake      list: at most one element, pushed on release
//!                               while the waiting flag is up
//! <prefix>principal:{<ns>:p:<digest>}
//!                               set: stored ids of the sessions of one
//!                               principal (a superset: see `principals`);
//!                               PEXPIREAT at least the latest indexed_until
//! ```
//!
//! A principal set is named by [`Principal::digest`] (43 characters of
//! base64url), never by the principal's text, and carries a hash tag of its
//! own: the `p:` in it can never be part of a session's tag, so the set lives
//! in a slot of its own choosing, usually not its sessions' (which is why no
//! session script touches it). It does not match
//! [`scan_pattern`](KeyLayout::scan_pattern), which wants a `{` right after
//! the prefix.
//!
//! Namespaces and ids are strictly parsed (`A-Z a-z 0-9 - _`), so they cannot
//! contain braces, colons or glob characters; the prefix is checked when the
//! store is configured.

use cloakroom_core::{Error, Namespace, Principal, Result, SessionId, SessionKey};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "cloakroom:";

/// How this store names its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KeyLayout {
    prefix: String,
}

/// The Redis keys of one session, for tests and operators inspecting the
/// server ([`RedisStore::session_keys`](crate::RedisStore::session_keys)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionKeys {
    /// The record hash; expires by itself at the record's `expires`.
    pub record: String,
    /// The lock: the holder's random token, with the lease as its expiry.
    pub lock: String,
    /// Raised (with a short expiry) by every failed lock attempt, so that a
    /// release only pushes a wake-up when somebody may be waiting.
    pub waiting: String,
    /// The wake-up list waiters block on with `BLPOP`.
    pub wake: String,
}

impl KeyLayout {
    /// A layout with `prefix`, which must not contain `{` or `}` (they would
    /// move the hash tag off the session and split its keys across slots).
    pub fn new(prefix: &str) -> Result<Self> {
        if prefix.contains(['{', '}']) {
            return Err(Error::Config(
                "redis key prefix must not contain '{' or '}'".into(),
            ));
        }
        Ok(KeyLayout {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn session(&self, key: &SessionKey) -> SessionKeys {
        let record = format!(
            "{}{{{}:{}}}",
            self.prefix,
            key.namespace.as_str(),
            key.id.as_str()
        );
        SessionKeys {
            lock: format!("{record}:lock"),
            waiting: format!("{record}:waiting"),
            wake: format!("{record}:wake"),
            record,
        }
    }

    /// The set of the stored ids of `principal`'s sessions in `namespace`.
    pub fn principal_set(&self, namespace: &Namespace, principal: &Principal) -> String {
        format!(
            "{}principal:{{{}:p:{}}}",
            self.prefix,
            namespace.as_str(),
            principal.digest()
        )
    }

    /// `SCAN MATCH` pattern for the record keys of `namespace`: the trailing
    /// `}` leaves out the lock and wake-up keys, which end in `:lock`,
    /// `:waiting` or `:wake`.
    pub fn scan_pattern(&self, namespace: &Namespace) -> String {
        format!("{}{{{}:*}}", escape_glob(&self.prefix), namespace.as_str())
    }

    /// The session id of a record key found by [`scan_pattern`](Self::scan_pattern),
    /// or `None` for anything that is not exactly such a key.
    pub fn id_of(&self, namespace: &Namespace, key: &[u8]) -> Option<SessionId> {
        let key = std::str::from_utf8(key).ok()?;
        let inner = key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_prefix(namespace.as_str())?
            .strip_prefix(':')?
            .strip_suffix('}')?;
        SessionId::parse(inner).ok()
    }
}

/// Escape the glob characters of `SCAN MATCH` so a prefix matches literally.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The Redis Cluster slot of `key` (CRC16/XMODEM of the hash tag, mod 16384),
/// used to find the node a waiter must block on.
pub(crate) fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter().position(|&b| b == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(bytes);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_and_slots_match_redis() {
        // 0x31C3 is CRC16/XMODEM's standard check value (the CRC of
        // "123456789"); `CLUSTER KEYSLOT foo` answers 12182.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
    }

    #[test]
    fn layout_round_trips_ids_and_skips_lock_keys() {
        let layout = KeyLayout::new("app*:").unwrap();
        let ns = Namespace::new("shop").unwrap();
        let id = SessionId::generate();
        let keys = layout.session(&SessionKey::new(ns.clone(), id.clone()));
        assert_eq!(layout.id_of(&ns, keys.record.as_bytes()), Some(id));
        assert_eq!(layout.id_of(&ns, keys.lock.as_bytes()), None);
        assert_eq!(layout.id_of(&ns, keys.wake.as_bytes()), None);
        assert_eq!(layout.id_of(&ns, keys.waiting.as_bytes()), None);
        assert_eq!(layout.scan_pattern(&ns), "app\\*:{shop:*}");
        assert_eq!(slot_of(&keys.record), slot_of(&keys.lock));
        assert_eq!(slot_of(&keys.record), slot_of(&keys.wake));
        assert_eq!(slot_of(&keys.record), slot_of(&keys.waiting));
        assert!(KeyLayout::new("a{b").is_err());
    }

    #[test]
    fn principal_sets_are_named_by_digest_and_never_scanned_as_records() {
        let layout = KeyLayout::new("app*:").unwrap();
        let ns = Namespace::new("shop").unwrap();
        let hostile = Principal::new("} * ? [x] {evil:1}").unwrap();
        let set = layout.principal_set(&ns, &hostile);
        assert_eq!(set, format!("app*:principal:{{shop:p:{}}}", hostile.digest()));
        assert!(!set.contains("evil"), "{set}");
        assert_eq!(layout.id_of(&ns, set.as_bytes()), None);
        // The pattern wants `{` right after the (escaped) prefix.
        assert!(!set.starts_with("app*:{"));
        let other = layout.principal_set(&ns, &Principal::new("zoe").unwrap());
        assert_ne!(set, other);
        assert_ne!(
            layout.principal_set(&Namespace::new("shop2").unwrap(), &hostile),
            set
        );
    }
}
