//! The Manager/Session API over the store under each policy.

use std::sync::Arc;
use std::time::Duration;

use cloakroom_core::{Error, Expiry, Manager, Policy, SessionId, Timestamp};

use super::must;
use crate::record::{session_bytes, write_with};
use crate::Fixture;

/// A stored session holding `hits = 0`, returning its id.
pub(super) async fn stored_session(manager: &Manager) -> SessionId {
    let mut s = must(manager.open(None).await, "open new");
    must(s.insert("hits", &0u64), "insert");
    let id = s.id().clone();
    must(s.commit().await, "commit new");
    id
}

/// A task that increments `hits` of `id` `times` times, one whole session
/// open-read-write-commit each, as a request would.
pub(super) fn spawn_increments(
    manager: Manager,
    id: SessionId,
    times: usize,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    tokio::spawn(async move {
        for _ in 0..times {
            let mut s = manager.open(Some(&id)).await?;
            let n: u64 = s.get("hits")?.unwrap_or(0);
            s.insert("hits", &(n + 1))?;
            s.commit().await?;
        }
        Ok(())
    })
}

pub(super) async fn hits(manager: &Manager, id: &SessionId) -> Option<u64> {
    let s = must(manager.open_read_only(id).await, "read")?;
    must(s.get::<u64>("hits"), "get hits")
}

