//! Every SQL statement of both backends, built once per store from the
//! validated table name. Values are always bound parameters; the only text
//! spliced in is the table name (validated by [`TableName`]) and, in
//! [`Statements::sweep_delete`], a run of placeholders.
//!
//! Columns: `namespace`, `id`, `data`, `version`, `created`, `accessed`,
//! `expires`; times are BIGINT milliseconds since the epoch, compared with the
//! client's [`Timestamp::now`](cloakroom_core::Timestamp::now) everywhere so
//! that one clock decides what is live.
//!
//! A row with `version = 0` is a *lock placeholder*: `lock` inserts it to
//! have a row to lock for a session that does not exist yet. It lives inside
//! the locking transaction only (a rollback removes it), and every statement
//! here that reads or writes records filters it out with `version > 0`.

use crate::options::TableName;

/// Which server the statements (and a URL, see `options.rs`) are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Postgres,
    MySql,
}

/// The columns a record-reading statement selects, in [`RecordRow`](crate::connection::RecordRow) order.
const RECORD_COLUMNS: &str = "data, version, created, accessed, expires";

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Statements {
    dialect: Dialect,
    table: TableName,
    /// Idempotent schema script (several statements, no parameters).
    pub migrate: String,
    /// `(ns, id, now)` → the live record.
    pub load: String,
    /// `(ns, id, now)` → version of the live record, to tell `Conflict` from `Gone`.
    pub live_version: String,
    /// `(data, created, accessed, expires, ns, id, now)`: reuse an expired row for a new record.
    pub create_over_expired: String,
    /// `(ns, id, data, created, accessed, expires)`: insert a new record unless the key exists.
    pub create_insert: String,
    /// `(data, accessed, expires, ns, id, expected, now)`: compare-and-set save of a live record.
    pub save_cas: String,
    /// `(ns, id, now)`: delete a live record.
    pub delete_live: String,
    /// `(accessed, expires, ns, id, now)`: touch a live record.
    pub touch_live: String,
    /// `(ns, after, now, limit)` → ids of live records after a cursor.
    pub list_ids: String,
    /// `(ns, now)` → number of live records.
    pub count: String,
    /// `(ns, after, now, limit)` → ids of expired, unlocked records, now locked by this transaction.
    pub sweep_select: String,
    /// `(ns, after, now, limit)` → ids of expired records, locking nothing
    /// (the sweep's fallback when a locked page runs into a row lock).
    pub sweep_candidates: String,
    /// `(ns, id, now)`: delete one record if it is still expired (the fallback).
    pub sweep_delete_one: String,
    /// `(data, version, created, accessed, expires, ns, id)`: the lock holder's
    /// write over the locked row (a record, an expired one, or a placeholder).
    pub held_save: String,
    /// `(data, version, created, accessed, expires, ns, id)`: the lock holder's
    /// write after it deleted the row earlier in the same transaction.
    pub held_insert: String,
    /// `(accessed, expires, ns, id)`: the lock holder's touch.
    pub held_touch: String,
    /// `(ns, id)`: the lock holder's delete.
    pub held_delete: String,
    /// Whether the four `held_*` statements take one more parameter, the
    /// lease left (text such as `'1500ms'`), and return one row per row they
    /// wrote instead of a count (Postgres). They set the transaction's
    /// `idle_in_transaction_session_timeout` to what is left of the lease,
    /// since every statement restarts that idle timer: without this, a write
    /// under `Then::Keep` would extend the server-side end of the lock to a
    /// whole lease after the write rather than keeping the lease's deadline.
    pub held_sets_lease: bool,
    /// `(ns, id)`: insert a lock placeholder unless the key exists (MySQL).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub insert_placeholder: String,
    /// `(ns, id)` → the row, locked; waits up to the session's lock timeout.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub lock_wait: String,
    /// `(ns, id)` → the row, locked, or a lock error at once (MySQL).
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub lock_nowait: String,
    /// `(ns, id, ns, id)` → the row, locked, inserting a placeholder first if
    /// the key is missing, in one statement (Postgres).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub lock_or_insert: String,
}

