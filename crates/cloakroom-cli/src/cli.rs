//! Command-line surface: clap definitions and dispatch.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use cloakroom::{
    Key, Keyring, Manager, Namespace, Registry, SessionId, SessionKey, SessionListener, SessionStore,
};

use crate::bench::BenchArgs;

/// Inspect, sweep, migrate and benchmark cloakroom session stores.
///
/// Exit status: 0 on success, 1 on an error, 2 on a usage error.
#[derive(Debug, Parser)]
#[command(name = "cloakroom", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the live sessions of a namespace: id, created, accessed, expires, size.
    ///
    /// Streams page by page, so it works with millions of sessions in bounded memory.
    Ls(LsArgs),
    /// Show one session: its metadata and every value decoded from MessagePack to JSON.
    ///
    /// A record that does not decode is reported as corrupt (exit status 1).
    Show(ShowArgs),
    /// Delete sessions by id, whatever their lock state.
    Rm(RmArgs),
    /// Sweep the expired sessions of a namespace and print `deleted N, remaining M`.
    ///
    /// Locked or renewed sessions are never deleted. A progress bar is drawn
    /// when stderr is a terminal.
    Gc(GcArgs),
    /// Copy every live session of a namespace from one store to another.
    ///
    /// Preserved: id, data bytes (verbatim), created, accessed and expires.
    /// Not preserved: the version — the store API assigns versions (1 on
    /// creation), and a version is a fencing token local to one store.
    /// Idempotent: a session already live in the target is skipped (the
    /// default) or replaced (`--overwrite`), so re-running is safe.
    ///
    /// Ids are copied as stored: sessions written with hashed ids
    /// (`SessionConfig::hash_ids`) stay hashed in the target, so no
    /// `--hash-ids` flag is needed (or taken) here.
    Migrate(MigrateArgs),
    /// Re-seal every session of a namespace with the first `--key`.
    ///
    /// For key rotation and for turning encryption on: every record sealed
    /// with an older key, or stored in clear, is sealed with the first key
    /// (records already sealed with it are left alone). Each session is
    /// re-sealed under its lock, so requests in flight are not disturbed.
    /// Prints `resealed N, current M, vanished V, unreadable U`; with
    /// `--json` one object with those fields. Exit status 1 if a record
    /// could not be opened with any key (their ids are printed on stderr).
    Rekey(RekeyArgs),
    /// Run the benchmark workload described in the README (spread, burst, contention, processes, handoff, sweep).
    Bench(BenchArgs),
    /// One worker process of `bench --mode processes` (internal).
    #[command(name = "__bench-worker", hide = true)]
    BenchWorker(crate::bench::WorkerArgs),
}

/// Where the sessions are.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Store URL: memory:, file:///dir, sqlite:///path.db, postgres://…, mysql://…, redis://…
    #[arg(
        long = "store",
        env = "CLOAKROOM_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub url: String,
    /// Namespace (application id) of the sessions.
    #[arg(long, default_value = "default", value_parser = parse_namespace)]
    pub namespace: Namespace,
}

/// Where the sessions are, and whether their ids were hashed into store keys.
#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// The application stores sessions under a hash of their id
    /// (`SessionConfig::hash_ids` on).
    ///
    /// `show` and `rm` then take the id from the session cookie and look up
    /// the key the application's `Manager` stores it under (its SHA-256);
    /// `ls` labels the ids it lists as stored hashes (column `STORED HASH`,
    /// JSON field `stored_hash`). A stored hash is a store key: `show` and
    /// `rm` take it as it is, without this flag. The environment variable
    /// takes `true` or `false`.
    #[arg(long, env = "CLOAKROOM_HASH_IDS", hide_env_values = true)]
    pub(crate) hash_ids: bool,
    /// The application seals session data (`SessionConfig::keyring`): its
    /// keys, base64, the current one first, comma-separated or repeated.
    ///
    /// `show` opens sealed records with them; `rekey` re-seals every record
    /// with the first. Give keys through the environment variable rather
    /// than the command line, where other users of the machine can see them.
    #[arg(
        long = "key",
        env = "CLOAKROOM_KEYS",
        value_name = "BASE64",
        value_delimiter = ',',
        hide_env_values = true,
        value_parser = parse_key
    )]
    pub(crate) keys: Vec<KeyArg>,
}

