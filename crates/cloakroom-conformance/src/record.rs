//! Building record writes for the cases.

use std::time::Duration;

use cloakroom_core::{Principal, RecordWrite, SessionData, Timestamp};

/// A write of `data` (stored as the session's encoded bytes) expiring in an hour.
pub fn write_with(data: &[u8]) -> RecordWrite {
    write_expiring_in(data, Duration::from_secs(3600))
}

/// A write of `data` expiring `ttl` from now.
pub fn write_expiring_in(data: &[u8], ttl: Duration) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now,
        accessed: now,
        expires: now.saturating_add(ttl),
        principal: None,
    }
}

/// A write of `data` for `principal`, expiring `ttl` from now.
pub fn write_for(data: &[u8], principal: &Principal, ttl: Duration) -> RecordWrite {
    RecordWrite {
        principal: Some(principal.clone()),
        ..write_expiring_in(data, ttl)
    }
}

/// A principal for a case.
pub fn principal(name: &str) -> Principal {
    match Principal::new(name) {
        Ok(p) => p,
        Err(e) => panic!("principal {name:?} failed validation: {e}"),
    }
}

/// A write that expired a minute ago.
pub fn expired_write(data: &[u8]) -> RecordWrite {
    let now = Timestamp::now();
    RecordWrite {
        data: data.to_vec(),
        created: now.saturating_sub(Duration::from_secs(7200)),
        accessed: now.saturating_sub(Duration::from_secs(3600)),
        expires: now.saturating_sub(Duration::from_secs(60)),
        principal: None,
    }
}

/// Encoded session data holding `hits`.
pub fn session_bytes(hits: u64) -> Vec<u8> {
    let mut d = SessionData::new();
    if let Err(e) = d.insert("hits", &hits) {
        panic!("encoding a u64 failed: {e}");
    }
    d.encode()
}
