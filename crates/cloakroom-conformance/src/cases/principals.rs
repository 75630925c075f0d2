//! Sessions by principal: the index behind "your sessions" and "log out
//! everywhere".

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cloakroom_core::{
    sweep_expired, Finish, Manager, Principal, RecordWrite, SessionId, SessionKey, SessionStore, Then,
    Timestamp,
};

use super::sweep::Recorder;
use super::{must, opts};
use crate::record::{principal, write_expiring_in, write_for};
use crate::Fixture;

const HOUR: Duration = Duration::from_secs(3600);

async fn listed(s: &dyn SessionStore, f: &Fixture, p: &Principal) -> Vec<SessionId> {
    must(s.list_by_principal(&f.namespace, p).await, "list_by_principal")
        .into_iter()
        .map(|summary| summary.id)
        .collect()
}

fn ids(keys: &[&SessionKey]) -> BTreeSet<SessionId> {
    keys.iter().map(|k| k.id.clone()).collect()
}

/// A record's principal is stored with it, listed by it, and follows every
/// write: a save with another principal (or none) moves or drops it, a touch
/// keeps it, another namespace never sees it. Summaries carry the record's
/// times, oldest `created` first.
pub async fn principal_is_stored_and_listed(f: Fixture) {
    let s = f.store.as_ref();
    let (alice, bob) = (principal("alice ' OR 1=1 --"), principal("bob/../../etc"));
    let first = f.new_key();
    let mut write = write_for(b"a1", &alice, HOUR);
    write.created = Timestamp::now().saturating_sub(Duration::from_secs(60));
    let created = must(s.create(&first, write).await, "create first");
    assert_eq!(created.principal.as_ref(), Some(&alice));
    let second = f.new_key();
    must(
        s.create(&second, write_for(b"a2", &alice, HOUR)).await,
        "create second",
    );
    let theirs = f.new_key();
    must(
        s.create(&theirs, write_for(b"b1", &bob, HOUR)).await,
        "create bob's",
    );
    let nobody = f.new_key();
    must(
        s.create(&nobody, write_with_nobody()).await,
        "create without principal",
    );

    assert_eq!(
        must(s.load(&first).await, "load").and_then(|r| r.principal),
        Some(alice.clone()),
        "load returns the principal"
    );
    let summaries = must(s.list_by_principal(&f.namespace, &alice).await, "list");
    assert_eq!(
        summaries.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        vec![first.id.clone(), second.id.clone()],
        "alice's sessions, oldest first"
    );
    let record = must(s.load(&first).await, "load").expect("first is live");
    assert_eq!(
        (summaries[0].created, summaries[0].accessed, summaries[0].expires),
        (record.created, record.accessed, record.expires),
        "a summary carries the record's times"
    );
    assert_eq!(listed(s, &f, &bob).await, vec![theirs.id.clone()]);
    let elsewhere = Fixture::new(Arc::clone(&f.store));
    assert!(
        listed(s, &elsewhere, &alice).await.is_empty(),
        "another namespace lists nothing"
    );

    // Touch keeps the principal; a save moves it; a save without one drops it.
    let later = Timestamp::now().saturating_add(2 * HOUR);
    assert!(must(s.touch(&second, Timestamp::now(), later).await, "touch"));
    assert_eq!(
        must(s.load(&second).await, "load").and_then(|r| r.principal),
        Some(alice.clone()),
        "touch keeps the principal"
    );
    must(
        s.save(&second, write_for(b"a2'", &bob, HOUR), Some(1)).await,
        "save to bob",
    );
    assert_eq!(listed(s, &f, &alice).await, vec![first.id.clone()]);
    assert_eq!(
        listed(s, &f, &bob).await.into_iter().collect::<BTreeSet<_>>(),
        ids(&[&theirs, &second])
    );
    must(
        s.save(&theirs, write_with_nobody(), None).await,
        "save without principal",
    );
    assert_eq!(listed(s, &f, &bob).await, vec![second.id.clone()]);

    // Through a guard as well.
    let mut guard = must(s.lock(&first, opts(30_000, 1_000)).await, "lock");
    must(
        guard
            .finish(Finish::Save(write_for(b"a1'", &bob, HOUR)), Then::Release)
            .await,
        "guard save to bob",
    );
    assert!(
        listed(s, &f, &alice).await.is_empty(),
        "the guard's save moved it off alice"
    );
    assert_eq!(
        listed(s, &f, &bob).await.into_iter().collect::<BTreeSet<_>>(),
        ids(&[&first, &second])
    );
}

fn write_with_nobody() -> RecordWrite {
    write_expiring_in(b"anon", HOUR)
}

