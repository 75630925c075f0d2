//! Decoding the lock pipeline's and the scripts' replies into records and
//! outcomes.

use cloakroom_core::{Error, Principal, Record, Result, Timestamp};
use redis::Value;

use crate::error::unexpected_reply;

/// The fields of a record hash, in the order [`live_record`] reads them.
/// `principal` and `indexed_until` are absent for a session without a
/// principal.
pub(crate) const RECORD_FIELDS: [&str; 7] = [
    "data",
    "version",
    "created",
    "accessed",
    "expires",
    "principal",
    "indexed_until",
];

/// The fields `list_by_principal` reads of each listed record (no data).
pub(crate) const SUMMARY_FIELDS: [&str; 5] = ["version", "created", "accessed", "expires", "principal"];

/// A record as read from its hash, with what the store keeps beside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub record: Record,
    /// Until when (ms since the epoch) the principal's set is known to be
    /// kept, if the record has a principal (see `principals`).
    pub indexed_until: Option<i64>,
}

/// What a lock attempt found.
pub(crate) enum LockReply {
    /// We hold the lock; the live record, if any.
    Acquired(Option<Stored>),
    /// Someone else holds it; the lock key's PTTL in ms (-2: just expired,
    /// or not asked for: try again at once).
    Held { pttl: i64 },
}

/// A successful script's answer: a number (the new version, or whether a
/// live record was deleted), the principal the record had before the write
/// (live or not), and, for a rotation, the principal of the expired record
/// it replaced under the new id.
#[derive(Debug, Default)]
pub(crate) struct Done {
    pub n: i64,
    pub prev: Option<String>,
    pub target_prev: Option<String>,
}

/// The status the guard's and the unlocked writers' scripts answer with.
#[derive(Debug)]
pub(crate) enum Status {
    Ok(Done),
    Gone,
    Conflict(u64),
    Lost,
    /// Nothing written: the principal set must hold the id first (see
    /// `principals`). A touch names the stored principal; the other writes
    /// mean the principal they write.
    Index(Option<String>),
    /// Nothing written: a rotation's target id is live at this version.
    Taken(u64),
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

/// The record from `HMGET` of [`RECORD_FIELDS`] (as `load` and the lock
/// pipeline read it), or `None` if there is no record or it is past its
/// `expires` at `now` (kept for sweepers, or not yet reclaimed by Redis).
pub(crate) fn live_record(fields: Vec<Value>, now: Timestamp) -> Result<Option<Stored>> {
    if fields.get(1).is_none_or(|v| *v == Value::Nil) {
        return Ok(None);
    }
    let stored = stored(fields)?;
    Ok(stored.record.is_live_at(now).then_some(stored))
}

fn corrupt(reason: &str) -> Error {
    Error::Corrupt {
        reason: format!("redis session hash: {reason}"),
    }
}

fn number(v: &Value, name: &str) -> Result<i64> {
    redis::from_redis_value_ref::<i64>(v).map_err(|_| corrupt(&format!("field {name} is not an integer")))
}

/// A principal field: absent is `None`; anything that is not a valid
/// principal is corrupt (every write stores a validated one).
fn principal_field(value: &Value) -> Result<Option<Principal>> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| Principal::new(text).ok())
            .map(Some)
            .ok_or_else(|| corrupt("field principal is not a valid principal")),
        _ => Err(corrupt("field principal is not a string")),
    }
}

/// A record and its `indexed_until` from the values of [`RECORD_FIELDS`];
/// the last one may be left out (the sweep script does not read it).
fn stored(fields: Vec<Value>) -> Result<Stored> {
    let mut fields = fields.into_iter();
    let (Some(data), Some(version), Some(created), Some(accessed), Some(expires), Some(principal)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(Error::backend("redis: a record reply without its fields"));
    };
    let indexed_until = match fields.next() {
        None | Some(Value::Nil) => None,
        Some(until) => Some(number(&until, "indexed_until")?),
    };
    let data = match data {
        Value::BulkString(bytes) => bytes,
        _ => return Err(corrupt("missing data field")),
    };
    let version = u64::try_from(number(&version, "version")?).map_err(|_| corrupt("negative version"))?;
    Ok(Stored {
        record: Record {
            data,
            version,
            created: Timestamp::from_millis(number(&created, "created")?),
            accessed: Timestamp::from_millis(number(&accessed, "accessed")?),
            expires: Timestamp::from_millis(number(&expires, "expires")?),
            principal: principal_field(&principal)?,
        },
        indexed_until,
    })
}

/// The record the sweep script deleted (`data` … `principal`), or `None`
/// if it deleted nothing.
pub(crate) fn swept(value: Value) -> Result<Option<Record>> {
    match value {
        Value::Nil => Ok(None),
        Value::Array(fields) => stored(fields).map(|s| Some(s.record)),
        other => Err(unexpected_reply("the sweep script", &other)),
    }
}

/// What `list_by_principal` read of one record ([`SUMMARY_FIELDS`]).
pub(crate) struct Summary {
    pub created: Timestamp,
    pub accessed: Timestamp,
    pub expires: Timestamp,
    pub principal: Option<Principal>,
}

