//! Session id and namespace parsing never panics, and whatever it accepts is
//! canonical: it prints back to the same text and hashes to another valid id.
#![no_main]

use cloakroom_core::{Namespace, SessionId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(id) = SessionId::parse(text) {
        assert_eq!(id.as_str(), text);
        assert!(SessionId::parse(id.hashed().as_str()).is_ok());
    }
    if let Ok(ns) = Namespace::new(text) {
        assert_eq!(ns.as_str(), text);
        assert!(!ns.as_str().contains(['/', '.', ':', '{', '}', '\'', '\0']));
    }
});
