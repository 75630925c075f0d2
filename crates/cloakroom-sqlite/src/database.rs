//! The open database of a store: its file, how every connection to it is
//! set up, and the writer and reader threads that hold those connections.

use std::path::Path;
use std::sync::{Arc, Once};

use cloakroom_core::{Error, Result};
use rusqlite::{Connection, OpenFlags};

use crate::error::sql_error;
use crate::options::SqliteOptions;
use crate::readers::{ReadGate, Readers};
use crate::schema::Sql;
use crate::writer::Writer;
use cloakroom_core::liveness::Liveness;

/// What a store has once it is first used: one writer thread and a few
/// reader threads, each opening its connection on its first request (and
/// again on the next one, if opening failed).
#[derive(Debug)]
pub(crate) struct Database {
    pub(crate) writer: Writer,
    readers: Readers,
    pub(crate) max_record_bytes: usize,
    /// Tells a killed lock holder from a live one (see `liveness`).
    pub(crate) liveness: Arc<Liveness>,
}

impl Database {
    /// Start the threads of a store with `options` (already validated).
    pub(crate) fn open(options: &SqliteOptions) -> Result<Self> {
        let sql = Arc::new(Sql::new(&options.table));
        let connector = Arc::new(Connector::new(options.clone()));
        let gate = Arc::new(ReadGate::default());
        // One connection writes; the rest of `max_connections` read, and
        // there is always at least one reader.
        let readers = options.max_connections.saturating_sub(1).max(1);
        let liveness = Arc::new(Liveness::claim(&options.path)?);
        Ok(Database {
            liveness,
            writer: Writer::start(&connector, sql.clone(), gate.clone())?,
            readers: Readers::start(readers, &connector, &sql, &gate)?,
            max_record_bytes: options.max_record_bytes,
        })
    }

    /// Run `work` on the writer thread, in its next batch's transaction,
    /// and wait for the committed result.
    pub(crate) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Sql, &Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.writer.run(move |conn, sql| work(sql, conn)).await
    }

    /// Run `work` on a reader connection.
    pub(crate) async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Sql, &Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.readers.run(move |conn, sql| work(sql, conn)).await
    }
}

/// Opens the connections of one store, the writer's and the readers'.
#[derive(Debug)]
pub(crate) struct Connector {
    options: SqliteOptions,
    /// Whether the mode of an existing database file was looked at yet.
    #[cfg_attr(not(unix), allow(dead_code))]
    mode_checked: Once,
}

impl Connector {
    fn new(options: SqliteOptions) -> Self {
        Connector {
            options,
            mode_checked: Once::new(),
        }
    }

    pub(crate) fn options(&self) -> &SqliteOptions {
        &self.options
    }

    /// Open a connection to the store's database, set up as every
    /// connection of the store needs, its table upgraded first if it was
    /// made by an older version (so no statement of `sql` meets a missing
    /// column).
    pub(crate) fn connect(&self, sql: &Sql) -> Result<Connection> {
        let o = &self.options;
        self.prepare_file(&o.path)?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&o.path, flags).map_err(sql_error)?;
        conn.busy_timeout(o.busy_timeout).map_err(sql_error)?;
        // WAL: readers never block the writer nor each other, and a commit is
        // one append; the setting is persistent in the file.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(sql_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::backend(format!(
                "sqlite refused WAL mode (got {mode}); is the database on a network file system?"
            )));
        }
        conn.pragma_update(None, "synchronous", o.synchronous.pragma_value())
            .map_err(sql_error)?;
        // Whenever the WAL does start over, cut the file back to the limit
        // instead of keeping the largest size it ever reached.
        conn.pragma_update(
            None,
            "journal_size_limit",
            i64::try_from(o.max_wal_bytes).unwrap_or(i64::MAX),
        )
        .map_err(sql_error)?;
        conn.set_prepared_statement_cache_capacity(32);
        crate::schema::upgrade(&conn, sql).map_err(sql_error)?;
        Ok(conn)
    }

    /// Sessions are credentials, so a new database file is made readable
    /// by its owner only (0600) before SQLite opens it: SQLite would create
    /// it as the umask allows, often readable by everyone. SQLite gives the
    /// `-wal` and `-shm` files it creates the database file's mode. An
    /// existing file keeps its mode, but one open to other users is logged
    /// (once per store).
    #[cfg(unix)]
    fn prepare_file(&self, path: &Path) -> Result<()> {
        use std::io::ErrorKind;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

        match std::fs::metadata(path) {
            Ok(existing) => {
                self.mode_checked.call_once(|| {
                    let mode = existing.permissions().mode() & 0o777;
                    if mode & 0o077 != 0 {
                        tracing::warn!(
                            path = %path.display(),
                            mode = %format_args!("{mode:04o}"),
                            "the sqlite session database is open to other users than its owner; \
                             consider chmod 600 (and the same for its -wal and -shm files)"
                        );
                    }
                });
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                {
                    // Empty: SQLite takes it for a new database.
                    Ok(_) => Ok(()),
                    // Another connection or process created it meanwhile.
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
                    Err(e) => Err(crate::error::create_error(path, e)),
                }
            }
            // Cannot even look (a directory that may not be searched, say):
            // SQLite's own open says why.
            Err(_) => Ok(()),
        }
    }

    #[cfg(not(unix))]
    fn prepare_file(&self, _path: &Path) -> Result<()> {
        Ok(())
    }
}
