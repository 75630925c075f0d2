//! The table and every statement the store runs, in one place.
//!
//! One row per `(namespace, id)`:
//!
//! | column       | meaning |
//! |--------------|---------|
//! | `version`    | record version; `0` marks a *lock placeholder*: a row that only carries a lock on a session with no record (invisible to load, list, count, sweep) |
//! | `data`       | encoded session, `NULL` in a placeholder |
//! | `created`, `accessed`, `expires` | ms since the epoch |
//! | `lock_token` | the holder's random token, `NULL` when unlocked |
//! | `lock_until` | when the holder's lease ends (ms since the epoch) |
//! | `principal`  | who the session belongs to, `NULL` for nobody (and in a placeholder) |
//!
//! Two indexes: `<table>_expires` on `(namespace, expires)` for the sweep,
//! and `<table>_principal` on `(namespace, principal)`, partial (`WHERE
//! principal IS NOT NULL`), for `list_by_principal`.
//!
//! `principal` came after the first release: a table made before it is
//! upgraded in place (see [`upgrade`]) by `migrate` and by every connection
//! as it opens, so an old database works without a manual step.
//!
//! The table name is the only text spliced into SQL; it is validated by
//! [`validate_table_name`](crate::validate_table_name) and quoted. Every value
//! is a bound parameter.

use rusqlite::Connection;

/// The SQL text of every statement, for one table name.
#[derive(Debug)]
pub(crate) struct Sql {
    /// The table name as validated, unquoted: a bound parameter of the
    /// `pragma_table_info` look-ups.
    pub table: String,
    pub migrate: String,
    pub table_columns: String,
    pub add_principal: String,
    pub load: String,
    pub current: String,
    pub insert_or_replace_expired: String,
    pub update_data: String,
    pub touch_live: String,
    pub delete_row: String,
    pub make_placeholder: String,
    pub claim: String,
    pub lock_holder: String,
    pub take_over: String,
    pub renew: String,
    pub drop_placeholder: String,
    pub clear_lock: String,
    pub save_keep: String,
    pub save_release: String,
    pub touch_keep: String,
    pub touch_release: String,
    pub delete_release: String,
    pub list: String,
    pub by_principal: String,
    pub count: String,
    pub sweep: String,
    pub sweep_placeholders: String,
    pub principal_index: String,
}

