//! The principal index: one Redis set per `(namespace, principal)`,
//! `<prefix>principal:{<ns>:p:<digest>}` (see `keys`), holding the stored ids
//! of that principal's sessions.
//!
//! The set has a hash tag of its own, so on a Cluster it lives in another
//! slot than its sessions, and no session script can update it in the same
//! step as the record. It is kept instead as a **superset** of the live
//! sessions with that principal, which is all `list_by_principal` needs: it
//! reads the set, loads each member's record, keeps the live ones whose
//! principal matches, and drops the others from the set.
//!
//! # Protocol
//!
//! - **Add before.** A write that gives a record a principal adds the id to
//!   the principal's set (`index_add.lua`: `SADD`, and a `PEXPIREAT` that
//!   never shortens the set) *before* the script that writes the record.
//!   The record remembers in its `indexed_until` field until when its set is
//!   known to be kept. A session script refuses (`{'index'}`, nothing
//!   written) a write whose record is not already live with that principal
//!   and covered by `indexed_until`, unless the client says it just added
//!   the id; so the common write, a save or touch of a logged-in session that
//!   keeps its principal, costs no extra round trip, and the set is touched
//!   only when a session changes principal or outlives what its set was
//!   kept for.
//! - **Remove after.** A delete, a sweep, a rotation away, or a save with
//!   another principal (or none) removes the id from the old principal's
//!   set *after* the record is written (best effort: a failure leaves a
//!   stale member, which the next listing drops).
//! - **Re-check removals, re-add changes.** Removal races with writers: a
//!   remover that decided on an older state of the record (a listing that
//!   found it missing, a writer that moved it away) may `SREM` after another
//!   writer added the id back. So every removal reads the record again after
//!   its `SREM` and re-adds the id if the record is live with that principal
//!   by then; and a write that *changed* the principal adds the id once more
//!   after its write. Whichever of the two comes last leaves the id in the
//!   set (if the write landed before the re-read, the re-read sees it; if
//!   after, the second add follows the `SREM`). A listing that runs in
//!   the instant between such an `SREM` and its re-add can miss a session
//!   that just changed principal; it never lists a wrong one.
//! - **Expiry.** A set is kept (`PEXPIREAT`) at least until the latest
//!   `indexed_until` of its records, which is at least their key expiry
//!   (`expires + expired_grace`) plus some slack, so a set is never dropped
//!   before a record it indexes, and the set of a user who never comes back
//!   vanishes by itself.

use std::time::Duration;

use cloakroom_core::{Namespace, Principal, Result, SessionId, SessionKey, SessionSummary, Timestamp};
use redis::Value;

use crate::error::map_redis;
use crate::reply::{self, SUMMARY_FIELDS};
use crate::scripts::SCRIPTS;
use crate::shared::{call, concurrently, Call};
use crate::store::RedisStore;

/// `principal`, `expires` and `indexed_until` of a record, as a removal
/// re-reads them.
type IndexFields = (Option<String>, Option<i64>, Option<i64>);

/// Most ids one `SADD` or `SREM` names.
const IDS_PER_CALL: usize = 500;

/// Longest slack a set is kept past its records' key expiry: a set whose
/// sessions keep sliding their expiry forward is extended at most every
/// `min(lifetime, this)`, not on every request.
const MAX_SLACK: Duration = Duration::from_secs(24 * 3600);

impl RedisStore {
    /// The record key of `id` in `namespace`.
    pub(crate) fn record_key(&self, namespace: &Namespace, id: &SessionId) -> String {
        self.keys()
            .session(&SessionKey::new(namespace.clone(), id.clone()))
            .record
    }

    /// When the key of a record expiring at `expires` expires: `expires`
    /// plus the grace during which sweepers can still find it.
    pub(crate) fn key_expiry(&self, expires: Timestamp) -> Timestamp {
        expires.saturating_add(self.options().expired_grace)
    }

    /// Until when to keep the principal set of a record expiring at
    /// `expires`: past its key expiry by as much as it has left to live (at
    /// most a day), so that a session renewed on each request extends its
    /// set only every so often.
    pub(crate) fn index_until(&self, expires: Timestamp) -> i64 {
        let left = expires.as_millis().saturating_sub(Timestamp::now().as_millis());
        let slack = u64::try_from(left).map_or(Duration::ZERO, Duration::from_millis);
        self.key_expiry(expires)
            .saturating_add(slack.min(MAX_SLACK))
            .as_millis()
    }

