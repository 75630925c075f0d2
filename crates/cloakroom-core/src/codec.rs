//! The session data codec: typed values with serde, stored with rmp-serde
//! behind a format-version header.
//!
//! Each value is encoded on its own and kept as bytes until it is read, so a
//! value that no longer decodes as the type asked for (a struct changed shape
//! between deploys, which is how sessions of pickled objects broke in older
//! stores) fails alone, with an error naming the key and the type, and every
//! other key stays readable. Only data is stored, never code.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::error::{Error, Result};

/// First bytes of every encoded session: `CLK` and the format version.
const MAGIC: &[u8; 3] = b"CLK";
/// The newest format this build reads. It writes format 1 (the values
/// alone) for every session that carries no settings of its own, so builds
/// that read only format 1 still read those, and format 2 (the values, then
/// the session's settings, such as its [`Expiry`]) for the others.
pub const FORMAT_VERSION: u8 = 2;
const FORMAT_VALUES_ONLY: u8 = 1;

/// How long one session lives, when it is not the manager's default; set
/// with [`Session::set_expiry`](crate::Session::set_expiry) and stored with
/// the session, so it holds on every later request.
///
/// The manager's `absolute_timeout`, when set, is a ceiling no session
/// passes, whatever its expiry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Expiry {
    /// Expire after this long without a request ("remember me for 30 days"
    /// is `OnInactivity` of 30 days, with a persistent cookie).
    OnInactivity(#[serde(with = "millis")] std::time::Duration),
    /// Expire at this instant, however busy.
    AtInstant(crate::record::Timestamp),
    /// A cookie without `Max-Age`, which the browser drops when it closes;
    /// the stored session still expires after the manager's idle timeout.
    OnBrowserClose,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// What a session keeps besides its values (format 2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
struct Settings {
    #[serde(default)]
    expiry: Option<Expiry>,
}

/// The key/value contents of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionData {
    values: BTreeMap<String, ByteBuf>,
    settings: Settings,
}

