//! Rendering of times and MessagePack values for people and for JSON.

use std::time::{Duration, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use cloakroom::Timestamp;
use serde_json::{json, Map, Value};

/// RFC 3339 with milliseconds, UTC (`2025-01-31T12:00:00.000Z`).
pub(crate) fn rfc3339(t: Timestamp) -> String {
    let ms = u64::try_from(t.as_millis()).unwrap_or(0);
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// One encoded session value as JSON. MessagePack types JSON lacks are
/// tagged: `{"$binary": base64}`, `{"$ext": type, "$data": base64}`; a map key
/// that is not a string is written as its JSON text.
pub(crate) fn msgpack_to_json(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = bytes;
    let value = rmpv::decode::read_value(&mut reader).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err(format!("{} trailing bytes after the value", reader.len()));
    }
    Ok(to_json(&value))
}

fn to_json(v: &rmpv::Value) -> Value {
    use rmpv::Value as M;
    match v {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(*b),
        M::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => json!(u),
            (None, Some(s)) => json!(s),
            (None, None) => Value::Null,
        },
        M::F32(f) => float(f64::from(*f)),
        M::F64(f) => float(*f),
        M::String(s) => match s.as_str() {
            Some(s) => Value::String(s.to_owned()),
            None => json!({ "$invalid_utf8": STANDARD.encode(s.as_bytes()) }),
        },
        M::Binary(b) => json!({ "$binary": STANDARD.encode(b) }),
        M::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        M::Map(pairs) => {
            let mut out = Map::new();
            for (k, v) in pairs {
                let key = match k {
                    M::String(s) if s.as_str().is_some() => s.as_str().unwrap_or_default().to_owned(),
                    other => to_json(other).to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        M::Ext(ty, data) => json!({ "$ext": ty, "$data": STANDARD.encode(data) }),
    }
}

fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_become_plain_json() {
        #[derive(serde::Serialize)]
        struct Item {
            sku: String,
            qty: u32,
        }
        let bytes = rmp_named(&vec![Item {
            sku: "a".into(),
            qty: 2,
        }]);
        assert_eq!(msgpack_to_json(&bytes).unwrap(), json!([{"sku": "a", "qty": 2}]));
        assert_eq!(msgpack_to_json(&rmp_named(&-3i64)).unwrap(), json!(-3));
        assert_eq!(msgpack_to_json(&rmp_named(&u64::MAX)).unwrap(), json!(u64::MAX));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(msgpack_to_json(&[]).is_err());
        assert!(msgpack_to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(msgpack_to_json(&[0x01, 0x02]).is_err());
    }

    fn rmp_named<T: serde::Serialize>(v: &T) -> Vec<u8> {
        let mut d = cloakroom::SessionData::new();
        d.insert("k", v).unwrap();
        let bytes = d.iter_raw().next().unwrap().1.to_vec();
        bytes
    }
}