/// The index never lists a session that is deleted (unlocked or through a
/// guard), expired, or swept; a sweep hands back the swept records with
/// their principal and data.
pub async fn principal_index_follows_delete_expiry_and_sweep(f: Fixture) {
    let s = f.store.as_ref();
    let carol = principal("carol");
    let keys: Vec<SessionKey> = (0..4).map(|_| f.new_key()).collect();
    for key in &keys[..3] {
        must(s.create(key, write_for(b"c", &carol, HOUR)).await, "create");
    }
    let short = Duration::from_millis(600);
    must(
        s.create(&keys[3], write_for(b"short", &carol, short)).await,
        "create short",
    );
    assert_eq!(listed(s, &f, &carol).await.len(), 4);

    assert!(must(s.delete(&keys[0]).await, "delete"));
    let guard = must(s.lock(&keys[1], opts(30_000, 1_000)).await, "lock");
    assert!(must(guard.delete_and_unlock().await, "guard delete"));
    assert_eq!(
        listed(s, &f, &carol).await.into_iter().collect::<BTreeSet<_>>(),
        ids(&[&keys[2], &keys[3]]),
        "deleted sessions are not listed"
    );
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert_eq!(
        listed(s, &f, &carol).await,
        vec![keys[2].id.clone()],
        "an expired session is not listed, swept or not"
    );
    if !s.capabilities().expires_natively {
        let mut swept = Vec::new();
        let mut cursor = None;
        loop {
            let batch = must(
                s.sweep_expired(&f.namespace, Timestamp::now(), cursor, 100).await,
                "sweep",
            );
            swept.extend(batch.deleted);
            match batch.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(swept.len(), 1, "exactly the expired session is swept");
        assert_eq!(swept[0].id, keys[3].id);
        assert_eq!(swept[0].record.principal.as_ref(), Some(&carol));
        assert_eq!(swept[0].record.data, b"short");
    } else {
        must(sweep_expired(s, &f.namespace, 100).await, "sweep");
    }
    assert_eq!(listed(s, &f, &carol).await, vec![keys[2].id.clone()]);
}

/// `Manager::revoke_all` deletes every session of a principal but the one
/// spared, each under its lock (a request holding one finishes first and
/// cannot save it back), with delete listeners; other principals keep theirs.
pub async fn revoke_all_logs_a_principal_out_everywhere_else(f: Fixture) {
    let recorder = Arc::new(Recorder::default());
    let m = must(f.manager().listener(recorder.clone()).build(), "manager");
    let dave = principal("dave");
    let mut devices = Vec::new();
    for i in 0..4 {
        devices.push(logged_in(&m, &dave, &format!("device-{i}")).await);
    }
    let erin = logged_in(&m, &principal("erin"), "phone").await;
    let listed = must(m.sessions_of(&dave).await, "sessions_of");
    assert_eq!(
        listed.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        devices.iter().map(|id| m.key(id).id).collect::<Vec<_>>(),
        "sessions_of lists dave's sessions, oldest first"
    );

    // A request on device 1 is in flight: revocation waits for it.
    let mut in_flight = must(m.open(Some(&devices[1])).await, "open device 1");
    must(in_flight.insert("cart", "book"), "insert");
    let revoking = {
        let m = m.clone();
        let (dave, here) = (dave.clone(), devices[0].clone());
        tokio::spawn(async move { m.revoke_all(&dave, Some(&here)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !revoking.is_finished(),
        "revoke_all did not wait for the request holding a session"
    );
    must(in_flight.commit().await, "the in-flight request commits");
    let revoked = must(must(revoking.await, "join"), "revoke_all");
    assert_eq!(revoked, 3);

    let left = must(m.sessions_of(&dave).await, "sessions_of");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, m.key(&devices[0]).id, "the spared session stays");
    for id in &devices[1..] {
        assert!(
            must(m.open_read_only(id).await, "read").is_none(),
            "a revoked session still opens"
        );
    }
    assert!(
        must(m.open_read_only(&erin).await, "read").is_some(),
        "another principal lost a session"
    );
    let mut heard: Vec<_> = recorder
        .deletes()
        .into_iter()
        .map(|(key, upload, p)| (key.id, upload, p))
        .collect();
    heard.sort();
    let mut expected: Vec<_> = (1..4)
        .map(|i| {
            (
                m.key(&devices[i]).id,
                Some(format!("device-{i}")),
                Some("dave".to_owned()),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(
        heard, expected,
        "one delete listener call per revoked session, with its data"
    );
}

/// A session of `p` holding `upload = label`.
async fn logged_in(m: &Manager, p: &Principal, label: &str) -> SessionId {
    let mut s = must(m.open(None).await, "open");
    must(s.insert("upload", label), "insert");
    s.set_principal(Some(p.clone()));
    let id = s.id().clone();
    must(s.commit().await, "commit login");
    // Distinct creation times, so "oldest first" is well defined.
    tokio::time::sleep(Duration::from_millis(5)).await;
    id
}

/// With a cap on sessions per principal, a login over the cap revokes the
/// oldest others, never the new one.
pub async fn principal_cap_revokes_the_oldest(f: Fixture) {
    let m = must(f.manager().max_sessions_per_principal(Some(2)).build(), "manager");
    let frank = principal("frank");
    let first = logged_in(&m, &frank, "1").await;
    let second = logged_in(&m, &frank, "2").await;
    let third = logged_in(&m, &frank, "3").await;
    assert!(
        must(m.open_read_only(&first).await, "read").is_none(),
        "the oldest session survived the cap"
    );
    let left: Vec<SessionId> = must(m.sessions_of(&frank).await, "sessions_of")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![m.key(&second).id, m.key(&third).id]);
}
