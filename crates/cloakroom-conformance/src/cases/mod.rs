//! The conformance cases, one public async function per clause of the
//! store contract ([`SessionStore`](cloakroom_core::SessionStore) and
//! [`LockGuard`](cloakroom_core::LockGuard), whose doc comments state each
//! clause; `docs/DESIGN.md` in the repository tells the whole contract).
//!
//! Each case takes a [`Fixture`](crate::Fixture) (the two-instance cases a
//! [`TwoInstances`](crate::TwoInstances)) and panics naming the clause it
//! checks when the store breaks it. They are public so a backend can also
//! call one directly while debugging. [`conformance_tests!`](crate::conformance_tests)
//! runs every case below but those of `shared.rs`, which
//! [`two_instance_tests!`](crate::two_instance_tests) runs; a unit test
//! keeps this list, the macros and the files in step.
//!
//! ## `crud.rs`: records, without locks
//!
//! - [`crud_round_trip`] — create, load, save and delete keep versions (1 on create, +1 per data write) and times.
//! - [`create_does_not_overwrite_a_live_record`] — create never replaces a live record; save never creates one.
//! - [`touch_changes_expiry_not_data_or_version`] — touch moves access time and expiry, not data or version.
//! - [`expired_records_are_never_returned`] — an expired record acts as missing everywhere, swept or not.
//! - [`namespaces_are_isolated`] — one id in two namespaces is two sessions.
//!
//! ## `policies.rs`: the Manager/Session API under each policy
//!
//! - [`compare_and_set_detects_a_newer_version`] — save-if-version is an atomic compare-and-set.
//! - [`optimistic_sessions_conflict`] — `Optimistic`: the later of two overlapping saves gets `Conflict`.
//! - [`lossy_sessions_let_the_last_writer_win`] — `Lossy`: no lock, no check, no error; the last save wins.
//! - [`serialized_sessions_lose_no_update`] — `Serialized`: 32 tasks × 50 increments of one session end at 1,600.
//! - [`logout_is_not_undone_by_a_late_save`] — a save after a delete is `Gone`, never an upsert.
//! - [`cycle_id_moves_data_and_retires_the_old_id`] — `cycle_id` moves the data to a fresh id; the old id is gone.
//! - [`unknown_id_gets_a_fresh_id`] — an id with no live session is never adopted (session fixation).
//! - [`read_only_open_never_locks`] — read-only opens never lock and never write.
//! - [`rollback_discards_and_releases`] — rollback writes nothing and releases the lock.
//! - [`per_session_expiry_is_kept_and_enforced`] — a session's own expiry overrides the manager's idle timeout and is kept; the absolute timeout stays a ceiling.
//!
//! ## `locking.rs`: locks, leases and fencing
//!
//! - [`lock_wait_times_out_within_the_bound`] — a waiter gives up with `LockTimeout` within its wait.
//! - [`lock_on_a_missing_session_locks_and_creates`] — a missing session can be locked, and saving under it creates it.
//! - [`expired_lease_fences_the_late_writer`] — a holder past its lease loses the lock; its save is `LeaseLost`, changing nothing.
//! - [`dropped_guard_releases_the_lock`] — dropping a guard frees the lock at once, not at lease expiry.
//! - [`cancelled_and_panicking_holders_release_the_lock`] — a cancelled or panicking holder frees the lock.
//! - [`cancelled_waiter_does_not_block_the_queue`] — a waiter that gives up does not hold up those behind it.
//! - [`lease_is_renewed_while_a_session_is_held`] — a session held past its lease is renewed and still commits.
//! - [`guard_touch_and_delete`] — touch and delete through the guard, each releasing the lock.
//!
//! ## `sweep.rs`: sweeping and listeners
//!
//! - [`sweep_counts_exactly_and_spares_locked_and_renewed`] — a sweep reports exact `(deleted, remaining)` and never deletes a locked or renewed session.
//! - [`listeners_hear_deletes_and_expiries`] — delete and expiry listeners run once per session.
//!
//! ## `principals.rs`: sessions by principal
//!
//! - [`principal_is_stored_and_listed`] — the principal is stored, listed by, and follows every save; touch keeps it.
//! - [`principal_index_follows_delete_expiry_and_sweep`] — the index never lists a deleted, expired or swept session; a sweep returns the records.
//! - [`revoke_all_logs_a_principal_out_everywhere_else`] — `revoke_all` deletes all but one session of a principal, each under its lock, with listeners.
//! - [`principal_cap_revokes_the_oldest`] — a login over the per-principal cap revokes the oldest sessions.
//!
//! ## `rotation.rs`: moving a session to a new id
//!
//! - [`rotation_moves_the_record`] — a rotation creates the new record and retires the old id in one step; the index follows.
//! - [`rotation_of_a_deleted_session_is_gone`] — rotating a session deleted meanwhile is `Gone` and creates nothing.
//! - [`rotation_racing_a_delete_never_leaves_both`] — rotations racing deletes never leave both ids live.
//!
//! ## `hostile.rs`: hostile and broken input
//!
//! - [`hostile_ids_are_rejected_before_the_store`] — malformed ids and namespaces are `InvalidId`; no store sees them.
//! - [`metacharacters_in_values_round_trip`] — SQL, Lua, path and key metacharacters in values are data, kept byte for byte.
//! - [`corrupt_record_is_reported_and_unlocked`] — bytes that are not a record are `Corrupt`, not a panic, and the lock is freed.
//! - [`oversize_record_is_refused_and_nothing_written`] — a record over the limit is `TooLarge` and nothing is written.
//! - [`listing_is_complete_with_ten_thousand_sessions`] — listing 10,000 sessions page by page yields each exactly once.
//! - [`hashed_ids_keep_no_bearer_token_in_the_store`] — with `hash_ids` the store holds only SHA-256 of ids, and all works.
//! - [`sealed_records_keep_no_value_in_clear`] — with a keyring the store holds no value in clear; another key or another id gets `Corrupt` and nothing changes.
//!
//! ## `handoff.rs`: the lock engine over the store
//!
//! - [`local_waiters_are_served_in_arrival_order`] — requests of one process get a session in arrival order.
//! - [`handed_off_waiter_sees_the_previous_holders_data`] — a request handed the session in memory sees the previous commit.
//! - [`a_busy_local_queue_lets_another_process_in`] — a busy queue in one process does not starve another process.
//! - [`a_failed_group_write_fails_every_commit_it_covered`] — a failed group write fails every commit it covered; the rest stay.
//! - [`a_release_wakes_the_stores_waiter_promptly`] — a release wakes the store's waiter promptly, not at a fixed poll.
//!
//! ## `shared.rs`: two instances over one storage (`two_instance_tests!`)
//!
//! - [`two_instances_lose_no_update`] — increments through two instances end at the exact count.
//! - [`a_lock_held_through_one_instance_blocks_the_other`] — a lock taken through one instance excludes the other until released.

mod crud;
mod handoff;
mod hostile;
mod locking;
mod policies;
mod principals;
mod rotation;
mod shared;
mod sweep;

pub use crud::*;
pub use handoff::*;
pub use hostile::*;
pub use locking::*;
pub use policies::*;
pub use principals::*;
pub use rotation::*;
pub use shared::*;
pub use sweep::*;

use std::fmt::Debug;
use std::time::Duration;

/// Unwrap `result`, or fail naming what was being done.
#[track_caller]
pub(crate) fn must<T, E: Debug>(result: Result<T, E>, doing: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{doing}: unexpected error {e:?}"),
    }
}

/// Lock options with a lease and a wait.
pub(crate) fn opts(lease_ms: u64, wait_ms: u64) -> cloakroom_core::LockOptions {
    cloakroom_core::LockOptions::new(Duration::from_millis(lease_ms), Duration::from_millis(wait_ms))
}

/// Slack for timing bounds on a loaded 2-core CI machine running cases in parallel.
pub(crate) const SLACK: Duration = Duration::from_millis(2500);
