//! The contract suite every cloakroom session store runs.
//!
//! A backend opts in with one file and copies no test:
//!
//! ```ignore
//! // tests/conformance.rs
//! use std::sync::Arc;
//! use cloakroom_conformance::{conformance_tests, Unreachable};
//! use cloakroom_core::SessionStore;
//!
//! async fn store() -> Result<Arc<dyn SessionStore>, Unreachable> {
//!     let down = |e: cloakroom_core::Error| Unreachable::new("mystore", e.to_string(), "systemctl start mystore");
//!     let store = MyStore::from_url("mystore://127.0.0.1").map_err(down)?;
//!     store.migrate().await.map_err(down)?; // stores connect on first use
//!     Ok(Arc::new(store))
//! }
//!
//! conformance_tests!(store);
//! ```
//!
//! That expands to one `#[tokio::test]` per case in [`cases`], so each clause
//! of the contract passes or fails on its own, by name, and the cases run in
//! parallel. The [`cases`] module lists every case with the clause it
//! checks. Every case works in a fresh random [`Namespace`], so a shared
//! database or Redis needs no cleanup between cases. For the servers of
//! this workspace's own tests, [`support::connect`] does the opening and
//! [`support::Server`] knows their URLs; the `cloakroom-example-backend`
//! crate of the repository is a complete backend that runs the whole suite.
//!
//! A store that can be opened twice over the same storage (a server, a
//! directory, a database file) also runs the cases of `shared.rs` in [`cases`]
//! through two independent instances, standing in for two processes:
//!
//! ```ignore
//! async fn pair() -> Result<StorePair, Unreachable> {
//!     cloakroom_conformance::twice(store).await // each call connects anew
//! }
//!
//! two_instance_tests!(pair);
//! ```
//!
//! A store whose server is down is reported as skipped, with the command that
//! starts it — unless `CLOAKROOM_REQUIRE_BACKENDS=1` is set (as CI does), in
//! which case the case fails: nothing is skipped silently.
//!
//! The crate needs `tokio` (features `macros`, `rt-multi-thread`) among the
//! backend's dev-dependencies.

use std::sync::Arc;

use cloakroom_core::{ManagerBuilder, Namespace, SessionId, SessionKey, SessionStore};

pub mod cases;
mod counting;
mod record;
pub mod support;

pub use record::{expired_write, write_expiring_in, write_with};

/// A store whose server could not be reached: the case is skipped (or fails
/// under `CLOAKROOM_REQUIRE_BACKENDS=1`), with the command that starts it.
#[derive(Debug, Clone)]
pub struct Unreachable {
    /// Backend name, e.g. `"postgres"`.
    pub backend: &'static str,
    /// What went wrong when connecting.
    pub reason: String,
    /// The command that starts the service on a developer machine.
    pub start_with: &'static str,
}

impl Unreachable {
    /// An unreachable backend with the reason and the command that starts it.
    pub fn new(backend: &'static str, reason: impl Into<String>, start_with: &'static str) -> Self {
        Unreachable {
            backend,
            reason: reason.into(),
            start_with,
        }
    }
}

/// What each case gets: the store under test and a namespace of its own.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The store under test.
    pub store: Arc<dyn SessionStore>,
    /// A fresh namespace no other case uses.
    pub namespace: Namespace,
}

impl Fixture {
    /// A fixture on `store` with a fresh random namespace.
    pub fn new(store: Arc<dyn SessionStore>) -> Self {
        Fixture {
            store,
            namespace: Self::random_namespace(),
        }
    }

    fn random_namespace() -> Namespace {
        let id = SessionId::generate();
        match Namespace::new(&format!("conf-{}", &id.as_str()[..16])) {
            Ok(ns) => ns,
            Err(e) => panic!("a generated namespace failed validation: {e}"),
        }
    }

    /// The key of `id` in this fixture's namespace.
    pub fn key(&self, id: &SessionId) -> SessionKey {
        SessionKey::new(self.namespace.clone(), id.clone())
    }