impl Statements {
    pub fn new(dialect: Dialect, table: &TableName) -> Self {
        let t = table.as_str();
        let s = |sql: String| number_params(dialect, &sql);
        let live = "namespace = ? AND id = ? AND version > 0 AND expires > ?";
        let insert_ignore = match dialect {
            Dialect::Postgres => "INSERT INTO",
            Dialect::MySql => "INSERT IGNORE INTO",
        };
        let on_conflict_nothing = match dialect {
            Dialect::Postgres => " ON CONFLICT (namespace, id) DO NOTHING",
            Dialect::MySql => "",
        };
        let empty_bytes = match dialect {
            Dialect::Postgres => "''::bytea",
            Dialect::MySql => "''",
        };
        // sqlx reads a `_bin`-collated column as bytes; ids are ASCII text.
        let id_text = match dialect {
            Dialect::Postgres => "id",
            Dialect::MySql => "CAST(id AS CHAR)",
        };
        // Statements that address one key must use the primary key. InnoDB
        // locks every row an UPDATE or DELETE examines, and in a namespace of
        // a row or two MariaDB's optimizer prefers the (namespace, expires)
        // index, so writing a *new* id scanned the namespace and waited on a
        // neighbour's held row lock until that holder's lease ran out (seen as
        // cycle_id stalling 30 s). Postgres locks only the rows it changes.
        let (pk, delete_pk) = match dialect {
            Dialect::Postgres => (t.to_owned(), format!("DELETE FROM {t}")),
            Dialect::MySql => (
                format!("{t} FORCE INDEX (PRIMARY)"),
                // Single-table DELETE takes no index hint; the multi-table form does.
                format!("DELETE {t} FROM {t} FORCE INDEX (PRIMARY)"),
            ),
        };
        // See `held_sets_lease`. Evaluated once per written row, and the
        // holder's statements write the one row they lock.
        let held_lease = match dialect {
            Dialect::Postgres => " RETURNING set_config('idle_in_transaction_session_timeout', ?, true)",
            Dialect::MySql => "",
        };
        let placeholder_values = format!("(?, ?, {empty_bytes}, 0, 0, 0, 0)");
        let columns = "(namespace, id, data, version, created, accessed, expires)";
        let lock = format!("SELECT {RECORD_COLUMNS} FROM {pk} WHERE namespace = ? AND id = ? FOR UPDATE");
        let sweep_page = format!(
            "SELECT {id_text} FROM {t} WHERE namespace = ? AND id > ? AND version > 0 AND expires <= ? \
             ORDER BY id LIMIT ?"
        );
        Statements {
            dialect,
            table: table.clone(),
            migrate: migrate_script(dialect, t),
            load: s(format!("SELECT {RECORD_COLUMNS} FROM {pk} WHERE {live}")),
            live_version: s(format!("SELECT version FROM {pk} WHERE {live}")),
            create_over_expired: s(format!(
                "UPDATE {pk} SET data = ?, version = 1, created = ?, accessed = ?, expires = ? \
                 WHERE namespace = ? AND id = ? AND (version = 0 OR expires <= ?)"
            )),
            create_insert: s(format!(
                "{insert_ignore} {t} {columns} VALUES (?, ?, ?, 1, ?, ?, ?){on_conflict_nothing}"
            )),
            save_cas: s(format!(
                "UPDATE {pk} SET data = ?, version = version + 1, accessed = ?, expires = ? \
                 WHERE namespace = ? AND id = ? AND version = ? AND version > 0 AND expires > ?"
            )),
            delete_live: s(format!("{delete_pk} WHERE {live}")),
            touch_live: s(format!("UPDATE {pk} SET accessed = ?, expires = ? WHERE {live}")),
            list_ids: s(format!(
                "SELECT {id_text} FROM {t} WHERE namespace = ? AND id > ? AND version > 0 AND expires > ? \
                 ORDER BY id LIMIT ?"
            )),
            count: s(format!(
                "SELECT COUNT(*) FROM {t} WHERE namespace = ? AND version > 0 AND expires > ?"
            )),
            // SKIP LOCKED: a session whose lock is held is in use and is not
            // swept; the rows returned are locked by the sweeping transaction
            // until it commits, so nobody renews them between this and the delete.
            sweep_select: s(format!("{sweep_page} FOR UPDATE SKIP LOCKED")),
            sweep_candidates: s(sweep_page),
            sweep_delete_one: s(format!(
                "{delete_pk} WHERE namespace = ? AND id = ? AND version > 0 AND expires <= ?"
            )),
            held_save: s(format!(
                "UPDATE {pk} SET data = ?, version = ?, created = ?, accessed = ?, expires = ? \
                 WHERE namespace = ? AND id = ?{held_lease}"
            )),
            held_insert: s(format!(
                "INSERT INTO {t} (data, version, created, accessed, expires, namespace, id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?){held_lease}"
            )),
            held_touch: s(format!(
                "UPDATE {pk} SET accessed = ?, expires = ? WHERE namespace = ? AND id = ?{held_lease}"
            )),
            held_delete: s(format!("{delete_pk} WHERE namespace = ? AND id = ?{held_lease}")),
            held_sets_lease: dialect == Dialect::Postgres,
            insert_placeholder: s(format!(
                "{insert_ignore} {t} {columns} VALUES {placeholder_values}{on_conflict_nothing}"
            )),
            lock_nowait: s(format!("{lock} NOWAIT")),
            // The CTE inserts the placeholder when the key is missing (and so
            // holds the new row's lock) or locks the existing row; both
            // branches cannot produce a row, and if neither does (a concurrent
            // insert committed after this statement's snapshot) the caller
            // runs it again.
            lock_or_insert: s(format!(
                "WITH ins AS ({insert_ignore} {t} {columns} VALUES {placeholder_values}{on_conflict_nothing} \
                 RETURNING {RECORD_COLUMNS}), \
                 locked AS (SELECT {RECORD_COLUMNS} FROM {t} WHERE namespace = ? AND id = ? FOR UPDATE) \
                 SELECT {RECORD_COLUMNS} FROM ins UNION ALL SELECT {RECORD_COLUMNS} FROM locked"
            )),
            lock_wait: s(lock),
        }
    }

