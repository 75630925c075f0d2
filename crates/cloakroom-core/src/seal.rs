//! Encryption at rest: session data sealed with AES-256-GCM under a
//! [`Keyring`] (opt-in, [`SessionConfig::keyring`](crate::SessionConfig::keyring)).
//!
//! What is sealed is the encoded session data, the bytes a store keeps in
//! [`Record::data`](crate::Record::data); the id, the version and the times
//! stay in clear, since stores lock, fence, expire and sweep by them.
//!
//! A sealed record is laid out as
//!
//! ```text
//! "CLS" | seal version (1) | key fingerprint (4) | nonce (12) | ciphertext | tag (16)
//! ```
//!
//! `CLS` is not the `CLK` of a plain record, so either kind is told apart by
//! its first bytes. The nonce is 96 random bits from the OS RNG, new on every
//! write. The associated data binds the seal version, the namespace and the
//! *stored* id (the one the store sees: with
//! [`hash_ids`](crate::SessionConfig::hash_ids) on, the hash), so a record
//! copied to another id or namespace fails to open, as does one altered in
//! any byte. The fingerprint is a hint, not a secret and not authenticated:
//! it tells which key of the keyring to try first.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::id::SessionKey;

/// First bytes of every sealed record (the plain codec writes `CLK`).
pub(crate) const SEALED_MAGIC: &[u8; 3] = b"CLS";
/// The sealed layout this build writes and reads.
const SEAL_VERSION: u8 = 1;
const FINGERPRINT_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = SEALED_MAGIC.len() + 1 + FINGERPRINT_LEN + NONCE_LEN;
/// Domain separation of the associated data.
const AAD_DOMAIN: &[u8] = b"cloakroom/seal/v1\0";
/// Domain separation of key fingerprints.
const FINGERPRINT_DOMAIN: &[u8] = b"cloakroom/key-fingerprint/v1\0";

/// One 256-bit AES-GCM key.
///
/// Its bytes are zeroed when it is dropped and never printed: `Debug` shows
/// only the [fingerprint](Key::fingerprint).
#[derive(Clone)]
pub struct Key {
    bytes: Zeroizing<[u8; 32]>,
}