/// A key given on the command line; its `Debug` shows only the fingerprint.
#[derive(Clone, Debug)]
pub(crate) struct KeyArg(Key);

fn parse_key(text: &str) -> Result<KeyArg, String> {
    Key::from_base64(text).map(KeyArg).map_err(|e| e.to_string())
}

/// Arguments of `ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub(crate) sessions: SessionsArgs,
    /// Also show whether each session is locked right now.
    ///
    /// The store contract has no lock-state query, so this probes: it tries
    /// to take each session's lock with a 1 ms wait and releases it at once.
    /// A request arriving during the probe waits for that moment, and a
    /// session that is locked by nobody shows `no`.
    #[arg(long)]
    pub(crate) locked: bool,
    /// One JSON object per line instead of a table: `id` (`stored_hash`
    /// with `--hash-ids`), `created`, `accessed`, `expires` (RFC 3339),
    /// `size` (bytes), `version`, and with `--locked` `locked`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub(crate) sessions: SessionsArgs,
    /// The session id (43 characters of base64url): with `--hash-ids` the one
    /// in the session cookie, otherwise the id as stored.
    // One id in 64 starts with '-', which must not be taken for a flag.
    #[arg(value_parser = parse_id, allow_hyphen_values = true)]
    pub(crate) id: SessionId,
}

/// Arguments of `rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    #[command(flatten)]
    pub(crate) sessions: SessionsArgs,
    /// The ids to delete (after the options). An id with no live session is
    /// reported and makes the exit status 1 (after every id has been tried
    /// and reported); the others are still deleted.
    #[arg(required = true, value_parser = parse_id, allow_hyphen_values = true)]
    pub(crate) ids: Vec<SessionId>,
    /// One JSON object per line, one line per id, in the order given:
    /// `{"id":ID,"deleted":true|false}` (`id` as given on the command line).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_id(text: &str) -> Result<SessionId, String> {
    SessionId::parse(text).map_err(|e| e.to_string())
}

/// Arguments of `rekey`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    #[command(flatten)]
    pub(crate) sessions: SessionsArgs,
    /// One JSON object instead of a line of text: `resealed`, `current`,
    /// `vanished`, `unreadable`.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub(crate) store: StoreArgs,
    /// Records examined per batch (one store round trip each).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) batch: u32,
    /// One JSON object on one line instead of the text summary:
    /// `{"deleted":N,"remaining":M,"seconds":S}` (sessions deleted, live
    /// sessions left, seconds the sweep and count took, a float).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Source store URL.
    #[arg(long, value_name = "URL")]
    pub(crate) from: String,
    /// Target store URL (its schema is created if missing).
    #[arg(long, value_name = "URL")]
    pub(crate) to: String,
    /// Namespace to copy (the same in both stores).
    #[arg(long, default_value = "default", value_parser = parse_namespace)]
    pub(crate) namespace: Namespace,
    /// Replace sessions already live in the target (delete, then create with
    /// the source's data and times) instead of skipping them.
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Sessions copied at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) parallel: u32,
    /// One JSON object on one line instead of the text summary:
    /// `{"copied":N,"skipped":N,"replaced":N,"vanished":N}` (copied: new in
    /// the target; skipped: already live there, left as it was; replaced:
    /// live there and overwritten, `--overwrite`; vanished: listed in the
    /// source but expired or deleted before it was read).
    #[arg(long)]
    pub(crate) json: bool,
}

pub(crate) fn parse_namespace(text: &str) -> Result<Namespace, String> {
    Namespace::new(text).map_err(|e| e.to_string())
}

pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

/// Run one parsed command line to completion with the built-in backends.
pub async fn run(cli: Cli) -> Result<()> {
    run_with(cli, &cloakroom::registry()).await
}

/// Run one parsed command line with the backends of `registry`, so that a
/// third-party backend crate can ship this CLI with its own URL scheme
/// (see [`main_with`]).
pub async fn run_with(cli: Cli, registry: &Registry) -> Result<()> {
    run_with_listeners(cli, registry, &[]).await
}

