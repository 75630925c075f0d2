//! Decoding script replies into records and outcomes.

use cloakroom_core::{Error, Record, Result, Timestamp};
use redis::Value;

use crate::error::unexpected_reply;

/// What the lock-and-load script answered.
pub(crate) enum LockReply {
    /// We hold the lock; the live record, if any.
    Acquired(Option<Record>),
    /// Someone else holds it; the lock key's PTTL in ms (-2: just expired).
    Held { pttl: i64 },
}

/// The status the guard's and the unlocked writers' scripts answer with.
pub(crate) enum Status {
    Ok(i64),
    Gone,
    Conflict(u64),
    Lost,
}

fn items(what: &str, value: &Value) -> Result<Vec<Value>> {
    match value {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(unexpected_reply(what, value)),
    }
}

fn int(what: &str, value: &Value, at: &Value) -> Result<i64> {
    redis::from_redis_value_ref(at).map_err(|_| unexpected_reply(what, value))
}

pub(crate) fn lock_reply(value: &Value) -> Result<LockReply> {
    let items = items("lock", value)?;
    match items.first().map(|v| int("lock", value, v)).transpose()? {
        Some(1) if items.len() == 1 => Ok(LockReply::Acquired(None)),
        Some(1) => Ok(LockReply::Acquired(Some(record(value, &items[1..])?))),
        Some(0) => {
            let pttl = items.get(1).map_or(Ok(-2), |v| int("lock", value, v))?;
            Ok(LockReply::Held { pttl })
        }
        _ => Err(unexpected_reply("lock", value)),
    }
}

/// A record from `data, version, created, accessed, expires`, as the lock
/// script and `HMGET` return them.
pub(crate) fn record(whole: &Value, fields: &[Value]) -> Result<Record> {
    let corrupt = |reason: &str| Error::Corrupt {
        reason: format!("redis session hash: {reason}"),
    };
    let [data, version, created, accessed, expires] = fields else {
        return Err(unexpected_reply("record fields", whole));
    };
    let data = match data {
        Value::BulkString(bytes) => bytes.clone(),
        _ => return Err(corrupt("missing data field")),
    };
    let number = |v: &Value, name: &str| -> Result<i64> {
        redis::from_redis_value_ref::<i64>(v).map_err(|_| corrupt(&format!("field {name} is not an integer")))
    };
    let version = u64::try_from(number(version, "version")?).map_err(|_| corrupt("negative version"))?;
    Ok(Record {
        data,
        version,
        created: Timestamp::from_millis(number(created, "created")?),
        accessed: Timestamp::from_millis(number(accessed, "accessed")?),
        expires: Timestamp::from_millis(number(expires, "expires")?),
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