    /// `(ns, id × n)`: delete the `n` expired rows the sweep's select has
    /// just locked (`FOR UPDATE` in the same transaction), so nothing can have
    /// renewed or removed them since. Expiry is deliberately *not* checked
    /// again: with an `expires` predicate Postgres' planner, on statistics
    /// stale after a burst of inserts, scanned the whole (namespace, expires)
    /// index for every batch (1.2 s per 1,000 rows of a 1M-row namespace);
    /// by key alone it can only use the primary key. The caller checks that
    /// exactly `n` rows went.
    pub fn sweep_delete(&self, n: usize) -> String {
        let marks = vec!["?"; n.max(1)].join(", ");
        let t = self.table.as_str();
        // By primary key, for the reason given in `new`: a scan of the
        // (namespace, expires) index would wait on expired rows that are locked.
        let delete = match self.dialect {
            Dialect::Postgres => format!("DELETE FROM {t}"),
            Dialect::MySql => format!("DELETE {t} FROM {t} FORCE INDEX (PRIMARY)"),
        };
        number_params(
            self.dialect,
            &format!("{delete} WHERE namespace = ? AND id IN ({marks})"),
        )
    }
}

fn migrate_script(dialect: Dialect, t: &str) -> String {
    match dialect {
        // The advisory lock serializes concurrent migrations: Postgres'
        // CREATE ... IF NOT EXISTS can still fail on a race between two
        // sessions creating the same table. DDL runs only when the catalog
        // says it is missing: even a no-op CREATE INDEX IF NOT EXISTS takes a
        // SHARE lock on the table, which queues behind every held session
        // lock and makes every new writer queue behind it, so an application
        // instance starting up (or each test opening a store) stalled all
        // traffic until the holders' leases ran out.
        Dialect::Postgres => format!(
            "BEGIN; \
             SELECT pg_advisory_xact_lock(7093921512344); \
             DO $migrate$ BEGIN \
               IF to_regclass('{t}') IS NULL THEN \
                 CREATE TABLE {t} ( \
                   namespace TEXT COLLATE \"C\" NOT NULL, \
                   id TEXT COLLATE \"C\" NOT NULL, \
                   data BYTEA NOT NULL, \
                   version BIGINT NOT NULL, \
                   created BIGINT NOT NULL, \
                   accessed BIGINT NOT NULL, \
                   expires BIGINT NOT NULL, \
                   PRIMARY KEY (namespace, id)); \
               END IF; \
               IF to_regclass('{t}_expires') IS NULL THEN \
                 CREATE INDEX {t}_expires ON {t} (namespace, expires); \
               END IF; \
             END $migrate$; \
             COMMIT"
        ),
        // utf8mb4_bin: ids are case-sensitive, and MySQL's default collations
        // are not; and the charset must be the connection's (utf8mb4), or a
        // bound id is converted and the primary key cannot be used, turning
        // point updates into locking scans that wait on other sessions' locks.
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {t} ( \
               namespace VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               data LONGBLOB NOT NULL, \
               version BIGINT NOT NULL, \
               created BIGINT NOT NULL, \
               accessed BIGINT NOT NULL, \
               expires BIGINT NOT NULL, \
               PRIMARY KEY (namespace, id), \
               KEY {t}_expires (namespace, expires) \
             ) ENGINE = InnoDB"
        ),
    }
}

