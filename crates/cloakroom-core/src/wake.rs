//! In-process wake-ups for lock waiters, for backends that have no
//! cross-process notification (flock, SQLite lease rows).
//!
//! Such a backend's waiters poll with a short backoff; within one process a
//! releaser also wakes the first waiter on the same key at once, so the common
//! case (several tabs hitting one server process) hands the lock over without
//! waiting out a backoff step. A waiter subscribes *before* its attempt to
//! lock, so a release between the attempt and the wait is not missed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::id::SessionKey;
use tokio::sync::Notify;

/// The waiters of each key currently waited on.
#[derive(Debug, Default)]
pub struct Wakers {
    map: Mutex<HashMap<SessionKey, Arc<Notify>>>,
}

impl Wakers {
    fn map(&self) -> MutexGuard<'_, HashMap<SessionKey, Arc<Notify>>> {
        // Every critical section is one map operation: nothing half-done to
        // inherit from a panicking holder.
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Register interest in `key` for as long as the returned value lives.
    pub fn subscribe(&self, key: &SessionKey) -> Waiting<'_> {
        let notify = self.map().entry(key.clone()).or_default().clone();
        Waiting {
            wakers: self,
            key: key.clone(),
            notify,
        }
    }

    /// Wake the longest-waiting waiter on `key`, if any.
    pub fn wake(&self, key: &SessionKey) {
        if let Some(notify) = self.map().get(key) {
            notify.notify_one();
        }
    }
}

/// One waiter's registration; removes the key's entry when the last waiter goes.
#[derive(Debug)]
pub struct Waiting<'a> {
    wakers: &'a Wakers,
    key: SessionKey,
    notify: Arc<Notify>,
}

impl Waiting<'_> {
    /// The notification to await (with a timeout: it is a shortcut, not the
    /// only way to learn the lock is free).
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut map = self.wakers.map();
        // Ours and the map's: nobody else waits on this key.
        if Arc::strong_count(&self.notify) <= 2 {
            map.remove(&self.key);
        }
    }
}
