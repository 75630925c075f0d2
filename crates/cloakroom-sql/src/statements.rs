//! Every SQL statement of both backends, built once per store from the
//! validated table name. Values are always bound parameters; the only text
//! spliced in is the table name (validated by [`TableName`]) and, in
//! [`Statements::sweep_delete`], a run of placeholders.
//!
//! Columns: `namespace`, `id`, `data`, `version`, `created`, `accessed`,
//! `expires`, `principal`; times are BIGINT milliseconds since the epoch,
//! compared with the client's [`Timestamp::now`](cloakroom_core::Timestamp::now)
//! everywhere so that one clock decides what is live. `principal` is nullable
//! (a session of nobody) and indexed with its namespace, for
//! `list_by_principal`.
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
const RECORD_COLUMNS: &str = "data, version, created, accessed, expires, principal";

/// The statements of one store.
#[derive(Debug)]
pub(crate) struct Statements {
    dialect: Dialect,
    table: TableName,
    /// Idempotent schema script (several statements, no parameters).
    pub migrate: String,
    /// MySQL: what `migrate` checks and adds to a table made before
    /// principals (Postgres does it in `migrate`'s script).
    pub mysql_upgrade: Option<MysqlUpgrade>,
    /// `(ns, id, now)` → the live record.
    pub load: String,
    /// `(ns, id, now)` → version of the live record, to tell `Conflict` from `Gone`.
    pub live_version: String,
    /// `(data, created, accessed, expires, principal, ns, id, now)`: reuse an expired row for a new record.
    pub create_over_expired: String,
    /// `(ns, id, data, created, accessed, expires, principal)`: insert a new record unless the key exists.
    pub create_insert: String,
    /// `(data, accessed, expires, principal, ns, id, expected, now)`: compare-and-set save of a live record.
    pub save_cas: String,
    /// `(ns, id, now)`: delete a live record.
    pub delete_live: String,
    /// `(accessed, expires, ns, id, now)`: touch a live record.
    pub touch_live: String,
    /// `(ns, after, now, limit)` → ids of live records after a cursor.
    pub list_ids: String,
    /// `(ns, now)` → number of live records.
    pub count: String,
    /// `(ns, principal, now)` → id, created, accessed, expires of the live
    /// records of a principal, oldest first, through the principal index.
    pub list_by_principal: String,
    /// `(ns, after, now, limit)` → id and record of expired, unlocked
    /// records, now locked by this transaction (so what it reads is what
    /// the sweep deletes).
    pub sweep_select: String,
    /// `(ns, after, now, limit)` → ids of expired records, locking nothing
    /// (the sweep's fallback when a locked page runs into a row lock).
    pub sweep_candidates: String,
    /// `(ns, id, now)` → id and record of one record if it is still
    /// expired, locked (the fallback; waits for a holder within the sweep's
    /// lock timeout).
    pub sweep_lock_one: String,
    /// `(data, version, created, accessed, expires, principal, ns, id)`: the
    /// lock holder's write over the locked row (a record, an expired one, or
    /// a placeholder).
    pub held_save: String,
    /// `(data, version, created, accessed, expires, principal, ns, id)`: the
    /// lock holder's write after it deleted the row earlier in the same
    /// transaction.
    pub held_insert: String,
    /// `(accessed, expires, ns, id)`: the lock holder's touch.
    pub held_touch: String,
    /// `(ns, id)`: the lock holder's delete.
    pub held_delete: String,
    /// `(ns, id, version, now)`: the first step of the lock holder's
    /// rotation, deleting its row only if it still holds the live record at
    /// the version the holder knows.
    pub held_rotate_delete: String,
    /// `(data, created, accessed, expires, principal, ns, id, now)`: the
    /// rotation's new record over an expired row of the new id.
    pub held_rotate_over_expired: String,
    /// `(ns, id, data, created, accessed, expires, principal)`: the
    /// rotation's new record where the new id has no row.
    pub held_rotate_insert: String,
    /// Whether the `held_*` statements take one more parameter, the
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
        // Placeholders leave `principal` NULL: they belong to nobody.
        let placeholder_values = format!("(?, ?, {empty_bytes}, 0, 0, 0, 0)");
        let columns = "(namespace, id, data, version, created, accessed, expires)";
        let lock = format!("SELECT {RECORD_COLUMNS} FROM {pk} WHERE namespace = ? AND id = ? FOR UPDATE");
        let sweep_page = |selected: &str| {
            format!(
                "SELECT {selected} FROM {t} WHERE namespace = ? AND id > ? AND version > 0 AND expires <= ? \
                 ORDER BY id LIMIT ?"
            )
        };
        // Only the principal index can serve this without reading the whole
        // namespace; MySQL is told so, as it is for point statements (see
        // `pk`). Postgres' index is partial (`principal IS NOT NULL`), which
        // `principal = ?` implies.
        let by_principal = match dialect {
            Dialect::Postgres => t.to_owned(),
            Dialect::MySql => format!("{t} FORCE INDEX ({t}_principal)"),
        };
        let over_expired = format!(
            "UPDATE {pk} SET data = ?, version = 1, created = ?, accessed = ?, expires = ?, principal = ? \
             WHERE namespace = ? AND id = ? AND (version = 0 OR expires <= ?)"
        );
        let insert_new = format!(
            "{insert_ignore} {t} (namespace, id, data, version, created, accessed, expires, principal) \
             VALUES (?, ?, ?, 1, ?, ?, ?, ?){on_conflict_nothing}"
        );
        Statements {
            dialect,
            table: table.clone(),
            migrate: migrate_script(dialect, t),
            mysql_upgrade: (dialect == Dialect::MySql).then(|| MysqlUpgrade::new(t)),
            load: s(format!("SELECT {RECORD_COLUMNS} FROM {pk} WHERE {live}")),
            live_version: s(format!("SELECT version FROM {pk} WHERE {live}")),
            create_over_expired: s(over_expired.clone()),
            create_insert: s(insert_new.clone()),
            save_cas: s(format!(
                "UPDATE {pk} SET data = ?, version = version + 1, accessed = ?, expires = ?, principal = ? \
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
            list_by_principal: s(format!(
                "SELECT {id_text}, created, accessed, expires FROM {by_principal} \
                 WHERE namespace = ? AND principal = ? AND version > 0 AND expires > ? \
                 ORDER BY created, id"
            )),
            // SKIP LOCKED: a session whose lock is held is in use and is not
            // swept; the rows returned are locked by the sweeping transaction
            // until it commits, so nobody renews or rewrites them between
            // this and the delete, and the records read here are the ones
            // deleted. (Not `DELETE … RETURNING`: MySQL 8 has none, and
            // MariaDB's does not take the multi-table form that forces the
            // primary key.)
            sweep_select: s(format!(
                "{} FOR UPDATE SKIP LOCKED",
                sweep_page(&format!("{id_text}, {RECORD_COLUMNS}"))
            )),
            sweep_candidates: s(sweep_page(id_text)),
            sweep_lock_one: s(format!(
                "SELECT {id_text}, {RECORD_COLUMNS} FROM {pk} \
                 WHERE namespace = ? AND id = ? AND version > 0 AND expires <= ? FOR UPDATE"
            )),
            held_save: s(format!(
                "UPDATE {pk} SET data = ?, version = ?, created = ?, accessed = ?, expires = ?, principal = ? \
                 WHERE namespace = ? AND id = ?{held_lease}"
            )),
            held_insert: s(format!(
                "INSERT INTO {t} (data, version, created, accessed, expires, principal, namespace, id) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?){held_lease}"
            )),
            held_touch: s(format!(
                "UPDATE {pk} SET accessed = ?, expires = ? WHERE namespace = ? AND id = ?{held_lease}"
            )),
            held_delete: s(format!("{delete_pk} WHERE namespace = ? AND id = ?{held_lease}")),
            held_rotate_delete: s(format!(
                "{delete_pk} WHERE namespace = ? AND id = ? AND version = ? AND version > 0 AND expires > ?{held_lease}"
            )),
            held_rotate_over_expired: s(format!("{over_expired}{held_lease}")),
            held_rotate_insert: s(format!("{insert_new}{held_lease}")),
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
        //
        // A table made before principals existed gets the column and its
        // index here. Adding a nullable column without a default only
        // changes the catalog, but it waits for the session locks held at
        // the time (their leases bound that), once. The index is partial:
        // most sessions belong to nobody, and on an upgraded table it starts
        // empty, so building it is one scan without writing entries.
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
                   principal TEXT COLLATE \"C\", \
                   PRIMARY KEY (namespace, id)); \
               END IF; \
               IF to_regclass('{t}_expires') IS NULL THEN \
                 CREATE INDEX {t}_expires ON {t} (namespace, expires); \
               END IF; \
               IF NOT EXISTS (SELECT 1 FROM pg_attribute \
                   WHERE attrelid = to_regclass('{t}') AND attname = 'principal' AND NOT attisdropped) THEN \
                 ALTER TABLE {t} ADD COLUMN IF NOT EXISTS principal TEXT COLLATE \"C\"; \
               END IF; \
               IF to_regclass('{t}_principal') IS NULL THEN \
                 CREATE INDEX IF NOT EXISTS {t}_principal ON {t} (namespace, principal) \
                   WHERE principal IS NOT NULL; \
               END IF; \
             END $migrate$; \
             COMMIT"
        ),
        // utf8mb4_bin: ids are case-sensitive, and MySQL's default collations
        // are not; and the charset must be the connection's (utf8mb4), or a
        // bound id is converted and the primary key cannot be used, turning
        // point updates into locking scans that wait on other sessions' locks.
        // The principal is VARBINARY: compared byte for byte (a `_bin` text
        // collation pads, so `alice` would find `alice `), 256 bytes as
        // `Principal` allows, and small enough to index with the namespace.
        // A table made before principals existed is upgraded by
        // [`MysqlUpgrade`].
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {t} ( \
               namespace VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               id VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, \
               data LONGBLOB NOT NULL, \
               version BIGINT NOT NULL, \
               created BIGINT NOT NULL, \
               accessed BIGINT NOT NULL, \
               expires BIGINT NOT NULL, \
               principal {MYSQL_PRINCIPAL}, \
               PRIMARY KEY (namespace, id), \
               KEY {t}_expires (namespace, expires), \
               KEY {t}_principal (namespace, principal) \
             ) ENGINE = InnoDB"
        ),
    }
}