/// The summary of a record from `HMGET` of [`SUMMARY_FIELDS`], `None` if
/// there is no record.
pub(crate) fn summary(value: &Value) -> Result<Option<Summary>> {
    let fields = items("HMGET", value)?;
    let [version, created, accessed, expires, principal] = fields else {
        return Err(unexpected_reply("HMGET", value));
    };
    if *version == Value::Nil || *expires == Value::Nil {
        return Ok(None);
    }
    Ok(Some(Summary {
        created: Timestamp::from_millis(number(created, "created")?),
        accessed: Timestamp::from_millis(number(accessed, "accessed")?),
        expires: Timestamp::from_millis(number(expires, "expires")?),
        principal: principal_field(principal)?,
    }))
}

fn text(value: Option<&Value>) -> Option<String> {
    value
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .filter(|t| !t.is_empty())
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
        "ok" => Ok(Status::Ok(Done {
            n: if items.len() > 1 { number()? } else { 0 },
            prev: text(items.get(2)),
            target_prev: text(items.get(3)),
        })),
        "gone" => Ok(Status::Gone),
        "lost" => Ok(Status::Lost),
        "conflict" => Ok(Status::Conflict(u64::try_from(number()?).unwrap_or(0))),
        "taken" => Ok(Status::Taken(u64::try_from(number()?).unwrap_or(0))),
        "index" => Ok(Status::Index(text(items.get(1)))),
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
            bulk("alice"),
            bulk("99000"),
        ])
    }

    #[test]
    fn a_won_set_yields_the_live_record_or_none() {
        let now = Timestamp::from_millis(5_000);
        match lock_reply(vec![Value::Okay, fields(9_000)], now) {
            Ok(LockReply::Acquired(Some(Stored {
                record: r,
                indexed_until,
            }))) => {
                assert_eq!((r.data.as_slice(), r.version), (b"data".as_slice(), 7));
                assert_eq!(r.expires, Timestamp::from_millis(9_000));
                assert_eq!(r.principal.as_ref().map(Principal::as_str), Some("alice"));
                assert_eq!(indexed_until, Some(99_000));
            }
            _ => panic!("a live record under a won lock"),
        }
        // Past `expires` by our clock, not yet reclaimed by Redis: no record.
        assert!(matches!(
            lock_reply(vec![Value::Okay, fields(5_000)], now),
            Ok(LockReply::Acquired(None))
        ));
        let missing = Value::Array(vec![Value::Nil; 7]);
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
        let corrupt = Value::Array(vec![
            bulk("d"),
            bulk("seven"),
            bulk("1"),
            bulk("1"),
            bulk("9"),
            Value::Nil,
            Value::Nil,
        ]);
        assert!(matches!(
            lock_reply(vec![Value::Okay, corrupt], now),
            Err(Error::Corrupt { .. })
        ));
        let bad_principal = Value::Array(vec![
            bulk("d"),
            bulk("1"),
            bulk("1"),
            bulk("1"),
            bulk("9"),
            bulk("tab\there"),
            Value::Nil,
        ]);
        assert!(matches!(
            lock_reply(vec![Value::Okay, bad_principal], now),
            Err(Error::Corrupt { .. })
        ));
        for replies in [
            vec![],
            vec![Value::Okay],
            vec![Value::Int(1), fields(9)],
            vec![Value::Okay, Value::Int(3)],
            vec![Value::Okay, Value::Array(vec![bulk("d"), bulk("1")])],
            vec![
                Value::Okay,
                Value::Array(vec![bulk("d"), bulk("1"), bulk("1"), bulk("1"), bulk("9")]),
            ],
            vec![Value::Nil, fields(9), bulk("soon")],
        ] {
            assert!(lock_reply(replies.clone(), now).is_err(), "{replies:?}");
        }
    }

    #[test]
    fn a_record_without_a_principal_has_none() {
        let now = Timestamp::from_millis(0);
        let anonymous = Value::Array(vec![
            bulk("d"),
            bulk("1"),
            bulk("1"),
            bulk("1"),
            bulk("9"),
            Value::Nil,
            Value::Nil,
        ]);
        match lock_reply(vec![Value::Okay, anonymous], now) {
            Ok(LockReply::Acquired(Some(stored))) => {
                assert_eq!(stored.record.principal, None);
                assert_eq!(stored.indexed_until, None);
            }
            _ => panic!("a live record without principal"),
        }
    }

    #[test]
    fn statuses_carry_the_previous_principals() {
        let reply = Value::Array(vec![bulk("ok"), Value::Int(3), bulk("alice"), bulk("")]);
        match status("t", &reply) {
            Ok(Status::Ok(done)) => {
                assert_eq!(
                    (done.n, done.prev.as_deref(), done.target_prev),
                    (3, Some("alice"), None)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            status("t", &Value::Array(vec![bulk("index"), bulk("bob")])),
            Ok(Status::Index(Some(p))) if p == "bob"
        ));
        assert!(matches!(
            status("t", &Value::Array(vec![bulk("index")])),
            Ok(Status::Index(None))
        ));
        assert!(matches!(
            status("t", &Value::Array(vec![bulk("taken"), Value::Int(4)])),
            Ok(Status::Taken(4))
        ));
        assert!(status("t", &Value::Array(vec![bulk("what")])).is_err());
        assert!(matches!(swept(Value::Nil), Ok(None)));
        let record = swept(Value::Array(vec![
            bulk("d"),
            bulk("2"),
            bulk("1"),
            bulk("1"),
            bulk("9"),
            bulk("carol"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(record.principal.as_ref().map(Principal::as_str), Some("carol"));
    }
}
