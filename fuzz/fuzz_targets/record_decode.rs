//! Decoding stored bytes never panics: a record decodes, or is `Corrupt`.
//! A record that decodes re-encodes to bytes that decode to the same data,
//! and reading any key as a few types gives a value or a `Decode` error.
#![no_main]

use cloakroom_core::{Error, SessionData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match SessionData::decode(data) {
        Ok(d) => {
            let again = SessionData::decode(&d.encode()).expect("re-encoded data must decode");
            assert_eq!(again, d);
            for key in d.keys() {
                for r in [d.get::<u64>(key).map(drop), d.get::<String>(key).map(drop), d.get::<Vec<u8>>(key).map(drop)] {
                    assert!(matches!(r, Ok(()) | Err(Error::Decode { .. })));
                }
            }
        }
        Err(Error::Corrupt { .. }) => {}
        Err(e) => panic!("decode gave a non-Corrupt error: {e:?}"),
    }
});
