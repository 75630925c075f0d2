//! The Lua scripts: every check-then-write happens inside one of them, so a
//! token or version check and the write it guards are one atomic step (never
//! a GET followed by a SET).
//!
//! Taking a lock needs no script: `SET NX PX` is atomic by itself, and the
//! record read after it is read under the lock (see `guard::try_lock`).
//! That matters for throughput: the server's single thread pays a few
//! microseconds per script and per `redis.call`, and hashes every string
//! that enters Lua byte by byte, the whole 1 KiB record included.
//!
//! Each script is `common.lua` followed by its own file. redis-rs's
//! [`Script`] sends `EVALSHA` and, on `NOSCRIPT` (a restarted or failed-over
//! server), loads the script and retries, so a script costs one round trip in
//! the steady state. Every script touches only the keys of one session, which
//! share a hash tag and hence a Cluster slot, except a rotation (two
//! sessions: single node only) and `index_add` (one principal set, and
//! nothing else).

use std::sync::LazyLock;

use redis::Script;

const COMMON: &str = include_str!("lua/common.lua");

fn with_common(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// All scripts, built once per process.
pub(crate) struct Scripts {
    /// Save, touch, delete, rotate or nothing, then release or keep the
    /// lock: the guard's writes.
    pub finish: Script,
    /// Token-checked lease extension.
    pub renew: Script,
    /// Insert at version 1 unless live.
    pub create: Script,
    /// Unlocked save, optionally compare-and-set.
    pub save: Script,
    /// Unlocked touch.
    pub touch: Script,
    /// Unlocked delete.
    pub delete: Script,
    /// Delete a stopped holder's lock if it still holds it (see `owner`).
    pub take_over: Script,
    /// Delete one record if expired and unlocked, and return it.
    pub sweep: Script,
    /// Add ids to a principal's set and keep the set long enough.
    pub index_add: Script,
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    finish: with_common(include_str!("lua/finish.lua")),
    renew: with_common(include_str!("lua/renew.lua")),
    create: with_common(include_str!("lua/create.lua")),
    save: with_common(include_str!("lua/save.lua")),
    touch: with_common(include_str!("lua/touch.lua")),
    delete: with_common(include_str!("lua/delete.lua")),
    take_over: Script::new(include_str!("lua/take_over.lua")),
    sweep: Script::new(include_str!("lua/sweep.lua")),
    index_add: Script::new(include_str!("lua/index_add.lua")),
});
