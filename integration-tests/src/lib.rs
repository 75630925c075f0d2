//! Cross-process and crash tests of every multi-process backend.
//!
//! The `cloakroom-worker` binary is one OS process of a test: it opens a
//! store by URL and either increments a session's counter, takes the
//! session's lock and hangs there until the test kills it, or takes the lock
//! and saves only when told to (after the test froze and thawed it). The
//! tests in `tests/` start several workers against one session and check
//! the count.

/// The counter key the workers increment.
pub const HITS: &str = "hits";