    /// A key for a new random id.
    pub fn new_key(&self) -> SessionKey {
        self.key(&SessionId::generate())
    }

    /// A manager builder on this store and namespace.
    pub fn manager(&self) -> ManagerBuilder {
        cloakroom_core::Manager::builder(Arc::clone(&self.store), self.namespace.clone())
    }
}

/// Two instances of one store over the same storage, as a two-instance
/// factory returns them.
pub type StorePair = (Arc<dyn SessionStore>, Arc<dyn SessionStore>);

/// What each two-instance case gets: two independent instances of one store
/// over the same storage, and a namespace of its own.
#[derive(Debug, Clone)]
pub struct TwoInstances {
    /// One instance.
    pub first: Arc<dyn SessionStore>,
    /// Another instance, sharing nothing with the first but the storage.
    pub second: Arc<dyn SessionStore>,
    /// A fresh namespace no other case uses.
    pub namespace: Namespace,
}

impl TwoInstances {
    /// A key for a new random id in this case's namespace.
    pub fn new_key(&self) -> SessionKey {
        SessionKey::new(self.namespace.clone(), SessionId::generate())
    }
}

/// Two instances from a factory that opens a new, independent instance on
/// each call (one that connects to a server, say).
pub async fn twice<F, Fut>(factory: F) -> Result<StorePair, Unreachable>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn SessionStore>, Unreachable>>,
{
    Ok((factory().await?, factory().await?))
}

pub use support::backends_required;

#[doc(hidden)]
pub fn __setup(store: Result<Arc<dyn SessionStore>, Unreachable>) -> Option<Fixture> {
    support::skip_or_fail(store).map(Fixture::new)
}

#[doc(hidden)]
pub fn __setup_two(stores: Result<StorePair, Unreachable>) -> Option<TwoInstances> {
    support::skip_or_fail(stores).map(|(first, second)| TwoInstances {
        first,
        second,
        namespace: Fixture::random_namespace(),
    })
}

/// Generate one `#[tokio::test]` per conformance case, each calling
/// `$factory().await` for its store. See the crate docs.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::__conformance_cases!($factory;
            // In the order of the list in `cases` (a unit test checks it).
            crud_round_trip,
            create_does_not_overwrite_a_live_record,
            touch_changes_expiry_not_data_or_version,
            expired_records_are_never_returned,
            namespaces_are_isolated,
            compare_and_set_detects_a_newer_version,
            optimistic_sessions_conflict,
            lossy_sessions_let_the_last_writer_win,
            serialized_sessions_lose_no_update,
            logout_is_not_undone_by_a_late_save,
            cycle_id_moves_data_and_retires_the_old_id,
            unknown_id_gets_a_fresh_id,
            read_only_open_never_locks,
            rollback_discards_and_releases,
            per_session_expiry_is_kept_and_enforced,
            lock_wait_times_out_within_the_bound,
            lock_on_a_missing_session_locks_and_creates,
            expired_lease_fences_the_late_writer,
            dropped_guard_releases_the_lock,
            cancelled_and_panicking_holders_release_the_lock,
            cancelled_waiter_does_not_block_the_queue,
            lease_is_renewed_while_a_session_is_held,
            guard_touch_and_delete,
            sweep_counts_exactly_and_spares_locked_and_renewed,
            listeners_hear_deletes_and_expiries,
            principal_is_stored_and_listed,
            principal_index_follows_delete_expiry_and_sweep,
            revoke_all_logs_a_principal_out_everywhere_else,
            principal_cap_revokes_the_oldest,
            rotation_moves_the_record,
            rotation_of_a_deleted_session_is_gone,
            rotation_racing_a_delete_never_leaves_both,
            hostile_ids_are_rejected_before_the_store,
            metacharacters_in_values_round_trip,
            corrupt_record_is_reported_and_unlocked,
            oversize_record_is_refused_and_nothing_written,
            listing_is_complete_with_ten_thousand_sessions,
            hashed_ids_keep_no_bearer_token_in_the_store,
            sealed_records_keep_no_value_in_clear,
            local_waiters_are_served_in_arrival_order,
            handed_off_waiter_sees_the_previous_holders_data,
            a_busy_local_queue_lets_another_process_in,
            a_failed_group_write_fails_every_commit_it_covered,
            a_release_wakes_the_stores_waiter_promptly,
        );
    };
}

