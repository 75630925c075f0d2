//! Moving a session to a new id (`cycle_id`, `Finish::Rotate`).

use std::time::Duration;

use cloakroom_core::{Error, Finish, Finished, LockKind, Policy, SessionId, Then};

use super::policies::stored_session;
use super::{must, opts};
use crate::record::{principal, session_bytes, write_for};
use crate::Fixture;

/// A rotation creates the new record at version 1 with the written data,
/// creation time and principal, and the old id stops existing in the same
/// step; the principal index follows. On a store that rotates atomically, a
/// live record under the new id is `Conflict` and nothing changes.
pub async fn rotation_moves_the_record(f: Fixture) {
    let s = f.store.as_ref();
    let grace = principal("grace");
    let old = f.new_key();
    let before = session_bytes(0);
    must(
        s.create(&old, write_for(&before, &grace, Duration::from_secs(3600)))
            .await,
        "create",
    );
    let created = must(s.load(&old).await, "load").expect("live").created;
    let to = SessionId::generate();
    let m = must(f.manager().build(), "manager");
    // Through the manager, so that a store without atomic rotation is
    // exercised through the lock engine's two-step path.
    let mut session = must(m.open(Some(&old.id)).await, "open");
    session.set_principal(Some(grace.clone()));
    must(session.insert("after", &1u8), "insert");
    session.cycle_id();
    let new_id = session.id().clone();
    must(session.commit().await, "commit rotation");
    assert!(
        must(s.load(&old).await, "load old").is_none(),
        "the old id is still live"
    );
    let moved = must(s.load(&f.key(&new_id)).await, "load new").expect("the new id holds the session");
    assert_eq!(moved.version, 1);
    assert_eq!(moved.created, created, "rotation keeps the creation time");
    assert_eq!(moved.principal.as_ref(), Some(&grace));
    let listed: Vec<SessionId> = must(s.list_by_principal(&f.namespace, &grace).await, "list")
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(listed, vec![new_id.clone()], "the index follows the rotation");

    if s.capabilities().rotates_atomically {
        let target = f.new_key();
        must(
            s.create(&target, write_for(b"taken", &grace, Duration::from_secs(3600)))
                .await,
            "create target",
        );
        let mut guard = must(s.lock(&f.key(&new_id), opts(30_000, 1_000)).await, "lock");
        let write = write_for(b"x", &grace, Duration::from_secs(3600));
        match guard
            .finish(
                Finish::Rotate {
                    to: target.id.clone(),
                    write,
                },
                Then::Release,
            )
            .await
        {
            Err(Error::Conflict { .. }) => {}
            other => panic!("rotating onto a live id must be Conflict, got {other:?}"),
        }
        assert!(
            must(s.load(&f.key(&new_id)).await, "load").is_some(),
            "a refused rotation deleted the old record"
        );
        assert_eq!(
            must(s.load(&target).await, "load").map(|r| r.data),
            Some(b"taken".to_vec())
        );
        let mut guard = must(s.lock(&f.key(&new_id), opts(30_000, 1_000)).await, "lock");
        let write = write_for(b"moved", &grace, Duration::from_secs(3600));
        let finished = guard
            .finish(
                Finish::Rotate {
                    to: to.clone(),
                    write,
                },
                Then::Release,
            )
            .await;
        assert_eq!(must(finished, "guard rotation"), Finished::Rotated);
        assert_eq!(
            must(s.load(&f.key(&to)).await, "load").map(|r| r.data),
            Some(b"moved".to_vec())
        );
    }
}

/// A rotation of a session deleted meanwhile (a logout on another device, a
/// revocation) fails with `Gone` and creates nothing: the logout stands.
///
/// On a row-lock store an unlocked delete waits for the lock holder, so
/// under `Serialized` it cannot land "meanwhile": there the rotation
/// commits first and the delete then finds the old id gone.
pub async fn rotation_of_a_deleted_session_is_gone(f: Fixture) {
    for policy in [Policy::Serialized, Policy::Optimistic, Policy::Lossy] {
        let m = must(f.manager().policy(policy).build(), "manager");
        let old = stored_session(&m).await;
        let mut s = must(m.open(Some(&old)).await, "open");
        must(s.insert("user", "mallory"), "insert");
        s.cycle_id();
        let new = s.id().clone();
        if policy == Policy::Serialized && f.store.capabilities().lock == LockKind::RowLock {
            let deleting = {
                let (m, old) = (m.clone(), old.clone());
                tokio::spawn(async move { m.delete(&old).await })
            };
            must(s.commit().await, "rotation ahead of a waiting delete");
            assert!(
                !must(must(deleting.await, "join"), "delete"),
                "the delete waited for the rotation, so it finds the old id gone"
            );
            assert!(must(m.open_read_only(&old).await, "read old").is_none());
            assert!(must(m.open_read_only(&new).await, "read new").is_some());
            continue;
        }
        assert!(must(m.delete(&old).await, "delete meanwhile"));
        match s.commit().await {
            Err(Error::Gone) => {}
            other => panic!("{policy:?}: rotating a deleted session must be Gone, got {other:?}"),
        }
        assert!(
            must(m.open_read_only(&old).await, "read old").is_none(),
            "{policy:?}: old id revived"
        );
        assert!(
            must(m.open_read_only(&new).await, "read new").is_none(),
            "{policy:?}: new id created"
        );
    }
}

/// Rotations racing deletes of the same session never leave both ids live,
/// and a rotation that succeeded leaves only the new one.
pub async fn rotation_racing_a_delete_never_leaves_both(f: Fixture) {
    let m = must(f.manager().build(), "manager");
    for round in 0..20 {
        let old = stored_session(&m).await;
        let rotating = {
            let (m, old) = (m.clone(), old.clone());
            tokio::spawn(async move {
                let mut s = m.open(Some(&old)).await?;
                if s.is_new() {
                    return Ok(None);
                }
                s.cycle_id();
                let new = s.id().clone();
                s.commit().await.map(|_| Some(new))
            })
        };
        if round % 2 == 0 {
            tokio::task::yield_now().await;
        }
        let deleted = must(m.delete(&old).await, "delete");
        let rotated = must(rotating.await, "join");
        let old_live = must(m.open_read_only(&old).await, "read old").is_some();
        match rotated {
            Ok(Some(new)) => {
                // The rotation won: the delete found the old id gone.
                let new_live = must(m.open_read_only(&new).await, "read new").is_some();
                assert!(!old_live, "round {round}: both ids live after a rotation");
                assert!(
                    !deleted,
                    "round {round}: a delete succeeded before a rotation that did not fail"
                );
                assert!(
                    new_live,
                    "round {round}: a rotation that succeeded lost the session"
                );
            }
            Ok(None) | Err(Error::Gone) => {
                assert!(
                    deleted,
                    "round {round}: nothing deleted, yet the rotation found no session"
                );
                assert!(!old_live, "round {round}: the deleted id is live");
            }
            Err(e) => panic!("round {round}: unexpected error {e:?}"),
        }
    }
}