impl SessionData {
    /// An empty session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value under `key` decoded as `T`; `Ok(None)` if the key is absent.
    ///
    /// A value that does not decode as `T` is [`Error::Decode`] naming the key
    /// and `T`; the stored bytes are left as they are.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(bytes) = self.values.get(key) else {
            return Ok(None);
        };
        rmp_serde::from_slice(bytes)
            .map(Some)
            .map_err(|source| Error::Decode {
                key: key.to_owned(),
                type_name: std::any::type_name::<T>(),
                source,
            })
    }

    /// Store `value` under `key`. Returns whether the stored bytes changed,
    /// so writing the same value again does not make the session dirty.
    ///
    /// Structs are encoded with field names, so adding a field with
    /// `#[serde(default)]` later still reads old sessions.
    pub fn insert<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<bool> {
        let bytes = rmp_serde::to_vec_named(value).map_err(|source| Error::Encode {
            key: key.to_owned(),
            source,
        })?;
        Ok(self.insert_raw(key, bytes))
    }

    /// Store already-encoded bytes under `key` (used by migration tools).
    /// Returns whether the stored bytes changed.
    pub fn insert_raw(&mut self, key: &str, bytes: Vec<u8>) -> bool {
        match self.values.get(key) {
            Some(old) if old.as_slice() == bytes.as_slice() => false,
            _ => {
                self.values.insert(key.to_owned(), ByteBuf::from(bytes));
                true
            }
        }
    }

    /// Remove `key`; returns whether it was present.
    pub fn remove(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    /// Remove every key; returns whether there was any.
    pub fn clear(&mut self) -> bool {
        let had = !self.values.is_empty();
        self.values.clear();
        had
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Each key with its encoded (MessagePack) value, for tools that show a
    /// session without knowing its Rust types.
    pub fn iter_raw(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The session's own expiry (`None`: the manager's default).
    pub fn expiry(&self) -> Option<Expiry> {
        self.settings.expiry
    }

    /// Set the session's own expiry; returns whether it changed.
    pub fn set_expiry(&mut self, expiry: Option<Expiry>) -> bool {
        let changed = self.settings.expiry != expiry;
        self.settings.expiry = expiry;
        changed
    }

    /// Encode for storage: header, then the MessagePack map, then (format 2
    /// only) the session's settings.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.values.values().map(|v| v.len() + 8).sum::<usize>());
        out.extend_from_slice(MAGIC);
        let plain = self.settings == Settings::default();
        out.push(if plain { FORMAT_VALUES_ONLY } else { FORMAT_VERSION });
        // A map of strings to byte strings, and a struct of plain enums,
        // always serialize; the Vec writer cannot fail.
        if let Err(e) = rmp_serde::encode::write(&mut out, &self.values) {
            unreachable!("encoding a map of strings to bytes failed: {e}");
        }
        if !plain {
            if let Err(e) = rmp_serde::encode::write_named(&mut out, &self.settings) {
                unreachable!("encoding session settings failed: {e}");
            }
        }
        out
    }

    /// Decode stored bytes; anything that is not a record this build can
    /// read is [`Error::Corrupt`] (never a panic).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let corrupt = |reason: String| Error::Corrupt { reason };
        let Some((header, body)) = bytes.split_at_checked(MAGIC.len() + 1) else {
            return Err(corrupt(format!(
                "{} bytes is too short for a record header",
                bytes.len()
            )));
        };
        if &header[..MAGIC.len()] != MAGIC {
            if crate::Keyring::is_sealed(bytes) {
                return Err(corrupt(
                    "the record is sealed (encrypted at rest): it opens only with the keyring it was sealed with"
                        .into(),
                ));
            }
            return Err(corrupt("missing the CLK header".into()));
        }
        let version = header[MAGIC.len()];
        if version == 0 || version > FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version} is not readable by this build (reads 1 to {FORMAT_VERSION})"
            )));
        }
        let mut reader = body;
        let values: BTreeMap<String, ByteBuf> =
            rmp_serde::from_read(&mut reader).map_err(|e| corrupt(format!("undecodable body: {e}")))?;
        let settings = if version >= 2 {
            rmp_serde::from_read(&mut reader)
                .map_err(|e| corrupt(format!("undecodable session settings: {e}")))?
        } else {
            Settings::default()
        };
        if !reader.is_empty() {
            return Err(corrupt(format!("{} trailing bytes after the body", reader.len())));
        }
        Ok(SessionData { values, settings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct CartV1 {
        items: Vec<String>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct CartV2 {
        items: Vec<String>,
        #[serde(default)]
        coupon: Option<String>,
    }

    #[test]
    fn round_trips_typed_values() {
        let mut d = SessionData::new();
        assert!(d.insert("hits", &41u64).unwrap());
        assert!(!d.insert("hits", &41u64).unwrap(), "same value is not a change");
        d.insert("name", "zoë ' OR 1=1 --").unwrap();
        let back = SessionData::decode(&d.encode()).unwrap();
        assert_eq!(back.get::<u64>("hits").unwrap(), Some(41));
        assert_eq!(
            back.get::<String>("name").unwrap().as_deref(),
            Some("zoë ' OR 1=1 --")
        );
        assert_eq!(back.get::<u64>("missing").unwrap(), None);
    }

    #[test]
    fn a_value_of_the_wrong_type_names_key_and_type_and_spares_the_rest() {
        let mut d = SessionData::new();
        d.insert(
            "cart",
            &CartV1 {
                items: vec!["a".into()],
            },
        )
        .unwrap();
        d.insert("hits", &3u32).unwrap();
        let back = SessionData::decode(&d.encode()).unwrap();
        let err = back.get::<Vec<u64>>("cart").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Decode { .. }));
        assert!(msg.contains("\"cart\"") && msg.contains("Vec<u64>"), "{msg}");
        assert_eq!(back.get::<u32>("hits").unwrap(), Some(3));
        // The failed read did not destroy the value.
        assert_eq!(back.get::<CartV1>("cart").unwrap().unwrap().items, vec!["a"]);
    }

    #[test]
    fn old_values_read_as_a_grown_struct() {
        let mut d = SessionData::new();
        d.insert(
            "cart",
            &CartV1 {
                items: vec!["x".into()],
            },
        )
        .unwrap();
        let v2: CartV2 = d.get("cart").unwrap().unwrap();
        assert_eq!(
            v2,
            CartV2 {
                items: vec!["x".into()],
                coupon: None
            }
        );
    }

    #[test]
    fn settings_round_trip_and_plain_sessions_stay_in_format_1() {
        let mut d = SessionData::new();
        d.insert("k", &1u8).unwrap();
        assert_eq!(d.encode()[3], 1, "no settings: readable by format-1 builds");
        for expiry in [
            Expiry::OnInactivity(std::time::Duration::from_secs(30 * 86_400)),
            Expiry::AtInstant(crate::record::Timestamp::from_millis(1_900_000_000_000)),
            Expiry::OnBrowserClose,
        ] {
            assert!(d.set_expiry(Some(expiry)));
            let bytes = d.encode();
            assert_eq!(bytes[3], 2);
            let back = SessionData::decode(&bytes).unwrap();
            assert_eq!(back.expiry(), Some(expiry));
            assert_eq!(back.get::<u8>("k").unwrap(), Some(1));
            let mut cut = bytes.clone();
            cut.pop();
            assert!(matches!(SessionData::decode(&cut), Err(Error::Corrupt { .. })));
        }
        assert!(d.set_expiry(None));
        assert_eq!(d.encode()[3], 1);
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let mut good = SessionData::new();
        good.insert("k", &1u8).unwrap();
        let good = good.encode();
        let mut newer = good.clone();
        newer[3] = FORMAT_VERSION + 1;
        let mut trailing = good.clone();
        trailing.push(0);
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            b"CLK".to_vec(),
            b"\x80\x04\x95pickle".to_vec(),
            newer,
            trailing,
            good[..good.len() - 1].to_vec(),
            [b"CLK\x01".as_slice(), &[0xdd, 0xff, 0xff, 0xff, 0xff]].concat(),
        ];
        for bytes in cases {
            assert!(
                matches!(SessionData::decode(&bytes), Err(Error::Corrupt { .. })),
                "decoded {bytes:?}"
            );
        }
    }
}