impl Sql {
    /// Statements for table `table`, which must already be validated.
    pub(crate) fn new(table: &str) -> Self {
        let t = format!("\"{table}\"");
        let live = "version > 0 AND expires > ?3";
        let fenced = "namespace = ?1 AND id = ?2 AND lock_token = ?3 AND lock_until > ?4";
        // The row's live version, 0 when it holds no live record.
        let loaded_is_live = |param: &str| {
            format!("(CASE WHEN version > 0 AND expires > ?4 THEN version ELSE 0 END) = {param}")
        };
        let (save_loaded, touch_loaded) = (loaded_is_live("?10"), loaded_is_live("?7"));
        // Partial: most sessions of a site are anonymous, and their rows
        // need no entry. `principal = ?` implies `principal IS NOT NULL`,
        // so SQLite uses it for `by_principal`.
        let principal_index = format!(
            "CREATE INDEX IF NOT EXISTS \"{table}_principal\" ON {t} (namespace, principal)
             WHERE principal IS NOT NULL"
        );
        Sql {
            table: table.to_owned(),
            migrate: format!(
                "CREATE TABLE IF NOT EXISTS {t} (
                    namespace  TEXT    NOT NULL,
                    id         TEXT    NOT NULL,
                    version    INTEGER NOT NULL,
                    data       BLOB,
                    created    INTEGER NOT NULL,
                    accessed   INTEGER NOT NULL,
                    expires    INTEGER NOT NULL,
                    lock_token TEXT,
                    lock_until INTEGER,
                    principal  TEXT,
                    PRIMARY KEY (namespace, id)
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS \"{table}_expires\" ON {t} (namespace, expires);"
            ),
            // ?1 the table name: its columns, none if it does not exist.
            table_columns: "SELECT name FROM pragma_table_info(?1)".to_owned(),
            // The upgrade of a table made before principals; existing rows
            // read as belonging to nobody.
            add_principal: format!("ALTER TABLE {t} ADD COLUMN principal TEXT; {principal_index};"),
            // ?1 namespace, ?2 id, ?3 now
            load: format!(
                "SELECT version, data, created, accessed, expires, principal FROM {t}
                 WHERE namespace = ?1 AND id = ?2 AND {live}"
            ),
            current: format!(
                "SELECT version, created, expires, lock_token, lock_until FROM {t}
                 WHERE namespace = ?1 AND id = ?2"
            ),
            // Writes a new record at version 1, keeping any lock columns (a
            // placeholder stays locked by its holder).
            insert_or_replace_expired: format!(
                "INSERT INTO {t} (namespace, id, version, data, created, accessed, expires, principal)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (namespace, id) DO UPDATE SET
                    version = excluded.version, data = excluded.data, created = excluded.created,
                    accessed = excluded.accessed, expires = excluded.expires,
                    principal = excluded.principal"
            ),
            update_data: format!(
                "UPDATE {t} SET version = ?3, data = ?4, created = ?5, accessed = ?6, expires = ?7,
                    principal = ?8
                 WHERE namespace = ?1 AND id = ?2"
            ),
            // ?4 accessed, ?5 expires; the principal stays.
            touch_live: format!(
                "UPDATE {t} SET accessed = ?4, expires = ?5 WHERE namespace = ?1 AND id = ?2 AND {live}"
            ),
            delete_row: format!("DELETE FROM {t} WHERE namespace = ?1 AND id = ?2"),
            make_placeholder: format!(
                "UPDATE {t} SET version = 0, data = NULL, created = 0, accessed = 0, expires = 0,
                    principal = NULL
                 WHERE namespace = ?1 AND id = ?2"
            ),
            // Take the lock if it is free or its lease ran out, creating a
            // placeholder row for a session that does not exist; returns the
            // row only if the lock was taken. ?3 token, ?4 lock_until, ?5 now
            claim: format!(
                "INSERT INTO {t} (namespace, id, version, data, created, accessed, expires, lock_token, lock_until)
                 VALUES (?1, ?2, 0, NULL, 0, 0, 0, ?3, ?4)
                 ON CONFLICT (namespace, id) DO UPDATE SET
                    lock_token = excluded.lock_token, lock_until = excluded.lock_until
                 WHERE {t}.lock_until IS NULL OR {t}.lock_until <= ?5
                 RETURNING version, data, created, accessed, expires, principal"
            ),
            lock_holder: format!("SELECT lock_until, lock_token FROM {t} WHERE namespace = ?1 AND id = ?2"),
            // The lock of a holder known to be dead, taken whatever its
            // lease says, only if that holder still has it.
            // ?3 new token, ?4 new lock_until, ?5 the dead holder's token
            take_over: format!(
                "UPDATE {t} SET lock_token = ?3, lock_until = ?4
                 WHERE namespace = ?1 AND id = ?2 AND lock_token = ?5
                 RETURNING version, data, created, accessed, expires, principal"
            ),
            // ?3 token, ?4 new lock_until, ?5 now
            renew: format!(
                "UPDATE {t} SET lock_until = ?4
                 WHERE namespace = ?1 AND id = ?2 AND lock_token = ?3 AND lock_until > ?5"
            ),
            drop_placeholder: format!(
                "DELETE FROM {t} WHERE namespace = ?1 AND id = ?2 AND lock_token = ?3 AND version = 0"
            ),
            clear_lock: format!(
                "UPDATE {t} SET lock_token = NULL, lock_until = NULL
                 WHERE namespace = ?1 AND id = ?2 AND lock_token = ?3"
            ),
            // The fenced writes of a lock holder: each checks the fence
            // (our token, lease not run out) and that the record the holder
            // loaded is still the live one, and writes, in one statement;
            // the `_release` forms also clear the lock in that statement.
            // No row changed means a check failed and nothing was written.
            // ?3 token, ?4 now, ?5 new version, ?6 data, ?7 created,
            // ?8 accessed, ?9 expires, ?10 the loaded version (0 for none:
            // then the row must hold no live record, and the save creates),
            // ?11 principal.
            save_keep: format!(
                "UPDATE {t} SET version = ?5, data = ?6, created = ?7, accessed = ?8, expires = ?9,
                    principal = ?11
                 WHERE {fenced} AND {save_loaded}"
            ),
            save_release: format!(
                "UPDATE {t} SET version = ?5, data = ?6, created = ?7, accessed = ?8, expires = ?9,
                    principal = ?11, lock_token = NULL, lock_until = NULL
                 WHERE {fenced} AND {save_loaded}"
            ),
            // ?5 accessed, ?6 expires, ?7 the loaded version (never 0)
            touch_keep: format!(
                "UPDATE {t} SET accessed = ?5, expires = ?6 WHERE {fenced} AND {touch_loaded}"
            ),
            touch_release: format!(
                "UPDATE {t} SET accessed = ?5, expires = ?6, lock_token = NULL, lock_until = NULL
                 WHERE {fenced} AND {touch_loaded}"
            ),
            // Returns whether a live record was deleted. ?3 token, ?4 now
            delete_release: format!(
                "DELETE FROM {t} WHERE {fenced} RETURNING version > 0 AND expires > ?4"
            ),
            // ?2 after (exclusive), ?3 now, ?4 limit
            list: format!(
                "SELECT id FROM {t} WHERE namespace = ?1 AND id > ?2 AND {live} ORDER BY id LIMIT ?4"
            ),
            // Only that principal's rows are read, from its index. Without
            // statistics (no ANALYZE) SQLite's planner prefers the expires
            // index here, scanning every live session of the namespace, so
            // the index is named; a table without it fails this statement
            // rather than quietly scanning. ?2 principal, ?3 now
            by_principal: format!(
                "SELECT id, created, accessed, expires FROM {t} INDEXED BY \"{table}_principal\"
                 WHERE namespace = ?1 AND principal = ?2 AND {live}
                 ORDER BY created, id"
            ),
            count: format!("SELECT COUNT(*) FROM {t} WHERE namespace = ?1 AND version > 0 AND expires > ?2"),
            // The expiry check, the lock check and the delete are one
            // statement: a sweep that read the row first and deleted it
            // after would delete a session a request renewed or locked in
            // between, logging its user out mid-request. It returns each
            // row as it was, for expiry listeners. ?2 after,
            // ?3 expired-at, ?4 wall-clock now, ?5 limit
            sweep: format!(
                "DELETE FROM {t} WHERE namespace = ?1 AND id IN (
                    SELECT id FROM {t}
                    WHERE namespace = ?1 AND id > ?2 AND version > 0 AND expires <= ?3
                      AND (lock_until IS NULL OR lock_until <= ?4)
                    ORDER BY id LIMIT ?5)
                 RETURNING id, version, data, created, accessed, expires, principal"
            ),
            // Placeholders whose holder died without unlocking. ?2 now, ?3 limit
            sweep_placeholders: format!(
                "DELETE FROM {t} WHERE namespace = ?1 AND id IN (
                    SELECT id FROM {t}
                    WHERE namespace = ?1 AND version = 0 AND (lock_until IS NULL OR lock_until <= ?2)
                    LIMIT ?3)"
            ),
            principal_index,
        }
    }
}

