//! The bytes of one record file: a fixed header, the principal, the data, a
//! checksum.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CLKR"
//!      4     2  format version (2), little endian
//!      6     2  principal length p (u16 LE, 0 = no principal)
//!      8     8  record version (u64 LE)
//!     16     8  created  (i64 LE, ms since the epoch)
//!     24     8  accessed (i64 LE)
//!     32     8  expires  (i64 LE)
//!     40     8  data length n (u64 LE)
//!     48     p  principal (UTF-8)
//!   48+p     n  data
//! 48+p+n     8  FNV-1a 64 of bytes 0..48+p+n (u64 LE)
//! ```
//!
//! Format 1, written before records had a principal, is the same with bytes
//! 6..8 reserved (written as zero, never read) and no principal. It is
//! still read, as a record without a principal, and still written for a
//! record without one: that file is byte for byte what format 2 would be
//! with `p = 0`, so a build from before principals keeps reading it.
//!
//! Files are only ever replaced whole by rename, so a reader never sees a
//! partial write; the lengths and checksum catch what rename cannot (a disk
//! that lost the tail after a crash with durability off, a stray edit), and
//! turn it into [`Error::Corrupt`] instead of a panic or garbage.

use cloakroom_core::{Error, Principal, Record, Result, Timestamp, PRINCIPAL_MAX_LEN};

const MAGIC: &[u8; 4] = b"CLKR";
/// The format written.
const FORMAT_VERSION: u16 = 2;
/// The format before principals, still read.
const FORMAT_V1: u16 = 1;
/// Size of the fixed header; listing and counting read only this much.
pub(crate) const HEADER_LEN: usize = 48;
/// The most a reader needs for the header and the principal, without data.
pub(crate) const META_MAX_LEN: usize = HEADER_LEN + PRINCIPAL_MAX_LEN;
const CHECKSUM_LEN: usize = 8;

// The principal's length is written in two bytes.
const _: () = assert!(PRINCIPAL_MAX_LEN <= u16::MAX as usize);

/// The metadata at the start of a record file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u64,
    pub created: Timestamp,
    pub accessed: Timestamp,
    pub expires: Timestamp,
    /// Bytes of principal after the header (0 in format 1).
    pub principal_len: usize,
    pub data_len: u64,
}

impl Header {
    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        self.expires > now
    }
}

/// A record without its data: what the principal index and deletes need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub header: Header,
    pub principal: Option<Principal>,
}