impl Key {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key {
            bytes: Zeroizing::new(bytes),
        }
    }

    /// A key from base64 text (standard or URL-safe alphabet, padded or not,
    /// surrounding whitespace ignored) that decodes to exactly 32 bytes, as
    /// [`to_base64`](Key::to_base64) and `openssl rand -base64 32` write it.
    /// Anything else is [`Error::Config`]; the error never echoes the text,
    /// which is a secret.
    pub fn from_base64(text: &str) -> Result<Self> {
        let text = text.trim();
        let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
        let alphabet = if text.contains(['-', '_']) {
            &alphabet::URL_SAFE
        } else {
            &alphabet::STANDARD
        };
        let decoded = Zeroizing::new(
            GeneralPurpose::new(alphabet, config)
                .decode(text)
                .map_err(|_| Error::Config("an encryption key is not valid base64".into()))?,
        );
        let bytes: [u8; 32] = decoded.as_slice().try_into().map_err(|_| {
            Error::Config(format!(
                "an encryption key must be 32 bytes (AES-256), this one is {} bytes",
                decoded.len()
            ))
        })?;
        Ok(Key::from_bytes(bytes))
    }

    /// A new random key from the OS CSPRNG.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes: there is no safe
    /// fallback for a key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        if let Err(e) = getrandom::fill(bytes.as_mut_slice()) {
            panic!("the OS random number generator failed ({e}); refusing to make a guessable key");
        }
        Key { bytes }
    }

    /// The key as standard padded base64, for a secret store or an
    /// environment variable. Handle the result as the secret it is.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.bytes.as_slice())
    }

    /// A short public name of the key (8 hex digits of a SHA-256 of it), the
    /// one written in the header of what it seals: safe to log and show.
    pub fn fingerprint(&self) -> String {
        hex(&self.fingerprint_bytes())
    }

    fn fingerprint_bytes(&self) -> [u8; FINGERPRINT_LEN] {
        let digest = Sha256::new()
            .chain_update(FINGERPRINT_DOMAIN)
            .chain_update(self.bytes.as_slice())
            .finalize();
        let mut out = [0u8; FINGERPRINT_LEN];
        out.copy_from_slice(&digest[..FINGERPRINT_LEN]);
        out
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        // Without an early exit, so that a comparison does not time the bytes.
        self.bytes
            .iter()
            .zip(other.bytes.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for Key {}

#[derive(Clone)]
struct Entry {
    key: Key,
    fingerprint: [u8; FINGERPRINT_LEN],
    cipher: Aes256Gcm,
}

impl Entry {
    fn new(key: Key) -> Self {
        let cipher = Aes256Gcm::new(&(*key.bytes).into());
        Entry {
            fingerprint: key.fingerprint_bytes(),
            key,
            cipher,
        }
    }
}

/// The keys that seal and open session data: new writes use the first key,
/// reads try every key (the one whose fingerprint the record names first).
///
/// To rotate: make a new key first and keep the old ones with
/// [`with_old`](Keyring::with_old) until every record is sealed anew (each
/// write does that, `cloakroom rekey` does it for all records at once), then
/// drop the old ones. Cheap to clone.
///
/// ```
/// use cloakroom_core::{Key, Keyring};
/// # fn main() -> cloakroom_core::Result<()> {
/// let old = Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")?;
/// let keyring = Keyring::new(Key::generate()).with_old(old);
/// # assert_eq!(keyring.fingerprints().len(), 2);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Keyring {
    entries: Arc<[Entry]>,
}

impl Keyring {
    /// Bytes sealing adds to a record: header, nonce and tag.
    pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;

    /// A keyring whose first key (the one new writes use) is `first`.
    pub fn new(first: Key) -> Self {
        Keyring {
            entries: Arc::from(vec![Entry::new(first)]),
        }
    }

    /// Also open records sealed with `key` (an older key, kept for rotation).
    /// A key already in the keyring is not added twice.
    pub fn with_old(self, key: Key) -> Self {
        if self.entries.iter().any(|e| e.key == key) {
            return self;
        }
        let mut entries = self.entries.to_vec();
        entries.push(Entry::new(key));
        Keyring {
            entries: entries.into(),
        }
    }

    /// The [fingerprints](Key::fingerprint) of the keys, the first key first.
    pub fn fingerprints(&self) -> Vec<String> {
        self.entries.iter().map(|e| hex(&e.fingerprint)).collect()
    }

    /// Whether `stored` is a sealed record (of any key), by its first bytes.
    pub fn is_sealed(stored: &[u8]) -> bool {
        stored.starts_with(SEALED_MAGIC)
    }

    /// The fingerprint a sealed record names, `None` if `stored` is not
    /// sealed (or too short to name one).
    pub fn sealed_with(stored: &[u8]) -> Option<String> {
        if !Self::is_sealed(stored) {
            return None;
        }
        stored
            .get(SEALED_MAGIC.len() + 1..SEALED_MAGIC.len() + 1 + FINGERPRINT_LEN)
            .map(hex)
    }

    /// Whether `stored` should be sealed anew to be under the first key: it
    /// is plain, or sealed with another key.
    pub fn needs_reseal(&self, stored: &[u8]) -> bool {
        Self::sealed_with(stored).as_deref() != Some(hex(&self.first().fingerprint).as_str())
    }

    fn first(&self) -> &Entry {
        // `new` puts one entry in and nothing takes one out.
        &self.entries[0]
    }

    /// Seal `plain` for the record stored under `key` with the first key and
    /// a fresh random nonce. The result is `plain.len() +`
    /// [`OVERHEAD`](Keyring::OVERHEAD) bytes.
    ///
    /// # Panics
    /// If the operating system cannot provide random bytes for the nonce (a
    /// nonce must never repeat, so there is no fallback), or if `plain` is
    /// over AES-GCM's limit of 64 GiB.
    pub fn seal(&self, key: &SessionKey, plain: &[u8]) -> Vec<u8> {
        let entry = self.first();
        let mut nonce = [0u8; NONCE_LEN];
        if let Err(e) = getrandom::fill(&mut nonce) {
            panic!("the OS random number generator failed ({e}); refusing to seal with a guessable nonce");
        }
        let aad = associated_data(key);
        let sealed = match entry.cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        ) {
            Ok(sealed) => sealed,
            Err(_) => panic!("AES-GCM refused to seal {} bytes", plain.len()),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(SEALED_MAGIC);
        out.push(SEAL_VERSION);
        out.extend_from_slice(&entry.fingerprint);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Open a record sealed for `key` by [`seal`](Keyring::seal) with any
    /// key of this keyring.
    ///
    /// Anything else is [`Error::Corrupt`] saying why (never a panic):
    /// not sealed, truncated, an unknown seal version, sealed with a key not
    /// in the keyring, or sealed with one of its keys but for another id or
    /// namespace (a moved record) or altered since.
    pub fn open(&self, key: &SessionKey, sealed: &[u8]) -> Result<Vec<u8>> {
        let corrupt = |reason: String| Error::Corrupt { reason };
        if !Self::is_sealed(sealed) {
            return Err(corrupt("not a sealed record (no CLS header)".into()));
        }
        let Some((header, body)) = sealed.split_at_checked(HEADER_LEN) else {
            return Err(corrupt(format!(
                "sealed record of {} bytes is too short for its header",
                sealed.len()
            )));
        };
        if body.len() < TAG_LEN {
            return Err(corrupt(format!(
                "sealed record of {} bytes is too short for its tag",
                sealed.len()
            )));
        }
        let version = header[SEALED_MAGIC.len()];
        if version != SEAL_VERSION {
            return Err(corrupt(format!(
                "seal version {version} is not readable by this build (reads {SEAL_VERSION})"
            )));
        }
        let rest = &header[SEALED_MAGIC.len() + 1..];
        let (fingerprint, nonce) = rest.split_at(FINGERPRINT_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| corrupt("sealed record header has no whole nonce".into()))?;
        let nonce = Nonce::from(nonce);
        let aad = associated_data(key);
        let named = self.entries.iter().filter(|e| e.fingerprint == fingerprint);
        let others = self.entries.iter().filter(|e| e.fingerprint != fingerprint);
        for entry in named.chain(others) {
            if let Ok(plain) = entry.cipher.decrypt(&nonce, Payload { msg: body, aad: &aad }) {
                return Ok(plain);
            }
        }
        let known = self.entries.iter().any(|e| e.fingerprint == fingerprint);
        let fingerprint = hex(fingerprint);
        if known {
            Err(corrupt(format!(
                "sealed with key {fingerprint} of the keyring, but it does not open as the record of {key}: \
                 it was moved from another id or namespace, or altered"
            )))
        } else {
            Err(corrupt(format!(
                "sealed with key {fingerprint}, which is not in the keyring (it has {}): \
                 configure that key, at least as an old key",
                self.fingerprints().join(", ")
            )))
        }
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("fingerprints", &self.fingerprints())
            .finish()
    }
}

impl PartialEq for Keyring {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .zip(other.entries.iter())
                .all(|(a, b)| a.key == b.key)
    }
}

impl Eq for Keyring {}

/// What a seal is bound to: the seal version, the namespace and the stored
/// id, each length-prefixed so that no two keys give the same bytes.
fn associated_data(key: &SessionKey) -> Vec<u8> {
    let ns = key.namespace.as_str().as_bytes();
    let id = key.id.as_str().as_bytes();
    let mut aad = Vec::with_capacity(AAD_DOMAIN.len() + 1 + 8 + ns.len() + id.len());
    aad.extend_from_slice(AAD_DOMAIN);
    aad.push(SEAL_VERSION);
    for part in [ns, id] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part);
    }
    aad
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Namespace, SessionId};

    fn key_in(ns: &str) -> SessionKey {
        SessionKey::new(Namespace::new(ns).unwrap(), SessionId::generate())
    }

    fn corrupt_reason(r: Result<Vec<u8>>) -> String {
        match r {
            Err(Error::Corrupt { reason }) => reason,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn round_trips_with_fresh_nonces_and_no_plaintext() {
        let ring = Keyring::new(Key::generate());
        let key = key_in("shop");
        let plain = b"CLK\x01 the marker: hunter2".to_vec();
        let a = ring.seal(&key, &plain);
        let b = ring.seal(&key, &plain);
        assert_ne!(a, b, "each seal has its own nonce");
        assert_eq!(a.len(), plain.len() + Keyring::OVERHEAD);
        assert!(Keyring::is_sealed(&a));
        assert!(!a.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ring.open(&key, &a).unwrap(), plain);
        assert_eq!(ring.open(&key, &b).unwrap(), plain);
        assert_eq!(ring.open(&key, &ring.seal(&key, b"")).unwrap(), b"");
    }

    #[test]
    fn a_record_moved_to_another_id_or_namespace_does_not_open() {
        let ring = Keyring::new(Key::generate());
        let key = key_in("shop");
        let sealed = ring.seal(&key, b"data");
        let other_id = SessionKey::new(key.namespace.clone(), SessionId::generate());
        let other_ns = SessionKey::new(Namespace::new("admin").unwrap(), key.id.clone());
        for moved in [other_id, other_ns] {
            let reason = corrupt_reason(ring.open(&moved, &sealed));
            assert!(reason.contains("moved"), "{reason}");
        }
        // The hashed stored id is another id too.
        let hashed = SessionKey::new(key.namespace.clone(), key.id.hashed());
        assert!(ring.open(&hashed, &sealed).is_err());
    }

    #[test]
    fn a_wrong_key_is_corrupt_naming_the_key() {
        let right = Key::generate();
        let wrong = Keyring::new(Key::generate());
        let key = key_in("shop");
        let sealed = Keyring::new(right.clone()).seal(&key, b"data");
        let reason = corrupt_reason(wrong.open(&key, &sealed));
        assert!(reason.contains(&right.fingerprint()), "{reason}");
        assert!(reason.contains("not in the keyring"), "{reason}");
    }

    #[test]
    fn rotation_opens_old_seals_and_writes_with_the_new_key() {
        let old = Key::generate();
        let new = Key::generate();
        let key = key_in("shop");
        let before = Keyring::new(old.clone()).seal(&key, b"old data");
        let ring = Keyring::new(new.clone()).with_old(old.clone());
        assert_eq!(ring.open(&key, &before).unwrap(), b"old data");
        assert!(ring.needs_reseal(&before));
        let after = ring.seal(&key, b"new data");
        assert_eq!(Keyring::sealed_with(&after), Some(new.fingerprint()));
        assert!(!ring.needs_reseal(&after));
        assert!(ring.needs_reseal(b"CLK\x01\x80"), "plain records need sealing");
        // Once the old key is dropped, its records no longer open.
        assert!(Keyring::new(new).open(&key, &before).is_err());
        // The old key alone cannot open what the new one sealed.
        assert!(Keyring::new(old).open(&key, &after).is_err());
    }

    #[test]
    fn a_wrong_fingerprint_still_opens_by_trying_every_key() {
        let a = Key::generate();
        let b = Key::generate();
        let key = key_in("shop");
        let mut sealed = Keyring::new(b.clone()).seal(&key, b"data");
        sealed[4..8].copy_from_slice(&a.fingerprint_bytes());
        let ring = Keyring::new(a).with_old(b);
        assert_eq!(ring.open(&key, &sealed).unwrap(), b"data");
    }

    #[test]
    fn truncated_altered_and_garbage_input_is_corrupt_not_a_panic() {
        let ring = Keyring::new(Key::generate());
        let key = key_in("shop");
        let good = ring.seal(&key, b"some session data");
        let mut cases: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
        // (The fingerprint, bytes 4..8, is a hint that is not authenticated:
        // a_wrong_fingerprint_still_opens_by_trying_every_key.)
        for i in [0, 3, 8, 19, 20, good.len() - 1] {
            let mut altered = good.clone();
            altered[i] ^= 0x01;
            cases.push(altered);
        }
        let mut extended = good.clone();
        extended.push(0);
        cases.push(extended);
        cases.push(b"CLK\x01\x80".to_vec());
        cases.push(b"\x80\x04\x95pickle".to_vec());
        cases.push([b"CLS\x01".as_slice(), &[0xff; 64]].concat());
        for bytes in cases {
            assert!(
                matches!(ring.open(&key, &bytes), Err(Error::Corrupt { .. })),
                "opened {bytes:?}"
            );
        }
        assert_eq!(ring.open(&key, &good).unwrap(), b"some session data");
    }

    #[test]
    fn fingerprints_are_distinct_stable_and_keys_never_print() {
        let a = Key::from_bytes([7; 32]);
        let b = Key::from_bytes([8; 32]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), Key::from_bytes([7; 32]).fingerprint());
        assert_eq!(a.fingerprint().len(), 8);
        let ring = Keyring::new(a.clone()).with_old(b.clone()).with_old(a.clone());
        assert_eq!(ring.fingerprints(), vec![a.fingerprint(), b.fingerprint()]);
        let shown = format!("{a:?} {ring:?}");
        assert!(shown.contains(&a.fingerprint()), "{shown}");
        assert!(!shown.contains(&a.to_base64()), "{shown}");
        assert!(!shown.contains("7, 7"), "{shown}");
        let many: std::collections::HashSet<String> =
            (0..256).map(|_| Key::generate().fingerprint()).collect();
        assert_eq!(many.len(), 256);
    }

    #[test]
    fn base64_keys_in_either_alphabet_and_nothing_else() {
        let k = Key::generate();
        let std = k.to_base64();
        assert_eq!(Key::from_base64(&std).unwrap(), k);
        assert_eq!(Key::from_base64(&format!("  {std}\n")).unwrap(), k);
        assert_eq!(Key::from_base64(std.trim_end_matches('=')).unwrap(), k);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfb; 32]);
        assert!(url.contains('-') || url.contains('_'), "{url}");
        assert_eq!(Key::from_base64(&url).unwrap(), Key::from_bytes([0xfb; 32]));
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        for bad in ["", "not base64 at all!", short.as_str(), "AAAA-/+_"] {
            match Key::from_base64(bad) {
                Err(Error::Config(msg)) => assert!(!msg.contains("at all"), "echoed the key text: {msg}"),
                other => panic!("{bad:?}: expected Config, got {other:?}"),
            }
        }
    }
}