    /// Add `ids` to the set of `principal` and keep it until at least `until`.
    pub(crate) async fn index_add(
        &self,
        namespace: &Namespace,
        principal: &Principal,
        ids: &[SessionId],
        until: i64,
    ) -> Result<()> {
        let set = self.keys().principal_set(namespace, principal);
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut invocation = SCRIPTS.index_add.key(&set);
            invocation.arg(until);
            for id in chunk {
                invocation.arg(id.as_str());
            }
            invocation
                .invoke_async::<Value>(&mut conn)
                .await
                .map_err(map_redis)?;
        }
        Ok(())
    }

    /// Add the id of `key` to the set of `principal` before a write that
    /// gives its record that principal and expires at `expires`; returns the
    /// `indexed_until` the write stores.
    pub(crate) async fn index_before(
        &self,
        key: &SessionKey,
        principal: &Principal,
        expires: Timestamp,
    ) -> Result<i64> {
        let until = self.index_until(expires);
        self.index_add(&key.namespace, principal, std::slice::from_ref(&key.id), until)
            .await?;
        Ok(until)
    }

    /// The index steps after a write of `key` that gave its record the
    /// principal `new` (kept until `until`, when the write added it), where
    /// the script found `prev` (live, if `prev_live`): drop the id from the
    /// old principal's set, and add it once more to the new one if the
    /// principal changed (see the protocol above). Best effort: logged.
    pub(crate) async fn after_write(
        &self,
        key: &SessionKey,
        prev: Option<&str>,
        prev_live: bool,
        new: Option<&Principal>,
        until: Option<i64>,
    ) {
        // A stored principal that does not parse was not written by this
        // crate: there is no set of ours to clean.
        let prev = prev.and_then(|text| Principal::new(text).ok());
        if let Some(old) = prev.as_ref().filter(|old| Some(*old) != new) {
            self.unindex(&key.namespace, old, vec![key.id.clone()]).await;
        }
        let changed = !prev_live || prev.as_ref() != new;
        if let (true, Some(principal), Some(until)) = (changed, new, until) {
            if let Err(err) = self
                .index_add(&key.namespace, principal, std::slice::from_ref(&key.id), until)
                .await
            {
                tracing::warn!(error = %err, "re-adding a session to its principal's set failed");
            }
        }
    }

    /// Remove `ids` from the set of `principal`, then re-add those whose
    /// record is live with that principal by now. Best effort: logged (a
    /// stale member is dropped by the next listing).
    pub(crate) async fn unindex(&self, namespace: &Namespace, principal: &Principal, ids: Vec<SessionId>) {
        if ids.is_empty() {
            return;
        }
        if let Err(err) = self.try_unindex(namespace, principal, &ids).await {
            tracing::warn!(error = %err, "cleaning a principal's set of sessions failed");
        }
    }

    async fn try_unindex(
        &self,
        namespace: &Namespace,
        principal: &Principal,
        ids: &[SessionId],
    ) -> Result<()> {
        let set = self.keys().principal_set(namespace, principal);
        let mut conn = self.conn().await?;
        for chunk in ids.chunks(IDS_PER_CALL) {
            let mut srem = redis::cmd("SREM");
            srem.arg(&set);
            for id in chunk {
                srem.arg(id.as_str());
            }
            srem.query_async::<Value>(&mut conn).await.map_err(map_redis)?;
        }
        let calls: Vec<Call<IndexFields>> = ids
            .iter()
            .map(|id| {
                let mut hmget = redis::cmd("HMGET");
                hmget
                    .arg(self.record_key(namespace, id))
                    .arg(&["principal", "expires", "indexed_until"]);
                call(&conn, hmget)
            })
            .collect();
        let replies = concurrently(calls).await;
        let now = Timestamp::now().as_millis();
        let mut back = Vec::new();
        let mut until = 0;
        for (id, reply) in ids.iter().zip(replies) {
            if let (Some(p), Some(expires), indexed) = reply? {
                if p == principal.as_str() && expires > now {
                    back.push(id.clone());
                    let key_expiry = self.key_expiry(Timestamp::from_millis(expires)).as_millis();
                    until = until.max(indexed.unwrap_or(0).max(key_expiry));
                }
            }
        }
        if !back.is_empty() {
            self.index_add(namespace, principal, &back, until).await?;
        }
        Ok(())
    }

    /// `list_by_principal`: the set's members whose record is live with
    /// that principal, oldest first; the other members are dropped.
    pub(crate) async fn sessions_of(
        &self,
        namespace: &Namespace,
        principal: &Principal,
    ) -> Result<Vec<SessionSummary>> {
        let set = self.keys().principal_set(namespace, principal);
        let mut conn = self.conn().await?;
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(&set)
            .query_async(&mut conn)
            .await
            .map_err(map_redis)?;
        // Only ids are ever added; anything else was put there by hand.
        let (ids, foreign): (Vec<_>, Vec<_>) = members
            .into_iter()
            .map(|member| SessionId::parse(&member).map_err(|_| member))
            .partition(std::result::Result::is_ok);
        let ids: Vec<SessionId> = ids.into_iter().filter_map(std::result::Result::ok).collect();
        let foreign: Vec<String> = foreign.into_iter().filter_map(std::result::Result::err).collect();
        if !foreign.is_empty() {
            redis::cmd("SREM")
                .arg(&set)
                .arg(&foreign)
                .query_async::<Value>(&mut conn)
                .await
                .map_err(map_redis)?;
        }
        let calls: Vec<Call<Value>> = ids
            .iter()
            .map(|id| {
                let mut hmget = redis::cmd("HMGET");
                hmget.arg(self.record_key(namespace, id)).arg(&SUMMARY_FIELDS);
                call(&conn, hmget)
            })
            .collect();
        let replies = concurrently(calls).await;
        let now = Timestamp::now();
        let mut sessions = Vec::with_capacity(ids.len());
        let mut stale = Vec::new();
        for (id, reply) in ids.into_iter().zip(replies) {
            let reply = reply?;
            match reply::summary(&reply)? {
                Some(s) if s.expires > now && s.principal.as_ref() == Some(principal) => {
                    sessions.push(SessionSummary {
                        id,
                        created: s.created,
                        accessed: s.accessed,
                        expires: s.expires,
                    });
                }
                Some(_) | None => stale.push(id),
            }
        }
        self.unindex(namespace, principal, stale).await;
        sessions.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        Ok(sessions)
    }
}
