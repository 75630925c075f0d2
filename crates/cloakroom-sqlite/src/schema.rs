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
//!
//! The table name is the only text spliced into SQL; it is validated by
//! [`validate_table_name`](crate::validate_table_name) and quoted. Every value
//! is a bound parameter.

/// The SQL text of every statement, for one table name.
#[derive(Debug)]
pub(crate) struct Sql {
    pub migrate: String,
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
    pub count: String,
    pub sweep: String,
    pub sweep_placeholders: String,
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
        Sql {
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
                    PRIMARY KEY (namespace, id)
                 ) WITHOUT ROWID;
                 CREATE INDEX IF NOT EXISTS \"{table}_expires\" ON {t} (namespace, expires);"
            ),
            // ?1 namespace, ?2 id, ?3 now
            load: format!(
                "SELECT version, data, created, accessed, expires FROM {t}
                 WHERE namespace = ?1 AND id = ?2 AND {live}"
            ),
            current: format!(
                "SELECT version, created, expires, lock_token, lock_until FROM {t}
                 WHERE namespace = ?1 AND id = ?2"
            ),
            // Writes a new record at version 1, keeping any lock columns (a
            // placeholder stays locked by its holder).
            insert_or_replace_expired: format!(
                "INSERT INTO {t} (namespace, id, version, data, created, accessed, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (namespace, id) DO UPDATE SET
                    version = excluded.version, data = excluded.data, created = excluded.created,
                    accessed = excluded.accessed, expires = excluded.expires"
            ),
            update_data: format!(
                "UPDATE {t} SET version = ?3, data = ?4, created = ?5, accessed = ?6, expires = ?7
                 WHERE namespace = ?1 AND id = ?2"
            ),
            // ?4 accessed, ?5 expires
            touch_live: format!(
                "UPDATE {t} SET accessed = ?4, expires = ?5 WHERE namespace = ?1 AND id = ?2 AND {live}"
            ),
            delete_row: format!("DELETE FROM {t} WHERE namespace = ?1 AND id = ?2"),
            make_placeholder: format!(
                "UPDATE {t} SET version = 0, data = NULL, created = 0, accessed = 0, expires = 0
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
                 RETURNING version, data, created, accessed, expires"
            ),
            lock_holder: format!("SELECT lock_until, lock_token FROM {t} WHERE namespace = ?1 AND id = ?2"),
            // The lock of a holder known to be dead, taken whatever its
            // lease says, only if that holder still has it.
            // ?3 new token, ?4 new lock_until, ?5 the dead holder's token
            take_over: format!(
                "UPDATE {t} SET lock_token = ?3, lock_until = ?4
                 WHERE namespace = ?1 AND id = ?2 AND lock_token = ?5
                 RETURNING version, data, created, accessed, expires"
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
            // then the row must hold no live record, and the save creates).
            save_keep: format!(
                "UPDATE {t} SET version = ?5, data = ?6, created = ?7, accessed = ?8, expires = ?9
                 WHERE {fenced} AND {save_loaded}"
            ),
            save_release: format!(
                "UPDATE {t} SET version = ?5, data = ?6, created = ?7, accessed = ?8, expires = ?9,
                    lock_token = NULL, lock_until = NULL
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
            count: format!("SELECT COUNT(*) FROM {t} WHERE namespace = ?1 AND version > 0 AND expires > ?2"),
            // The expiry check, the lock check and the delete are one
            // statement: a sweep that read the row first and deleted it
            // after would delete a session a request renewed or locked in
            // between, logging its user out mid-request. ?2 after,
            // ?3 expired-at, ?4 wall-clock now, ?5 limit
            sweep: format!(
                "DELETE FROM {t} WHERE namespace = ?1 AND id IN (
                    SELECT id FROM {t}
                    WHERE namespace = ?1 AND id > ?2 AND version > 0 AND expires <= ?3
                      AND (lock_until IS NULL OR lock_until <= ?4)
                    ORDER BY id LIMIT ?5)
                 RETURNING id"
            ),
            // Placeholders whose holder died without unlocking. ?2 now, ?3 limit
            sweep_placeholders: format!(
                "DELETE FROM {t} WHERE namespace = ?1 AND id IN (
                    SELECT id FROM {t}
                    WHERE namespace = ?1 AND version = 0 AND (lock_until IS NULL OR lock_until <= ?2)
                    LIMIT ?3)"
            ),
        }
    }
}