/// Sealing through the Manager/Session API on the memory store (the
/// conformance case `sealed_records_keep_no_value_in_clear` runs the same on
/// every backend).
#[cfg(test)]
mod manager_tests {
    use std::sync::Arc;

    use super::*;
    use crate::{Manager, MemoryStore, Namespace, Policy, SessionData, SessionStore};

    fn manager(store: &Arc<MemoryStore>, keyring: Option<Keyring>) -> Manager {
        let b = Manager::builder(
            Arc::clone(store) as Arc<dyn SessionStore>,
            Namespace::new("app").unwrap(),
        );
        match keyring {
            Some(k) => b.keyring(k),
            None => b,
        }
        .build()
        .unwrap()
    }

    #[tokio::test]
    async fn plain_records_are_read_and_sealed_at_their_next_write() {
        let store = Arc::new(MemoryStore::new());
        let plain = manager(&store, None);
        let mut s = plain.open(None).await.unwrap();
        s.insert("user", "alice").unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        let raw = store.load(&plain.key(&id)).await.unwrap().unwrap();
        assert!(!Keyring::is_sealed(&raw.data));

        let sealed = manager(&store, Some(Keyring::new(Key::generate())));
        let mut s = sealed.open(Some(&id)).await.unwrap();
        assert_eq!(s.get::<String>("user").unwrap().as_deref(), Some("alice"));
        s.insert("n", &1u8).unwrap();
        s.commit().await.unwrap();
        let raw = store.load(&plain.key(&id)).await.unwrap().unwrap();
        assert!(Keyring::is_sealed(&raw.data), "a write with a keyring seals");

        // Without the keyring, the sealed record is Corrupt, saying why, and stays.
        match plain.open(Some(&id)).await {
            Err(Error::Corrupt { reason }) => assert!(reason.contains("no keyring"), "{reason}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(matches!(
            plain.open_read_only(&id).await,
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(store.load(&plain.key(&id)).await.unwrap().unwrap(), raw);
        let r = sealed.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(r.get::<u8>("n").unwrap(), Some(1));
    }

    #[tokio::test]
    async fn hashed_ids_and_cycle_id_seal_for_the_stored_id() {
        let store = Arc::new(MemoryStore::new());
        let keyring = Keyring::new(Key::generate());
        // Serialized commits through the lock engine, Optimistic straight to the store.
        for policy in [Policy::Serialized, Policy::Optimistic] {
            let m = Manager::builder(
                Arc::clone(&store) as Arc<dyn SessionStore>,
                Namespace::new("app").unwrap(),
            )
            .policy(policy)
            .hash_ids(true)
            .keyring(keyring.clone())
            .build()
            .unwrap();
            let mut s = m.open(None).await.unwrap();
            s.insert("user", "bob").unwrap();
            let id = s.id().clone();
            s.commit().await.unwrap();
            let stored = m.key(&id);
            assert_eq!(stored.id, id.hashed());
            let raw = store.load(&stored).await.unwrap().unwrap();
            let plain = m.open_for(&stored, &raw.data).unwrap();
            let data = SessionData::decode(&plain).unwrap();
            assert_eq!(data.get::<String>("user").unwrap().as_deref(), Some("bob"));
            // Sealed for the hashed id, not the cookie's id.
            let by_cookie = SessionKey::new(stored.namespace.clone(), id.clone());
            assert!(m.open_for(&by_cookie, &raw.data).is_err());

            let mut s = m.open(Some(&id)).await.unwrap();
            s.cycle_id();
            let new = s.id().clone();
            s.commit().await.unwrap();
            let r = m.open_read_only(&new).await.unwrap().unwrap();
            assert_eq!(
                r.get::<String>("user").unwrap().as_deref(),
                Some("bob"),
                "{policy:?}"
            );
            let mut s = m.open(Some(&new)).await.unwrap();
            s.insert("n", &2u8).unwrap();
            s.commit().await.unwrap();
            let r = m.open_read_only(&new).await.unwrap().unwrap();
            assert_eq!(r.get::<u8>("n").unwrap(), Some(2), "{policy:?}");
        }
    }

    #[tokio::test]
    async fn the_size_limit_counts_the_seal() {
        let store = Arc::new(MemoryStore::new());
        let mut d = SessionData::new();
        d.insert("v", &vec![7u8; 100]).unwrap();
        let plain_len = d.encode().len();
        let m = Manager::builder(
            Arc::clone(&store) as Arc<dyn SessionStore>,
            Namespace::new("app").unwrap(),
        )
        .keyring(Keyring::new(Key::generate()))
        .max_record_bytes(plain_len + Keyring::OVERHEAD - 1)
        .build()
        .unwrap();
        let mut s = m.open(None).await.unwrap();
        s.insert("v", &vec![7u8; 100]).unwrap();
        match s.commit().await {
            Err(Error::TooLarge { size, .. }) => assert_eq!(size, plain_len + Keyring::OVERHEAD),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert_eq!(store.count(m.namespace()).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_wrong_key_fails_every_policy_and_changes_nothing() {
        let store = Arc::new(MemoryStore::new());
        let right = manager(&store, Some(Keyring::new(Key::generate())));
        let mut s = right.open(None).await.unwrap();
        s.insert("k", "v").unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        let before = store.load(&right.key(&id)).await.unwrap().unwrap();
        for policy in [Policy::Serialized, Policy::Optimistic, Policy::Lossy] {
            let wrong = Manager::builder(
                Arc::clone(&store) as Arc<dyn SessionStore>,
                Namespace::new("app").unwrap(),
            )
            .policy(policy)
            .keyring(Keyring::new(Key::generate()))
            .build()
            .unwrap();
            match wrong.open(Some(&id)).await {
                Err(Error::Corrupt { reason }) => assert!(reason.contains("not in the keyring"), "{reason}"),
                other => panic!("{policy:?}: expected Corrupt, got {other:?}"),
            }
        }
        assert_eq!(store.load(&right.key(&id)).await.unwrap().unwrap(), before);
        // The lock was given back: the right manager opens it at once.
        let s = right.open(Some(&id)).await.unwrap();
        assert_eq!(s.get::<String>("k").unwrap().as_deref(), Some("v"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn handed_off_sealed_sessions_lose_no_update() {
        let store = Arc::new(MemoryStore::new());
        let m = manager(&store, Some(Keyring::new(Key::generate())));
        let mut s = m.open(None).await.unwrap();
        s.insert("n", &0u64).unwrap();
        let id = s.id().clone();
        s.commit().await.unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (m, id) = (m.clone(), id.clone());
                tokio::spawn(async move {
                    for _ in 0..20 {
                        let mut s = m.open(Some(&id)).await.unwrap();
                        let n: u64 = s.get("n").unwrap().unwrap();
                        s.insert("n", &(n + 1)).unwrap();
                        s.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let r = m.open_read_only(&id).await.unwrap().unwrap();
        assert_eq!(r.get::<u64>("n").unwrap(), Some(160));
        assert!(Keyring::is_sealed(
            &store.load(&m.key(&id)).await.unwrap().unwrap().data
        ));
    }
}
