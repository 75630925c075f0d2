//! Sweeping expired sessions, and the listeners that hear deletes and expiries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloakroom_core::{
    async_trait, sweep_expired, EndedSession, RecordWrite, SessionData, SessionKey, SessionListener,
    Timestamp,
};

use super::{must, opts};
use crate::record::{expired_write, principal, write_expiring_in, write_with};
use crate::Fixture;

/// A sweep reports exact `(deleted, remaining)`, and never deletes a session
/// that is locked or was renewed meanwhile: a cleanup that checks expiry and
/// deletes in two steps can delete a session a request just renewed.
pub async fn sweep_counts_exactly_and_spares_locked_and_renewed(f: Fixture) {
    let s = &f.store;
    let native = s.capabilities().expires_natively;
    for i in 0..23u8 {
        must(
            s.create(&f.new_key(), expired_write(&[i])).await,
            "create expired",
        );
    }
    let mut live = Vec::new();
    for i in 0..10u8 {
        let key = f.new_key();
        must(s.create(&key, write_with(&[i])).await, "create live");
        live.push(key);
    }
    let ttl = Duration::from_millis(800);
    let (renewed, locked, lapsing) = (f.new_key(), f.new_key(), f.new_key());
    for key in [&renewed, &locked, &lapsing] {
        must(
            s.create(key, write_expiring_in(b"short", ttl)).await,
            "create short-lived",
        );
    }
    let guard = must(s.lock(&locked, opts(60_000, 1_000)).await, "lock");
    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    assert!(must(s.touch(&renewed, Timestamp::now(), later).await, "renew"));
    tokio::time::sleep(ttl + Duration::from_millis(400)).await;

    // Small batches exercise the cursor.
    let report = must(sweep_expired(s.as_ref(), &f.namespace, 7).await, "sweep");
    let expected_deleted = if native { 0 } else { 23 + 1 };
    assert_eq!(
        report.deleted, expected_deleted,
        "sweep deleted count (natively expiring store: {native})"
    );
    assert_eq!(report.remaining, 11, "remaining = 10 live + 1 renewed");
    for key in live.iter().chain([&renewed]) {
        assert!(
            must(s.load(key).await, "load").is_some(),
            "sweep deleted a live or renewed session"
        );
    }
    assert_eq!(
        guard.record().map(|r| r.data.as_slice()),
        Some(b"short".as_slice())
    );
    must(guard.unlock().await, "unlock");

    // Once unlocked, the expired one goes in the next sweep (a natively
    // expiring store has already dropped it).
    let report = must(sweep_expired(s.as_ref(), &f.namespace, 100).await, "second sweep");
    assert_eq!(
        report.deleted,
        if native { 0 } else { 1 },
        "the formerly locked expired session"
    );
    assert_eq!(report.remaining, 11);
    let again = must(sweep_expired(s.as_ref(), &f.namespace, 100).await, "third sweep");
    assert_eq!(
        (again.deleted, again.remaining),
        (0, 11),
        "a sweep with nothing expired"
    );
}

/// What a listener heard: key, the session's `upload` value, principal.
type Heard = (SessionKey, Option<String>, Option<String>);

#[derive(Default)]
pub(super) struct Recorder {
    pub(super) deleted: Mutex<Vec<Heard>>,
    pub(super) expired: Mutex<Vec<Heard>>,
}

fn heard(ended: &EndedSession) -> Heard {
    let upload = ended
        .data()
        .and_then(|d| d.get::<String>("upload").ok().flatten());
    (
        ended.key.clone(),
        upload,
        ended.principal().map(|p| p.as_str().to_owned()),
    )
}

#[async_trait]
impl SessionListener for Recorder {
    async fn on_delete(&self, ended: &EndedSession) {
        self.deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(heard(ended));
    }
    async fn on_expire(&self, ended: &EndedSession) {
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(heard(ended));
    }
}

impl Recorder {
    pub(super) fn deletes(&self) -> Vec<Heard> {
        self.deleted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    fn expiries(&self) -> Vec<Heard> {
        self.expired.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Delete and expiry listeners run once per ended session and get its
/// record: data and principal, so the application can remove the file a
/// session names when the session ends.
pub async fn listeners_hear_deletes_and_expiries(f: Fixture) {
    let recorder = Arc::new(Recorder::default());
    let m = must(f.manager().listener(recorder.clone()).build(), "manager");
    let mut s = must(m.open(None).await, "open");
    must(s.insert("upload", "/tmp/upload-1"), "insert");
    s.set_principal(Some(principal("alice")));
    let id = s.id().clone();
    must(s.commit().await, "commit");
    let s = must(m.open(Some(&id)).await, "open");
    assert!(must(s.delete().await, "delete"));
    let never_stored = must(m.open(None).await, "open new");
    assert!(
        !must(never_stored.delete().await, "delete new"),
        "deleting an unstored session reports false"
    );
    assert_eq!(
        recorder.deletes(),
        vec![(
            f.key(&id),
            Some("/tmp/upload-1".to_owned()),
            Some("alice".to_owned())
        )],
        "on_delete must run once, for the deleted session only, with its data and principal"
    );

    // An unlocked delete (an administrator's) reports the record too.
    let mut s = must(m.open(None).await, "open");
    must(s.insert("upload", "/tmp/upload-2"), "insert");
    let second = s.id().clone();
    must(s.commit().await, "commit");
    assert!(must(m.delete(&second).await, "manager delete"));
    assert_eq!(
        recorder.deletes().last(),
        Some(&(f.key(&second), Some("/tmp/upload-2".to_owned()), None)),
        "on_delete after Manager::delete"
    );

    let mut swept = Vec::new();
    for i in 0..3u8 {
        let mut data = SessionData::new();
        must(data.insert("upload", &format!("/tmp/expired-{i}")), "insert");
        let key = f.new_key();
        let write = RecordWrite {
            principal: Some(principal("bob")),
            ..expired_write(&data.encode())
        };
        must(f.store.create(&key, write).await, "create expired");
        swept.push((key, Some(format!("/tmp/expired-{i}")), Some("bob".to_owned())));
    }
    let report = must(m.sweep_expired(100).await, "sweep");
    if f.store.capabilities().expires_natively {
        assert_eq!(report.deleted, 0);
        assert!(recorder.expiries().is_empty());
    } else {
        assert_eq!(report.deleted, 3);
        let mut heard = recorder.expiries();
        heard.sort();
        swept.sort();
        assert_eq!(
            heard, swept,
            "on_expire once per swept session, with its data and principal"
        );
    }
    assert_eq!(recorder.deletes().len(), 2, "a sweep is not a delete");
}