/// The file contents for `record`.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let principal = record.principal.as_ref().map_or("", Principal::as_str).as_bytes();
    // `Principal` holds at most PRINCIPAL_MAX_LEN bytes, asserted above to fit.
    let principal_len = principal.len() as u16;
    let mut out = Vec::with_capacity(HEADER_LEN + principal.len() + record.data.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    // A record without a principal is exactly a format-1 file (the length
    // field is format 1's reserved zero), so it is labelled as one: a build
    // from before principals still reads it after a rollback.
    let format = if principal.is_empty() {
        FORMAT_V1
    } else {
        FORMAT_VERSION
    };
    out.extend_from_slice(&format.to_le_bytes());
    out.extend_from_slice(&principal_len.to_le_bytes());
    out.extend_from_slice(&record.version.to_le_bytes());
    out.extend_from_slice(&record.created.as_millis().to_le_bytes());
    out.extend_from_slice(&record.accessed.as_millis().to_le_bytes());
    out.extend_from_slice(&record.expires.as_millis().to_le_bytes());
    out.extend_from_slice(&(record.data.len() as u64).to_le_bytes());
    out.extend_from_slice(principal);
    out.extend_from_slice(&record.data);
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Parse the fixed header (the first [`HEADER_LEN`] bytes of a file).
pub(crate) fn decode_header(bytes: &[u8]) -> Result<Header> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(corrupt(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    };
    if &head[0..4] != MAGIC {
        return Err(corrupt("not a cloakroom record file (bad magic)".into()));
    }
    let principal_len = match u16::from_le_bytes([head[4], head[5]]) {
        FORMAT_V1 => 0,
        FORMAT_VERSION => usize::from(u16::from_le_bytes([head[6], head[7]])),
        format => return Err(corrupt(format!("unknown record format version {format}"))),
    };
    if principal_len > PRINCIPAL_MAX_LEN {
        return Err(corrupt(format!(
            "a {principal_len}-byte principal, longer than any principal"
        )));
    }
    Ok(Header {
        version: u64_at(head, 8),
        created: Timestamp::from_millis(u64_at(head, 16) as i64),
        accessed: Timestamp::from_millis(u64_at(head, 24) as i64),
        expires: Timestamp::from_millis(u64_at(head, 32) as i64),
        principal_len,
        data_len: u64_at(head, 40),
    })
}

/// Parse the header and the principal: `bytes` is the start of a file, at
/// least up to the end of its principal ([`META_MAX_LEN`] bytes always do).
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta> {
    let header = decode_header(bytes)?;
    let Some(text) = bytes.get(HEADER_LEN..HEADER_LEN + header.principal_len) else {
        return Err(corrupt(format!(
            "{} bytes, shorter than the header and its {}-byte principal",
            bytes.len(),
            header.principal_len
        )));
    };
    Ok(Meta {
        header,
        principal: decode_principal(text)?,
    })
}

fn decode_principal(text: &[u8]) -> Result<Option<Principal>> {
    if text.is_empty() {
        return Ok(None);
    }
    std::str::from_utf8(text)
        .ok()
        .and_then(|text| Principal::new(text).ok())
        .map(Some)
        .ok_or_else(|| corrupt("the principal is not a valid principal".into()))
}

/// Parse a whole record file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    let header = decode_header(bytes)?;
    let data_start = HEADER_LEN + header.principal_len;
    let expected_len = usize::try_from(header.data_len)
        .ok()
        .and_then(|n| n.checked_add(data_start + CHECKSUM_LEN));
    if expected_len != Some(bytes.len()) {
        return Err(corrupt(format!(
            "file is {} bytes but its header announces {} bytes of principal and {} of data (truncated or torn)",
            bytes.len(),
            header.principal_len,
            header.data_len
        )));
    }
    let body_end = bytes.len() - CHECKSUM_LEN;
    if fnv1a(&bytes[..body_end]) != u64_at(bytes, body_end) {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Record {
        data: bytes[data_start..body_end].to_vec(),
        version: header.version,
        created: header.created,
        accessed: header.accessed,
        expires: header.expires,
        principal: decode_principal(&bytes[HEADER_LEN..data_start])?,
    })
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

fn corrupt(reason: String) -> Error {
    Error::Corrupt { reason }
}

/// FNV-1a, 64 bit: not cryptographic, only a guard against torn or damaged
/// files, and small enough to need no dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            data: b"hello".to_vec(),
            version: 7,
            created: Timestamp::from_millis(1),
            accessed: Timestamp::from_millis(2),
            expires: Timestamp::from_millis(-3),
            principal: Some(Principal::new("zoë ' OR 1=1").unwrap()),
        }
    }

    fn anonymous() -> Record {
        Record {
            principal: None,
            ..record()
        }
    }

    /// A record file as format 1 wrote it (no principal, reserved bytes).
    fn encode_v1(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&record.version.to_le_bytes());
        out.extend_from_slice(&record.created.as_millis().to_le_bytes());
        out.extend_from_slice(&record.accessed.as_millis().to_le_bytes());
        out.extend_from_slice(&record.expires.as_millis().to_le_bytes());
        out.extend_from_slice(&(record.data.len() as u64).to_le_bytes());
        out.extend_from_slice(&record.data);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Replace bytes `at..` of a file and fix its checksum, so that only
    /// the field under test is wrong.
    fn patched(mut bytes: Vec<u8>, at: usize, with: &[u8]) -> Vec<u8> {
        bytes[at..at + with.len()].copy_from_slice(with);
        let end = bytes.len() - CHECKSUM_LEN;
        let sum = fnv1a(&bytes[..end]);
        bytes[end..].copy_from_slice(&sum.to_le_bytes());
        bytes
    }

    #[test]
    fn round_trips_with_and_without_a_principal() {
        for (r, format) in [(record(), FORMAT_VERSION), (anonymous(), FORMAT_V1)] {
            let bytes = encode(&r);
            assert_eq!(&bytes[4..6], &format.to_le_bytes());
            assert_eq!(decode(&bytes).unwrap(), r);
            let meta = decode_meta(&bytes).unwrap();
            assert_eq!(meta.principal, r.principal);
            assert_eq!((meta.header.version, meta.header.expires), (7, r.expires));
        }
    }

    #[test]
    fn a_format_1_file_still_reads_without_a_principal() {
        let old = encode_v1(&anonymous());
        assert_eq!(decode(&old).unwrap(), anonymous());
        assert_eq!(decode_meta(&old).unwrap().principal, None);
        assert_eq!(decode_header(&old).unwrap().principal_len, 0);
        // Its reserved bytes were never read, whatever they hold.
        assert_eq!(decode(&patched(old, 6, &[0xff, 0xff])).unwrap(), anonymous());
    }

    #[test]
    fn every_truncation_is_corrupt() {
        for bytes in [encode(&record()), encode(&anonymous()), encode_v1(&anonymous())] {
            for len in 0..bytes.len() {
                assert!(
                    matches!(decode(&bytes[..len]), Err(Error::Corrupt { .. })),
                    "len {len}"
                );
            }
        }
        let bytes = encode(&record());
        let meta_end = HEADER_LEN + record().principal.unwrap().as_str().len();
        for len in 0..meta_end {
            assert!(
                matches!(decode_meta(&bytes[..len]), Err(Error::Corrupt { .. })),
                "len {len}"
            );
        }
    }

    #[test]
    fn a_flipped_bit_is_corrupt() {
        let mut bytes = encode(&record());
        bytes[HEADER_LEN + 1] ^= 0x10;
        assert!(matches!(decode(&bytes), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_huge_announced_length_is_corrupt_not_a_panic() {
        let mut bytes = encode(&record());
        bytes[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(Error::Corrupt { .. })));
        for principal_len in [u16::MAX, 257, 300] {
            let bytes = patched(encode(&record()), 6, &principal_len.to_le_bytes());
            assert!(matches!(decode(&bytes), Err(Error::Corrupt { .. })));
            assert!(matches!(decode_meta(&bytes), Err(Error::Corrupt { .. })));
        }
    }

    #[test]
    fn an_invalid_principal_is_corrupt() {
        let len = record().principal.unwrap().as_str().len();
        for bad in [&[0xffu8, 0xfe][..], b"\n", b"a\x07"] {
            let mut bytes = encode(&record());
            // Same length, so only the principal's content is wrong.
            let mut text = vec![b'a'; len];
            text[..bad.len()].copy_from_slice(bad);
            bytes = patched(bytes, HEADER_LEN, &text);
            assert!(matches!(decode(&bytes), Err(Error::Corrupt { .. })), "{bad:?}");
            assert!(
                matches!(decode_meta(&bytes), Err(Error::Corrupt { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_unknown_format_is_corrupt() {
        for format in [0u16, 3, u16::MAX] {
            let bytes = patched(encode(&anonymous()), 4, &format.to_le_bytes());
            assert!(matches!(decode(&bytes), Err(Error::Corrupt { .. })), "{format}");
        }
    }
}