/// Save-if-version is an atomic compare-and-set.
pub async fn compare_and_set_detects_a_newer_version(f: Fixture) {
    let s = &f.store;
    let key = f.new_key();
    must(s.create(&key, write_with(b"v1")).await, "create");
    assert_eq!(must(s.save(&key, write_with(b"v2"), Some(1)).await, "cas 1"), 2);
    match s.save(&key, write_with(b"stale"), Some(1)).await {
        Err(Error::Conflict {
            expected: 1,
            found: 2,
        }) => {}
        other => {
            panic!("a save at an old version must be Conflict {{ expected: 1, found: 2 }}, got {other:?}")
        }
    }
    assert_eq!(
        must(s.load(&key).await, "load").expect("record").data,
        b"v2",
        "a refused CAS wrote"
    );

    // 16 writers race one CAS each from version 2: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let (s, key) = (Arc::clone(s), key.clone());
        tasks.push(tokio::spawn(async move {
            s.save(&key, write_with(&[i]), Some(2)).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(3) => wins += 1,
            Err(Error::Conflict { .. }) => {}
            other => panic!("racing CAS gave {other:?}"),
        }
    }
    assert_eq!(wins, 1, "exactly one of 16 racing compare-and-sets may win");
}

/// `Optimistic`: the second of two overlapping sessions gets `Conflict`.
pub async fn optimistic_sessions_conflict(f: Fixture) {
    let m = must(f.manager().policy(Policy::Optimistic).build(), "manager");
    let id = stored_session(&m).await;
    let mut a = must(m.open(Some(&id)).await, "open a");
    let mut b = must(m.open(Some(&id)).await, "open b (no lock, so no wait)");
    must(a.insert("hits", &1u64), "insert a");
    must(b.insert("hits", &2u64), "insert b");
    must(a.commit().await, "commit a");
    match b.commit().await {
        Err(Error::Conflict { .. }) => {}
        other => panic!("the second optimistic commit must be Conflict, got {other:?}"),
    }
    assert_eq!(hits(&m, &id).await, Some(1), "the conflicting commit wrote");
}

/// `Lossy`: no lock, no check, the last writer wins and nobody errors.
pub async fn lossy_sessions_let_the_last_writer_win(f: Fixture) {
    let m = must(f.manager().policy(Policy::Lossy).build(), "manager");
    let id = stored_session(&m).await;
    let mut a = must(m.open(Some(&id)).await, "open a");
    let mut b = must(m.open(Some(&id)).await, "open b");
    must(a.insert("hits", &1u64), "insert a");
    must(b.insert("hits", &2u64), "insert b");
    must(a.commit().await, "commit a");
    must(b.commit().await, "a lossy commit never conflicts");
    assert_eq!(hits(&m, &id).await, Some(2), "the last lossy writer must win");
}

/// `Serialized`, the headline: 32 tasks × 50 increments on one session end
/// at exactly 1,600.
pub async fn serialized_sessions_lose_no_update(f: Fixture) {
    let m = must(
        f.manager()
            .lock_wait(Duration::from_secs(120))
            .touch_interval(Duration::ZERO)
            .build(),
        "manager",
    );
    let id = stored_session(&m).await;
    let tasks: Vec<_> = (0..32)
        .map(|_| spawn_increments(m.clone(), id.clone(), 50))
        .collect();
    for t in tasks {
        must(t.await.expect("task panicked"), "serialized increment");
    }
    assert_eq!(
        hits(&m, &id).await,
        Some(1600),
        "32 × 50 serialized increments must end at exactly 1600"
    );
}

/// A session deleted (logout) while another request holds a copy is not
/// brought back by that request's save: a save that upserts would log the
/// user back in.
pub async fn logout_is_not_undone_by_a_late_save(f: Fixture) {
    for policy in [Policy::Lossy, Policy::Optimistic] {
        let m = must(f.manager().policy(policy).build(), "manager");
        let id = stored_session(&m).await;
        let mut late = must(m.open(Some(&id)).await, "open late writer");
        let logout = must(m.open(Some(&id)).await, "open logout");
        assert!(
            must(logout.delete().await, "logout"),
            "logout deletes a live session"
        );
        must(late.insert("hits", &99u64), "insert");
        match late.commit().await {
            Err(Error::Gone) => {}
            other => panic!("{policy:?}: a save after logout must be Gone, got {other:?}"),
        }
        assert_eq!(
            hits(&m, &id).await,
            None,
            "{policy:?}: the logged-out session came back"
        );
    }

    // Serialized: an unlocked delete races a lock holder's save. Whichever
    // order the backend allows, the session must end deleted.
    let m = must(f.manager().build(), "manager");
    let id = stored_session(&m).await;
    let mut holder = must(m.open(Some(&id)).await, "open holder");
    let deleter = {
        let (m, id) = (m.clone(), id.clone());
        tokio::spawn(async move { m.delete(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    must(holder.insert("hits", &5u64), "insert");
    match holder.commit().await {
        Ok(_) | Err(Error::Gone) | Err(Error::LeaseLost) => {}
        other => panic!("a holder's save racing a delete gave {other:?}"),
    }
    must(deleter.await.expect("delete task"), "delete");
    assert_eq!(hits(&m, &id).await, None, "the deleted session came back");
}

/// `cycle_id` (login) moves the data to a fresh id and the old id is gone.
pub async fn cycle_id_moves_data_and_retires_the_old_id(f: Fixture) {
    for policy in [Policy::Serialized, Policy::Optimistic, Policy::Lossy] {
        let m = must(f.manager().policy(policy).build(), "manager");
        let old = stored_session(&m).await;
        let mut s = must(m.open(Some(&old)).await, "open");
        must(s.insert("user", "alice"), "insert");
        s.cycle_id();
        let new = s.id().clone();
        assert_ne!(new, old, "{policy:?}: cycle_id kept the id");
        must(s.commit().await, "commit cycled");
        assert!(
            must(m.open_read_only(&old).await, "read old").is_none(),
            "{policy:?}: the old id still opens a session after cycle_id"
        );
        let read = must(m.open_read_only(&new).await, "read new").expect("new id must hold the session");
        assert_eq!(must(read.get::<String>("user"), "user").as_deref(), Some("alice"));
        assert_eq!(
            must(read.get::<u64>("hits"), "hits"),
            Some(0),
            "{policy:?}: data lost in cycle_id"
        );
        let reopened = must(m.open(Some(&old)).await, "open old");
        assert!(
            reopened.is_new() && reopened.id() != &old,
            "{policy:?}: the old id was accepted again"
        );
    }
}

/// An id with no live session is never adopted, so a client cannot choose
/// its own id (session fixation).
pub async fn unknown_id_gets_a_fresh_id(f: Fixture) {
    for policy in [Policy::Serialized, Policy::Optimistic, Policy::Lossy] {
        let m = must(f.manager().policy(policy).build(), "manager");
        let planted = SessionId::generate();
        let mut s = must(m.open(Some(&planted)).await, "open unknown");
        assert!(s.is_new(), "{policy:?}: an unknown id opened as stored");
        assert_ne!(
            s.id(),
            &planted,
            "{policy:?}: a client-chosen id was adopted (fixation)"
        );
        must(s.insert("k", &1u8), "insert");
        must(s.commit().await, "commit");
        assert_eq!(must(f.store.load(&f.key(&planted)).await, "load planted"), None);
    }
}

/// Read-only opens never lock (and never write).
pub async fn read_only_open_never_locks(f: Fixture) {
    let m = must(f.manager().build(), "manager");
    let id = stored_session(&m).await;
    let holder = must(m.open(Some(&id)).await, "open holder");
    let read = tokio::time::timeout(Duration::from_secs(2), m.open_read_only(&id)).await;
    let read = must(read, "a read-only open waited for the lock");
    let read = must(read, "read-only open").expect("session");
    assert_eq!(must(read.get::<u64>("hits"), "hits"), Some(0));
    let version = must(f.store.load(&f.key(&id)).await, "load")
        .expect("record")
        .version;
    drop(read);
    must(holder.rollback().await, "rollback");
    let after = must(f.store.load(&f.key(&id)).await, "load").expect("record");
    assert_eq!(after.version, version, "a read-only session wrote");
}

/// Rollback writes nothing and releases the lock.
pub async fn rollback_discards_and_releases(f: Fixture) {
    let m = must(f.manager().lock_wait(Duration::from_secs(2)).build(), "manager");
    let id = stored_session(&m).await;
    let mut s = must(m.open(Some(&id)).await, "open");
    must(s.insert("hits", &42u64), "insert");
    must(s.rollback().await, "rollback");
    let again = must(m.open(Some(&id)).await, "the lock must be free after rollback");
    assert_eq!(
        must(again.get::<u64>("hits"), "hits"),
        Some(0),
        "rollback wrote its changes"
    );
    must(again.rollback().await, "rollback");
    let raw = must(f.store.load(&f.key(&id)).await, "load").expect("record");
    assert_eq!(raw.data, session_bytes(0), "the stored bytes changed");
}

/// A session's own expiry overrides the manager's idle timeout for that
/// session only, is kept across requests, and is enforced by the store; the
/// manager's absolute timeout stays a ceiling.
pub async fn per_session_expiry_is_kept_and_enforced(f: Fixture) {
    let m = must(
        f.manager().idle_timeout(Duration::from_secs(3600)).build(),
        "manager",
    );
    let short = Duration::from_millis(1500);
    let mut s = must(m.open(None).await, "open");
    must(s.insert("hits", &1u64), "insert");
    s.set_expiry(Some(Expiry::OnInactivity(short)));
    let id = s.id().clone();
    let before = Timestamp::now();
    must(s.commit().await, "commit");
    let stored = must(f.store.load(&f.key(&id)).await, "load").expect("stored");
    assert!(
        stored.expires <= Timestamp::now().saturating_add(short)
            && stored.expires >= before.saturating_add(short),
        "the stored expiry follows the session's own expiry, not the manager's hour"
    );
    let reopened = must(m.open(Some(&id)).await, "reopen");
    assert_eq!(
        reopened.expiry(),
        Some(Expiry::OnInactivity(short)),
        "the expiry is kept with the session"
    );
    must(reopened.rollback().await, "rollback");
    let plain = stored_session(&m).await;
    tokio::time::sleep(short + Duration::from_millis(500)).await;
    assert!(
        must(m.open_read_only(&id).await, "read").is_none(),
        "the session outlived its own expiry"
    );
    assert!(
        must(m.open_read_only(&plain).await, "read").is_some(),
        "another session lost the manager's default"
    );

    // An instant past the manager's absolute timeout is cut to it.
    let capped = must(
        f.manager()
            .absolute_timeout(Some(Duration::from_secs(60)))
            .build(),
        "manager",
    );
    let mut s = must(capped.open(None).await, "open");
    must(s.insert("hits", &1u64), "insert");
    let far = Timestamp::now().saturating_add(Duration::from_secs(30 * 86_400));
    s.set_expiry(Some(Expiry::AtInstant(far)));
    let id = s.id().clone();
    must(s.commit().await, "commit");
    let stored = must(f.store.load(&f.key(&id)).await, "load").expect("stored");
    assert!(
        stored.expires <= Timestamp::now().saturating_add(Duration::from_secs(60)),
        "the absolute timeout is a ceiling"
    );
}