/// What a look at the table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    /// Not created yet: `migrate` creates it, with every column.
    Missing,
    /// Made before principals.
    WithoutPrincipal,
    /// Up to date.
    Current,
}

fn look(conn: &Connection, sql: &Sql) -> rusqlite::Result<Table> {
    let mut stmt = conn.prepare_cached(&sql.table_columns)?;
    let mut columns = stmt.query([&sql.table])?;
    let mut any = false;
    while let Some(row) = columns.next()? {
        any = true;
        if row
            .get_ref(0)?
            .as_str()
            .is_ok_and(|name| name.eq_ignore_ascii_case("principal"))
        {
            return Ok(Table::Current);
        }
    }
    Ok(if any {
        Table::WithoutPrincipal
    } else {
        Table::Missing
    })
}

/// Bring an existing table up to date, inside a transaction the caller
/// holds with SQLite's write lock (`BEGIN IMMEDIATE`), so that of two
/// processes upgrading at once the second finds the work done. Leaves a
/// missing table alone (that is `migrate`'s to create).
pub(crate) fn upgrade_in_tx(conn: &Connection, sql: &Sql) -> rusqlite::Result<()> {
    if look(conn, sql)? == Table::WithoutPrincipal {
        conn.execute_batch(&sql.add_principal)?;
    }
    Ok(())
}