/// [`run_with`], with the application's session listeners: `rm` runs their
/// `on_delete` and `gc` their `on_expire` for each session it ends, with the
/// session's data, as the application's own manager would (see
/// [`main_with_listeners`]).
pub async fn run_with_listeners(
    cli: Cli,
    registry: &Registry,
    listeners: &[Arc<dyn SessionListener>],
) -> Result<()> {
    match cli.command {
        Command::Ls(a) => crate::ls::run(a, registry).await,
        Command::Show(a) => crate::show::run(a, registry).await,
        Command::Rm(a) => crate::rm::run(a, registry, listeners).await,
        Command::Gc(a) => crate::gc::run(a, registry, listeners).await,
        Command::Migrate(a) => crate::migrate::run(a, registry).await,
        Command::Rekey(a) => crate::rekey::run(a, registry).await,
        Command::Bench(a) => crate::bench::run_cli(a, registry).await,
        Command::BenchWorker(a) => crate::bench::run_cli_worker(a, registry).await,
    }
}

/// The whole `cloakroom` program with the backends of `registry`: parse the
/// command line, run it, print any error. A third-party backend's binary is
///
/// ```no_run
/// # const MY_STORE: cloakroom::Opener = cloakroom::registry::MEMORY;
/// fn main() -> std::process::ExitCode {
///     cloakroom_cli::main_with(cloakroom::registry().with(MY_STORE))
/// }
/// ```
///
/// Exit status: 0 ok, 1 error, 2 usage error.
pub fn main_with(registry: Registry) -> ExitCode {
    main_with_listeners(registry, Vec::new())
}

/// [`main_with`], with the application's session listeners, so that
/// `cloakroom rm` and `cloakroom gc` clean up after the sessions they end
/// (remove the upload a session names, say) exactly as the application
/// does:
///
/// ```no_run
/// # use std::sync::Arc;
/// # struct RemoveUploads;
/// # #[cloakroom::async_trait] impl cloakroom::SessionListener for RemoveUploads {}
/// fn main() -> std::process::ExitCode {
///     cloakroom_cli::main_with_listeners(cloakroom::registry(), vec![Arc::new(RemoveUploads)])
/// }
/// ```
pub fn main_with_listeners(registry: Registry, listeners: Vec<Arc<dyn SessionListener>>) -> ExitCode {
    // clap prints usage errors itself and exits with status 2.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_with_listeners(cli, &registry, &listeners)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Maps the ids given on the command line to store keys in the namespace,
/// through the very [`Manager::key`] an application with the same
/// `hash_ids` setting uses, so the CLI finds what the application stored.
pub(crate) struct Keys(Manager);

impl Keys {
    pub(crate) fn new(store: &Arc<dyn SessionStore>, sessions: &SessionsArgs) -> Result<Self> {
        Self::with_listeners(store, sessions, &[])
    }

    /// As [`Keys::new`], with a manager that runs `listeners`.
    pub(crate) fn with_listeners(
        store: &Arc<dyn SessionStore>,
        sessions: &SessionsArgs,
        listeners: &[Arc<dyn SessionListener>],
    ) -> Result<Self> {
        let mut builder =
            Manager::builder(Arc::clone(store), sessions.store.namespace.clone()).hash_ids(sessions.hash_ids);
        for listener in listeners {
            builder = builder.listener(Arc::clone(listener));
        }
        if let Some((first, old)) = sessions.keys.split_first() {
            let keyring = old.iter().fold(Keyring::new(first.0.clone()), |ring, key| {
                ring.with_old(key.0.clone())
            });
            builder = builder.keyring(keyring);
        }
        builder.build().map(Keys).context("preparing the id mapping")
    }

    /// The manager that maps ids and opens and seals records as the
    /// application's does.
    pub(crate) fn manager(&self) -> &Manager {
        &self.0
    }

    /// The store key of `id`.
    pub(crate) fn key(&self, id: &SessionId) -> SessionKey {
        self.0.key(id)
    }
}

/// Open a store of `registry` (creating its schema), naming `what` in the error.
pub(crate) async fn open_store(registry: &Registry, url: &str, what: &str) -> Result<Arc<dyn SessionStore>> {
    cloakroom::open_with(registry, url)
        .await
        .with_context(|| format!("opening {what}"))
}
