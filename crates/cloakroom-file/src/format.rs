//! The bytes of one record file: a fixed header, the data, a checksum.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "CLKR"
//!      4     2  format version (1), little endian
//!      6     2  reserved, zero
//!      8     8  record version (u64 LE)
//!     16     8  created  (i64 LE, ms since the epoch)
//!     24     8  accessed (i64 LE)
//!     32     8  expires  (i64 LE)
//!     40     8  data length (u64 LE)
//!     48     n  data
//!   48+n     8  FNV-1a 64 of bytes 0..48+n (u64 LE)
//! ```
//!
//! Files are only ever replaced whole by rename, so a reader never sees a
//! partial write; the length and checksum catch what rename cannot (a disk
//! that lost the tail after a crash with durability off, a stray edit), and
//! turn it into [`Error::Corrupt`] instead of a panic or garbage.

use cloakroom_core::{Error, Record, Result, Timestamp};

const MAGIC: &[u8; 4] = b"CLKR";
const FORMAT_VERSION: u16 = 1;
/// Size of the fixed header; listing and counting read only this much.
pub(crate) const HEADER_LEN: usize = 48;
const CHECKSUM_LEN: usize = 8;

/// The metadata at the start of a record file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub version: u64,
    pub created: Timestamp,
    pub accessed: Timestamp,
    pub expires: Timestamp,
    pub data_len: u64,
}

impl Header {
    pub(crate) fn is_live_at(&self, now: Timestamp) -> bool {
        self.expires > now
    }
}

/// The file contents for `record`.
pub(crate) fn encode(record: &Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + record.data.len() + CHECKSUM_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
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
    let format = u16::from_le_bytes([head[4], head[5]]);
    if format != FORMAT_VERSION {
        return Err(corrupt(format!("unknown record format version {format}")));
    }
    Ok(Header {
        version: u64_at(head, 8),
        created: Timestamp::from_millis(u64_at(head, 16) as i64),
        accessed: Timestamp::from_millis(u64_at(head, 24) as i64),
        expires: Timestamp::from_millis(u64_at(head, 32) as i64),
        data_len: u64_at(head, 40),
    })
}

/// Parse a whole record file.
pub(crate) fn decode(bytes: &[u8]) -> Result<Record> {
    let header = decode_header(bytes)?;
    let expected_len = usize::try_from(header.data_len)
        .ok()
        .and_then(|n| n.checked_add(HEADER_LEN + CHECKSUM_LEN));
    if expected_len != Some(bytes.len()) {
        return Err(corrupt(format!(
            "file is {} bytes but its header announces {} bytes of data (truncated or torn)",
            bytes.len(),
            header.data_len
        )));
    }
    let body_end = bytes.len() - CHECKSUM_LEN;
    if fnv1a(&bytes[..body_end]) != u64_at(bytes, body_end) {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(Record {
        data: bytes[HEADER_LEN..body_end].to_vec(),
        version: header.version,
        created: header.created,
        accessed: header.accessed,
        expires: header.expires,
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
        }
    }

    #[test]
    fn round_trips() {
        assert_eq!(decode(&encode(&record())).unwrap(), record());
    }

    #[test]
    fn every_truncation_is_corrupt() {
        let bytes = encode(&record());
        for len in 0..bytes.len() {
            assert!(
                matches!(decode(&bytes[..len]), Err(Error::Corrupt { .. })),
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
    }
}