/// Generate one `#[tokio::test]` per two-instance case (`shared.rs` in [`cases`]),
/// each calling `$pair().await` for two independent instances over the same
/// storage. See the crate docs.
#[macro_export]
macro_rules! two_instance_tests {
    ($pair:path) => {
        $crate::__two_instance_cases!($pair;
            two_instances_lose_no_update,
            a_lock_held_through_one_instance_blocks_the_other,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __two_instance_cases {
    ($pair:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(two) = $crate::__setup_two($pair().await) {
                    $crate::cases::$case(two).await;
                }
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                if let Some(fixture) = $crate::__setup($factory().await) {
                    $crate::cases::$case(fixture).await;
                }
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    /// `(file, case)` for each `- [`case`] — …` line of the list in
    /// `cases/mod.rs`, under its ``## `file.rs`: …`` heading.
    fn listed() -> Vec<(String, String)> {
        let mut file = String::new();
        let mut out = Vec::new();
        for line in include_str!("cases/mod.rs").lines() {
            if let Some(heading) = line.strip_prefix("//! ## `") {
                file = heading.split('`').next().unwrap_or_default().to_owned();
            } else if let Some(item) = line.strip_prefix("//! - [`") {
                let case = item.split('`').next().unwrap_or_default().to_owned();
                out.push((file.clone(), case));
            }
        }
        out
    }

    /// The `pub async fn`s of a case file, in order.
    fn defined(source: &str) -> Vec<String> {
        source
            .lines()
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|l| l.split('(').next().unwrap_or_default().to_owned())
            .collect()
    }

    /// The case names a macro of this file passes on, in order.
    fn in_macro(name: &str) -> Vec<String> {
        let source = include_str!("lib.rs");
        let body = source
            .split(&format!("macro_rules! {name} {{"))
            .nth(1)
            .and_then(|rest| rest.split_once(';'))
            .and_then(|(_, list)| list.split_once(");"))
            .map(|(list, _)| list)
            .unwrap_or_else(|| panic!("no case list in macro {name}"));
        body.lines()
            .map(|l| l.trim().trim_end_matches(','))
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_case_list_matches_the_case_files_and_the_macros() {
        let listed = listed();
        let files = [
            ("crud.rs", include_str!("cases/crud.rs")),
            ("policies.rs", include_str!("cases/policies.rs")),
            ("locking.rs", include_str!("cases/locking.rs")),
            ("sweep.rs", include_str!("cases/sweep.rs")),
            ("principals.rs", include_str!("cases/principals.rs")),
            ("rotation.rs", include_str!("cases/rotation.rs")),
            ("hostile.rs", include_str!("cases/hostile.rs")),
            ("handoff.rs", include_str!("cases/handoff.rs")),
            ("shared.rs", include_str!("cases/shared.rs")),
        ];
        let names_in = |file: &str| -> Vec<String> {
            listed
                .iter()
                .filter(|(f, _)| f == file)
                .map(|(_, c)| c.clone())
                .collect()
        };
        for (file, source) in files {
            assert_eq!(
                names_in(file),
                defined(source),
                "the list in cases/mod.rs vs cases/{file}"
            );
        }
        assert_eq!(
            listed.len(),
            files.iter().map(|(_, s)| defined(s).len()).sum::<usize>()
        );
        let single: Vec<String> = listed
            .iter()
            .filter(|(f, _)| f != "shared.rs")
            .map(|(_, c)| c.clone())
            .collect();
        assert_eq!(
            in_macro("conformance_tests"),
            single,
            "conformance_tests! vs the list"
        );
        assert_eq!(
            in_macro("two_instance_tests"),
            names_in("shared.rs"),
            "two_instance_tests! vs the list"
        );
    }
}
