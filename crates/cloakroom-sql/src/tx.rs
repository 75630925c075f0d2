//! A pooled connection with an open transaction that is never handed back
//! to the pool while the transaction is open.
//!
//! The transactions here are begun with plain SQL (so that `BEGIN` and its
//! settings travel in one round trip), which sqlx does not track: a
//! connection returned to the pool mid-transaction would carry our row locks
//! into the next borrower's queries. So a [`TxConn`] either ends its
//! transaction explicitly or, when dropped (a cancelled request, a panic),
//! closes the connection, which makes the server roll back and release the
//! locks at once.

use sqlx::pool::PoolConnection;

use crate::driver::Driver;

/// A connection inside a transaction this crate began.
pub struct TxConn<DB: Driver> {
    conn: Option<PoolConnection<DB>>,
}

impl<DB: Driver> std::fmt::Debug for TxConn<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxConn")
            .field("open", &self.conn.is_some())
            .finish()
    }
}

impl<DB: Driver> TxConn<DB> {
    /// Wrap a connection on which a transaction is about to begin.
    pub fn new(conn: PoolConnection<DB>) -> Self {
        TxConn { conn: Some(conn) }
    }

    /// The connection, while the transaction is open.
    pub fn conn(&mut self) -> &mut PoolConnection<DB> {
        // `conn` is only taken by `end` and `drop`, which consume `self`.
        match self.conn.as_mut() {
            Some(c) => c,
            None => unreachable!("TxConn used after its transaction ended"),
        }
    }

    /// End the transaction with `script` (a commit or rollback) and return the
    /// connection to the pool. If that fails the connection is closed instead.
    pub async fn end(mut self, script: &str) -> sqlx::Result<()> {
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        let out = DB::run_script(&mut conn, script).await;
        if out.is_err() {
            close(conn);
        }
        out
    }
}

impl<DB: Driver> Drop for TxConn<DB> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            close(conn);
        }
    }
}

/// Close a connection without returning it to the pool.
fn close<DB: Driver>(mut conn: PoolConnection<DB>) {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Sends the protocol's goodbye on a spawned task.
        conn.close_on_drop();
        drop(conn);
    } else {
        // No runtime to spawn on: drop the socket, which the server sees as a
        // disconnect all the same.
        drop(conn.detach());
    }
}