/// [`upgrade_in_tx`] for a connection that just opened, outside any
/// transaction. Costs one look at the table's columns when nothing is to be
/// done; the write lock is taken only when something is.
pub(crate) fn upgrade(conn: &Connection, sql: &Sql) -> rusqlite::Result<()> {
    if look(conn, sql)? != Table::WithoutPrincipal {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    // Another connection may have done it between the look and the lock:
    // the same look again, under the lock, decides.
    let upgraded = upgrade_in_tx(conn, sql).and_then(|()| conn.execute_batch("COMMIT"));
    if upgraded.is_err() && !conn.is_autocommit() {
        // The error above is the one to report; SQLite ends the
        // transaction by itself when it cannot roll back.
        let _ = conn.execute_batch("ROLLBACK");
    }
    upgraded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(conn: &Connection, statement: &str, params: impl rusqlite::Params) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {statement}")).unwrap();
        let details: Vec<String> = stmt
            .query_map(params, |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        details.join("; ")
    }

    /// `list_by_principal` reads the partial principal index, not the
    /// namespace: `principal = ?` must be seen to imply the index's
    /// `principal IS NOT NULL`, bound parameter and all (SQLite refuses to
    /// prepare an `INDEXED BY` it cannot use).
    #[test]
    fn sessions_by_principal_are_read_from_the_index() {
        let sql = Sql::new("sessions");
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&sql.migrate).unwrap();
        conn.execute_batch(&sql.principal_index).unwrap();
        let plan = plan(&conn, &sql.by_principal, rusqlite::params!["app", "alice", 0]);
        assert!(plan.contains("USING INDEX sessions_principal"), "{plan}");
    }

    /// The upgrade adds the column and the index to a table made before
    /// principals, once: a second run (another process after the first)
    /// finds nothing to do, and a missing table is left to `migrate`.
    #[test]
    fn an_old_table_is_upgraded_once_and_a_missing_one_left_alone() {
        let sql = Sql::new("sessions");
        let conn = Connection::open_in_memory().unwrap();
        upgrade(&conn, &sql).unwrap();
        assert_eq!(look(&conn, &sql).unwrap(), Table::Missing);
        conn.execute_batch(
            "CREATE TABLE \"sessions\" (
                namespace TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, data BLOB,
                created INTEGER NOT NULL, accessed INTEGER NOT NULL, expires INTEGER NOT NULL,
                lock_token TEXT, lock_until INTEGER, PRIMARY KEY (namespace, id)
             ) WITHOUT ROWID;",
        )
        .unwrap();
        assert_eq!(look(&conn, &sql).unwrap(), Table::WithoutPrincipal);
        upgrade(&conn, &sql).unwrap();
        assert_eq!(look(&conn, &sql).unwrap(), Table::Current);
        upgrade(&conn, &sql).unwrap();
        assert!(conn.is_autocommit(), "the upgrade left a transaction open");
        let indexes: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name = 'sessions_principal'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }
}
