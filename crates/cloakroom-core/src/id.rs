//! Session ids and namespaces: the only strings that ever reach a backend as
//! part of a key, path or query, and only after a strict parse.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use crate::error::{Error, Result};

/// Random bytes in a session id: 256 bits, well above the 128 the contract asks.
const ID_BYTES: usize = 32;
/// Length of the id's text: unpadded base64url of 32 random bytes.
pub const SESSION_ID_LEN: usize = 43;
/// Longest namespace accepted.
pub const NAMESPACE_MAX_LEN: usize = 64;

/// A session id: 256 bits from the operating system's CSPRNG, written as 43
/// characters of unpadded base64url (`A–Z a–z 0–9 - _`).
///
/// The only way to get one is [`SessionId::generate`] or the strict
/// [`SessionId::parse`], so a value of this type is safe to use as a file
/// name, a Redis key part or a bound SQL parameter.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A new id from the OS CSPRNG.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes. There is no safe
    /// fallback for a bearer token, so this refuses to make a weak one.
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        if let Err(e) = getrandom::fill(&mut bytes) {
            panic!("the OS random number generator failed ({e}); refusing to issue a guessable session id");
        }
        SessionId(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parse untrusted text (a cookie, a header, a CLI argument).
    ///
    /// Accepts exactly the 43-character canonical base64url form that
    /// [`SessionId::generate`] makes; anything else is [`Error::InvalidId`].
    pub fn parse(text: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidId {
            what: "session id",
            reason,
        };
        // Length first, so a 10 kB or 1 MB cookie costs nothing more.
        if text.len() != SESSION_ID_LEN {
            return Err(invalid("must be exactly 43 characters"));
        }
        if !text.bytes().all(is_base64url) {
            return Err(invalid("must use only A-Z a-z 0-9 - _"));
        }
        // The decoder rejects non-canonical trailing bits, so every id has
        // exactly one spelling and cannot alias another record.
        match URL_SAFE_NO_PAD.decode(text) {
            Ok(bytes) if bytes.len() == ID_BYTES => Ok(SessionId(text.to_owned())),
            _ => Err(invalid("is not a canonical id")),
        }
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id a store keeps instead of this one when ids are hashed
    /// ([`SessionConfig::hash_ids`](crate::SessionConfig::hash_ids)):
    /// SHA-256 of the id, in the same 43-character form. A leaked store then
    /// holds no live bearer token, and 256-bit random ids need no salt: there
    /// is nothing to guess a preimage from.
    pub fn hashed(&self) -> SessionId {
        use sha2::{Digest, Sha256};
        SessionId(URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes())))
    }
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Debug shows only a prefix: a session id is a bearer credential and should
/// not end up whole in logs.
impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({}…)", &self.0[..6])
    }
}

impl FromStr for SessionId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SessionId::parse(s)
    }
}

/// The application a record belongs to: records are keyed by
/// `(namespace, id)`, so several applications can share one store and never
/// see each other's sessions.
///
/// 1 to 64 characters of `A–Z a–z 0–9 - _`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Parse and validate a namespace.
    pub fn new(text: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidId {
            what: "namespace",
            reason,
        };
        if text.is_empty() || text.len() > NAMESPACE_MAX_LEN {
            return Err(invalid("must be 1 to 64 characters"));
        }
        if !text.bytes().all(is_base64url) {
            return Err(invalid("must use only A-Z a-z 0-9 - _"));
        }
        Ok(Namespace(text.to_owned()))
    }

    /// The namespace's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Namespace {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Namespace::new(s)
    }
}

/// Longest [`Principal`] accepted, in bytes.
pub const PRINCIPAL_MAX_LEN: usize = 256;

/// Who a session belongs to (a user id, an account number), so that
/// [`Manager::sessions_of`](crate::Manager::sessions_of) can list a user's
/// sessions and [`Manager::revoke_all`](crate::Manager::revoke_all) can log
/// them out everywhere.
///
/// 1 to 256 bytes of UTF-8 without control characters. Stores keep it as a
/// bound parameter or hash it before it names a key or a file, so its
/// content never reaches a query, a key pattern or a path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(String);