/// The MySQL principal column's type.
const MYSQL_PRINCIPAL: &str = "VARBINARY(256) NULL";

/// How `migrate` brings a MySQL table made before principals up to date.
///
/// MySQL has no `DO` block to test the catalog in, and MySQL 8 no `IF NOT
/// EXISTS` on columns and indexes; and even where MariaDB has them, a no-op
/// `ALTER TABLE` waits for a metadata lock behind every held session lock. So
/// the store asks `information_schema` first and alters only what is
/// missing; a concurrent migration that got there first makes the `ALTER`
/// fail with a duplicate column or key (1060, 1061), which `migrate` takes as
/// done.
#[derive(Debug)]
pub(crate) struct MysqlUpgrade {
    /// `(table)` → 1 if the principal column exists, else 0.
    pub column_exists: String,
    /// Adds the principal column (an instant, catalog-only change in InnoDB).
    pub add_column: String,
    /// `(table, index)` → the number of columns of the principal index (0: missing).
    pub index_exists: String,
    /// Adds the principal index (built online: writes go on meanwhile).
    pub add_index: String,
    /// The principal index's name, the second parameter of `index_exists`.
    pub index_name: String,
}

impl MysqlUpgrade {
    fn new(t: &str) -> Self {
        MysqlUpgrade {
            column_exists: "SELECT COUNT(*) FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'principal'"
                .to_owned(),
            add_column: format!("ALTER TABLE {t} ADD COLUMN principal {MYSQL_PRINCIPAL}"),
            index_exists: "SELECT COUNT(*) FROM information_schema.STATISTICS \
                 WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ?"
                .to_owned(),
            add_index: format!("CREATE INDEX {t}_principal ON {t} (namespace, principal)"),
            index_name: format!("{t}_principal"),
        }
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
            "SELECT data, version, created, accessed, expires, principal FROM t \
             WHERE namespace = $1 AND id = $2 AND version > 0 AND expires > $3"
        );
        assert_eq!(
            s.list_by_principal,
            "SELECT id, created, accessed, expires FROM t \
             WHERE namespace = $1 AND principal = $2 AND version > 0 AND expires > $3 \
             ORDER BY created, id"
        );
        assert!(s.mysql_upgrade.is_none());
        assert!(s.migrate.contains("ADD COLUMN IF NOT EXISTS principal TEXT"));
        assert_eq!(
            s.sweep_delete(3),
            "DELETE FROM t WHERE namespace = $1 AND id IN ($2, $3, $4)"
        );
        assert!(s.lock_or_insert.contains("namespace = $3 AND id = $4 FOR UPDATE"));
        assert!(s.held_sets_lease);
        assert_eq!(
            s.held_save,
            "UPDATE t SET data = $1, version = $2, created = $3, accessed = $4, expires = $5, principal = $6 \
             WHERE namespace = $7 AND id = $8 \
             RETURNING set_config('idle_in_transaction_session_timeout', $9, true)"
        );
        assert!(s
            .held_delete
            .ends_with("id = $2 RETURNING set_config('idle_in_transaction_session_timeout', $3, true)"));
        assert_eq!(
            s.held_rotate_insert,
            "INSERT INTO t (namespace, id, data, version, created, accessed, expires, principal) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7) ON CONFLICT (namespace, id) DO NOTHING \
             RETURNING set_config('idle_in_transaction_session_timeout', $8, true)"
        );
        assert!(s.held_rotate_delete.ends_with(
            "version = $3 AND version > 0 AND expires > $4 \
             RETURNING set_config('idle_in_transaction_session_timeout', $5, true)"
        ));
    }

    #[test]
    fn mysql_held_writes_take_no_lease_parameter() {
        let s = Statements::new(Dialect::MySql, &TableName::new("t").unwrap());
        assert!(!s.held_sets_lease);
        assert_eq!(
            s.held_insert,
            "INSERT INTO t (data, version, created, accessed, expires, principal, namespace, id) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        );
        assert!(s.held_touch.ends_with("WHERE namespace = ? AND id = ?"));
        assert!(s
            .list_by_principal
            .contains("FROM t FORCE INDEX (t_principal) WHERE"));
        let upgrade = s.mysql_upgrade.as_ref().unwrap();
        assert_eq!(
            upgrade.add_column,
            "ALTER TABLE t ADD COLUMN principal VARBINARY(256) NULL"
        );
        assert_eq!(upgrade.index_name, "t_principal");
    }
}
