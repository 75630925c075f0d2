//! Sweeping expired sessions, and the listeners that hear deletes and expiries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloakroom_core::{async_trait, sweep_expired, SessionKey, SessionListener, Timestamp};

use super::{must, opts};
use crate::record::{expired_write, write_expiring_in, write_with};
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

#[derive(Default)]
struct Recorder {
    deleted: Mutex<Vec<SessionKey>>,
    expired: AtomicUsize,
}

#[async_trait]
impl SessionListener for Recorder {
    async fn on_delete(&self, key: &SessionKey) {
        self.deleted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key.clone());
    }
    async fn on_expire(&self, _key: &SessionKey) {
        self.expired.fetch_add(1, Ordering::SeqCst);
    }
}

/// Delete and expiry hooks run, once each, so data an application keeps
/// outside the store can follow its sessions.
pub async fn listeners_hear_deletes_and_expiries(f: Fixture) {
    let recorder = Arc::new(Recorder::default());
    let m = must(f.manager().listener(recorder.clone()).build(), "manager");
    let mut s = must(m.open(None).await, "open");
    must(s.insert("k", &1u8), "insert");
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
        *recorder.deleted.lock().unwrap_or_else(|p| p.into_inner()),
        vec![f.key(&id)],
        "on_delete must run once, for the deleted session only"
    );

    for i in 0..3u8 {
        must(
            f.store.create(&f.new_key(), expired_write(&[i])).await,
            "create expired",
        );
    }
    let report = must(m.sweep_expired(100).await, "sweep");
    let expected = if f.store.capabilities().expires_natively {
        0
    } else {
        3
    };
    assert_eq!(report.deleted, expected);
    assert_eq!(
        recorder.expired.load(Ordering::SeqCst),
        expected as usize,
        "on_expire once per swept session"
    );
}