impl Principal {
    /// Parse and validate a principal.
    pub fn new(text: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidId {
            what: "principal",
            reason,
        };
        if text.is_empty() || text.len() > PRINCIPAL_MAX_LEN {
            return Err(invalid("must be 1 to 256 bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err(invalid("must not contain control characters"));
        }
        Ok(Principal(text.to_owned()))
    }

    /// The principal's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fixed-length name for this principal: 43 characters of base64url of
    /// its SHA-256, in the same alphabet as session ids. Stores that name a
    /// key or a file after a principal use it, so any text is safe there.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Principal {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Principal::new(s)
    }
}

/// The full address of one record: `(namespace, id)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionKey {
    /// The application the session belongs to.
    pub namespace: Namespace,
    /// The session's id.
    pub id: SessionId,
}

impl SessionKey {
    /// Key of `id` in `namespace`.
    pub fn new(namespace: Namespace, id: SessionId) -> Self {
        SessionKey { namespace, id }
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{:?}", self.namespace, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_ids_parse_and_are_distinct() {
        let ids: HashSet<String> = (0..10_000)
            .map(|_| SessionId::generate().as_str().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            assert_eq!(SessionId::parse(id).unwrap().as_str(), id);
        }
    }

    /// Ids are bearer credentials, so a repeat would hand one visitor
    /// another's session: a million ids from the CSPRNG are distinct and all
    /// of the documented form (43 chars of base64url, canonical).
    #[test]
    fn a_million_ids_are_distinct_and_well_formed() {
        let mut seen = HashSet::with_capacity(1_000_000);
        for _ in 0..1_000_000 {
            let id = SessionId::generate();
            assert_eq!(id.as_str().len(), SESSION_ID_LEN);
            assert!(id.as_str().bytes().all(is_base64url), "{}", id.as_str());
            assert!(seen.insert(id.0), "a generated id repeated");
        }
    }

    #[test]
    fn hostile_ids_are_rejected() {
        let long = "a".repeat(10_000);
        let cases = [
            "",
            "../../etc/passwd",
            "' OR 1=1 --",
            long.as_str(),
            "ééééééééééééééééééééééééééééééééééééééééééé",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\0",
            // Right length and alphabet, but non-canonical trailing bits.
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
        ];
        for case in cases {
            assert!(
                matches!(SessionId::parse(case), Err(Error::InvalidId { .. })),
                "accepted {case:?}"
            );
        }
    }

    #[test]
    fn namespaces_are_validated() {
        assert!(Namespace::new("shop-2_a").is_ok());
        for bad in ["", "a/b", "..", "a b", "x'--", &"n".repeat(65)] {
            assert!(Namespace::new(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn principals_are_validated_and_digested_to_a_safe_name() {
        let p = Principal::new("zoë ' OR 1=1 -- ../../etc").unwrap();
        let digest = p.digest();
        assert_eq!(digest.len(), 43);
        assert!(digest.bytes().all(is_base64url), "{digest}");
        assert_ne!(digest, Principal::new("zoe").unwrap().digest());
        for bad in ["", "a\nb", "tab\there", &"p".repeat(257)] {
            assert!(Principal::new(bad).is_err(), "accepted {bad:?}");
        }
        assert!(Principal::new(&"p".repeat(256)).is_ok());
    }

    #[test]
    fn hashed_ids_are_valid_ids_distinct_from_the_original() {
        let id = SessionId::generate();
        let h = id.hashed();
        assert_ne!(h, id);
        assert_eq!(
            SessionId::parse(h.as_str()).unwrap(),
            h,
            "a hashed id must be a canonical id"
        );
        assert_eq!(id.hashed(), h, "hashing is deterministic");
    }

    #[test]
    fn debug_does_not_leak_the_whole_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(id.as_str()));
    }
}
