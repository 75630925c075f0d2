//! The `cloakroom` command: inspect, sweep and migrate the sessions of any
//! cloakroom store, and benchmark it with the workload of the repository's
//! `docs/BENCHMARKS.md`.
//!
//! The library half exists so the benchmark anchor (tower-sessions, raw
//! Redis) can drive the very same workload code as `cloakroom bench`: see
//! [`bench`](mod@bench).

pub mod bench;
mod cli;
mod format;
mod gc;
mod ls;
mod migrate;
mod progress;
mod rekey;
mod rm;
mod show;

pub use cli::{main_with, main_with_listeners, run, run_with, run_with_listeners, Cli, Command};