/// Statements are written with `?`; Postgres numbers its parameters.
fn number_params(dialect: Dialect, sql: &str) -> String {
    match dialect {
        Dialect::MySql => sql.to_owned(),
        Dialect::Postgres => {
            let mut out = String::with_capacity(sql.len() + 16);
            let mut n = 0;
            for c in sql.chars() {
                if c == '?' {
                    n += 1;
                    out.push('$');
                    out.push_str(&n.to_string());
                } else {
                    out.push(c);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_parameters_are_numbered() {
        let s = Statements::new(Dialect::Postgres, &TableName::new("t").unwrap());
        assert_eq!(
            s.load,
            "SELECT data, version, created, accessed, expires FROM t \
             WHERE namespace = $1 AND id = $2 AND version > 0 AND expires > $3"
        );
        assert_eq!(
            s.sweep_delete(3),
            "DELETE FROM t WHERE namespace = $1 AND id IN ($2, $3, $4)"
        );
        assert!(s.lock_or_insert.contains("namespace = $3 AND id = $4 FOR UPDATE"));
        assert!(s.held_sets_lease);
        assert_eq!(
            s.held_save,
            "UPDATE t SET data = $1, version = $2, created = $3, accessed = $4, expires = $5 \
             WHERE namespace = $6 AND id = $7 \
             RETURNING set_config('idle_in_transaction_session_timeout', $8, true)"
        );
        assert!(s
            .held_delete
            .ends_with("id = $2 RETURNING set_config('idle_in_transaction_session_timeout', $3, true)"));
    }

    #[test]
    fn mysql_held_writes_take_no_lease_parameter() {
        let s = Statements::new(Dialect::MySql, &TableName::new("t").unwrap());
        assert!(!s.held_sets_lease);
        assert_eq!(
            s.held_insert,
            "INSERT INTO t (data, version, created, accessed, expires, namespace, id) \
             VALUES (?, ?, ?, ?, ?, ?, ?)"
        );
        assert!(s.held_touch.ends_with("WHERE namespace = ? AND id = ?"));
    }
}
