//! Decoding the lock pipeline's and the scripts' replies into records and
//! outcomes.

use cloakroom_core::{Error, Record, Result, Timestamp};
use redis::Value;

use crate::error::unexpected_reply;

/// The fields of a record hash, in the order [`live_record`] reads them.
pub(crate) const RECORD_FIELDS: [&str; 5] = ["data", "version", "created", "accessed", "expires"];

/// What a lock attempt found.
pub(crate) enum LockReply {
    /// We hold the lock; the live record, if any.
    Acquired(Option<Record>),
    /// Someone else holds it; the lock key's PTTL in ms (-2: just expired,
    /// or not asked for: try again at once).
    Held { pttl: i64 },
}

/// The status the guard's and the unlocked writers' scripts answer with.
pub(crate) enum Status {
    Ok(i64),
    Gone,
    Conflict(u64),
    Lost,
}

fn items<'v>(what: &str, value: &'v Value) -> Result<&'v [Value]> {
    match value {
        Value::Array(items) => Ok(items),
        _ => Err(unexpected_reply(what, value)),
    }
}

fn int(what: &str, value: &Value, at: &Value) -> Result<i64> {
    redis::from_redis_value_ref(at).map_err(|_| unexpected_reply(what, value))
}

/// Decode the replies of the lock pipeline: `SET lock NX PX`, `HMGET` of
/// the record and, on attempts after the first, `PTTL lock` (the reply to the
/// `SET` of the waiting flag before them is ignored). `now` decides whether
/// the record read with the lock is still live.
pub(crate) fn lock_reply(replies: Vec<Value>, now: Timestamp) -> Result<LockReply> {
    let mut replies = replies.into_iter();
    let (Some(set), Some(fields), pttl) = (replies.next(), replies.next(), replies.next()) else {
        return Err(Error::backend(
            "redis: the lock pipeline answered too few replies",
        ));
    };
    match set {
        Value::Nil => {
            let pttl = match pttl {
                Some(pttl) => {
                    redis::from_redis_value_ref(&pttl).map_err(|_| unexpected_reply("PTTL", &pttl))?
                }
                None => -2,
            };
            Ok(LockReply::Held { pttl })
        }
        Value::Okay => {
            let Value::Array(fields) = fields else {
                return Err(unexpected_reply("HMGET", &fields));
            };
            live_record(fields, now).map(LockReply::Acquired)
        }
        other => Err(unexpected_reply("SET NX", &other)),
    }
}

/// The record from `HMGET data version created accessed expires` (as `load`
/// and the lock pipeline read it), or `None` if there is no record or it is
/// past its `expires` at `now` and Redis has not reclaimed it yet.
pub(crate) fn live_record(fields: Vec<Value>, now: Timestamp) -> Result<Option<Record>> {
    if fields.get(1).is_none_or(|v| *v == Value::Nil) {
        return Ok(None);
    }
    let record = record(fields)?;
    Ok(record.is_live_at(now).then_some(record))
}

/// A record from `data, version, created, accessed, expires`.
fn record(fields: Vec<Value>) -> Result<Record> {
    let corrupt = |reason: &str| Error::Corrupt {
        reason: format!("redis session hash: {reason}"),
    };
    let Ok::<[Value; 5], _>([data, version, created, accessed, expires]) = fields.try_into() else {
        return Err(Error::backend("redis: a record reply without its five fields"));
    };
    let data = match data {
        Value::BulkString(bytes) => bytes,
        _ => return Err(corrupt("missing data field")),
    };
    let number = |v: &Value, name: &str| -> Result<i64> {
        redis::from_redis_value_ref::<i64>(v).map_err(|_| corrupt(&format!("field {name} is not an integer")))
    };
    let version = u64::try_from(number(&version, "version")?).map_err(|_| corrupt("negative version"))?;
    Ok(Record {
        data,
        version,
        created: Timestamp::from_millis(number(&created, "created")?),
        accessed: Timestamp::from_millis(number(&accessed, "accessed")?),
        expires: Timestamp::from_millis(number(&expires, "expires")?),
    })
}

pub(crate) fn status(what: &str, value: &Value) -> Result<Status> {
    let items = items(what, value)?;
    let tag: String = items
        .first()
        .and_then(|v| redis::from_redis_value_ref(v).ok())
        .ok_or_else(|| unexpected_reply(what, value))?;
    let number = || -> Result<i64> {
        items
            .get(1)
            .ok_or_else(|| unexpected_reply(what, value))
            .and_then(|v| int(what, value, v))
    };
    match tag.as_str() {
        "ok" => Ok(Status::Ok(if items.len() > 1 { number()? } else { 0 })),
        "gone" => Ok(Status::Gone),
        "lost" => Ok(Status::Lost),
        "conflict" => Ok(Status::Conflict(u64::try_from(number()?).unwrap_or(0))),
        _ => Err(unexpected_reply(what, value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn fields(expires: i64) -> Value {
        Value::Array(vec![
            bulk("data"),
            bulk("7"),
            bulk("1000"),
            bulk("2000"),
            bulk(&expires.to_string()),
        ])
    }

    #[test]
    fn a_won_set_yields_the_live_record_or_none() {
        let now = Timestamp::from_millis(5_000);
        match lock_reply(vec![Value::Okay, fields(9_000)], now) {
            Ok(LockReply::Acquired(Some(r))) => {
                assert_eq!((r.data.as_slice(), r.version), (b"data".as_slice(), 7));
                assert_eq!(r.expires, Timestamp::from_millis(9_000));
            }
            _ => panic!("a live record under a won lock"),
        }
        // Past `expires` by our clock, not yet reclaimed by Redis: no record.
        assert!(matches!(
            lock_reply(vec![Value::Okay, fields(5_000)], now),
            Ok(LockReply::Acquired(None))
        ));
        let missing = Value::Array(vec![Value::Nil; 5]);
        assert!(matches!(
            lock_reply(vec![Value::Okay, missing], now),
            Ok(LockReply::Acquired(None))
        ));
    }

    #[test]
    fn a_lost_set_yields_the_pttl_or_try_again() {
        let now = Timestamp::from_millis(0);
        assert!(matches!(
            lock_reply(vec![Value::Nil, fields(9_000), Value::Int(1234)], now),
            Ok(LockReply::Held { pttl: 1234 })
        ));
        assert!(matches!(
            lock_reply(vec![Value::Nil, fields(9_000)], now),
            Ok(LockReply::Held { pttl: -2 })
        ));
    }

    #[test]
    fn damaged_replies_are_errors_not_panics() {
        let now = Timestamp::from_millis(0);
        let corrupt = Value::Array(vec![bulk("d"), bulk("seven"), bulk("1"), bulk("1"), bulk("9")]);
        assert!(matches!(
            lock_reply(vec![Value::Okay, corrupt], now),
            Err(Error::Corrupt { .. })
        ));
        for replies in [
            vec![],
            vec![Value::Okay],
            vec![Value::Int(1), fields(9)],
            vec![Value::Okay, Value::Int(3)],
            vec![Value::Okay, Value::Array(vec![bulk("d"), bulk("1")])],
            vec![Value::Nil, fields(9), bulk("soon")],
        ] {
            assert!(lock_reply(replies.clone(), now).is_err(), "{replies:?}");
        }
    }
}
