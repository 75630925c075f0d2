//! Cross-process and crash tests of every multi-process backend.
//!
//! The `cloakroom-worker` binary is one OS process of a test: it opens a
//! store by URL and either increments a session's counter or takes the
//! session's lock and hangs there until the test kills it. The tests in
//! `tests/` start several workers against one session and check the count.

/// The counter key the workers increment.
pub const HITS: &str = "hits";
