//! The transactions and savepoints idem opens on a connection, and how it
//! ends them so that sqlx's bookkeeping stays in step with the server.
//!
//! sqlx counts the transactions it opened on a connection (its depth) and
//! names a savepoint after it (`_sqlx_savepoint_<depth>`). A server can end
//! the whole transaction under a savepoint on its own: InnoDB on a deadlock,
//! or on a lock wait timeout with `innodb_rollback_on_timeout`; SQLite on a
//! trigger's `RAISE(ROLLBACK)`, a constraint declared `ON CONFLICT
//! ROLLBACK` or a full disk. sqlx does not notice: rolling the savepoint
//! back then fails ("SAVEPOINT ... does not exist"), sqlx keeps the
//! savepoint open and its `Drop` queues another rollback whose error
//! surfaces on the caller's next statement (their `ROLLBACK`), and on
//! SQLite the depth stays wrong for the pooled connection's next user.
//!
//! [`roll_back`] first asks the server with a raw `ROLLBACK TO SAVEPOINT`.
//! When the savepoint is gone, it opens a transaction again
//! ([`Backend::REOPEN`]: read-only where the backend has them, so a write
//! the caller still attempts in the dead transaction fails rather than
//! committing on its own) and every savepoint sqlx believes open (the
//! caller's own too), so that sqlx's rollbacks succeed: idem's, then the
//! caller's `rollback()` of each of its levels.
//! It reports [`Enclosing::Ended`] and the caller maps the error with
//! [`ended`]: [`Error::Retryable`] for a deadlock or timeout, otherwise
//! [`Error::TransactionRolledBack`].
//!
//! Cancellation: the savepoint stays a `sqlx::Transaction` until sqlx has
//! ended it, so a future dropped at any `.await` here leaves sqlx's `Drop`
//! to queue the rollback, which runs before the caller's next statement
//! (and, when the savepoint is gone, fails that statement loudly instead of
//! letting it commit half a change). One window is sqlx's own and out of
//! idem's reach: on PostgreSQL, sqlx 0.8.6 arms a guard before it sends
//! `SAVEPOINT` and raises its depth only after the answer, so a future
//! dropped in between rolls back the caller's whole transaction and sqlx
//! forgets it (`is_in_transaction()` turns false; the caller should treat
//! its transaction as lost after dropping any call that opens a savepoint
//! before it returned).

use sqlx::pool::MaybePoolConnection;
use sqlx::{Connection, Database, Transaction, TransactionManager};

use crate::backend::db_error;
use crate::{Backend, Error, ErrorKind};

/// What a rollback found about the transaction enclosing the savepoint.
#[derive(Debug)]
pub(crate) enum Enclosing {
    /// The enclosing transaction is intact (or there is none: the rolled
    /// back transaction was the outermost).
    Intact,
    /// The server had ended the enclosing transaction; holds its answer to
    /// `ROLLBACK TO SAVEPOINT` as evidence.
    Ended(sqlx::Error),
}

/// Opens a savepoint when `conn` is in a transaction, or a transaction of
/// its own (`DB::BEGIN_WRITE`) when it is in none.
pub(crate) async fn begin<DB: Backend>(
    conn: &mut DB::Connection,
) -> Result<Transaction<'_, DB>, sqlx::Error> {
    if conn.is_in_transaction() {
        Connection::begin(conn).await
    } else {
        conn.begin_with(DB::BEGIN_WRITE).await
    }
}

/// The connection a call works on: one of a pool's, taken for the call,
/// or the caller's own, lent to it ([`Acquire::acquire`] gives either).
///
/// A pool's connection is closed instead of going back to its pool when
/// the call's future is dropped before [`done`](Self::done): sqlx 0.8.6
/// cannot hand back a connection whose call was dropped at any `.await`
/// in a usable state. A `BEGIN` in flight leaves the session inside a
/// transaction sqlx does not count, so the pool's next user writes inside
/// it, uncommitted (transact-rs/sqlx#4385, #4393; seen on all three
/// backends); a MySQL statement dropped while it is prepared leaves the
/// server's answer unread, and the connection's next command fails or
/// hangs. Closing costs a new connection after a cancelled call only.
///
/// [`Acquire::acquire`]: sqlx::Acquire::acquire
pub(crate) struct Held<'c, DB: Database> {
    conn: MaybePoolConnection<'c, DB>,
    done: bool,
}

impl<'c, DB: Database> Held<'c, DB> {
    pub(crate) fn new(conn: impl Into<MaybePoolConnection<'c, DB>>) -> Self {
        Held {
            conn: conn.into(),
            done: false,
        }
    }

    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.conn
    }

    /// The call ran to its end (an error included): the connection is in a
    /// known state and goes back to its pool.
    pub(crate) fn done(&mut self) {
        self.done = true;
    }
}

impl<DB: Database> Drop for Held<'_, DB> {
    fn drop(&mut self) {
        if let (false, MaybePoolConnection::PoolConnection(conn)) = (self.done, &mut self.conn) {
            conn.close_on_drop();
        }
    }
}

/// Rolls `tx` (a savepoint or a transaction) back after a failure inside
/// it, and tells whether the server had ended the transaction enclosing
/// it. Costs one statement more than sqlx's rollback for a savepoint (the
/// raw `ROLLBACK TO SAVEPOINT` that asks), and on SQLite for a transaction
/// (a `BEGIN` in case the server ended it, which fails harmlessly when it
/// did not).
pub(crate) async fn roll_back<DB: Backend>(
    mut tx: Transaction<'_, DB>,
) -> Result<Enclosing, sqlx::Error> {
    let depth = <DB::TransactionManager as TransactionManager>::get_transaction_depth(&tx);
    let mut enclosing = Enclosing::Intact;
    if depth >= 2 {
        let probe = format!("ROLLBACK TO SAVEPOINT {}", savepoint_name(depth - 1));
        match DB::execute_plain(&mut tx, &probe).await {
            Ok(()) => {}
            Err(gone) if DB::is_missing_savepoint(&gone) => {
                reopen::<DB>(&mut tx).await;
                // Every savepoint sqlx believes open, the caller's own
                // included, so that each of their rollbacks succeeds too.
                for level in 1..depth {
                    let savepoint = format!("SAVEPOINT {}", savepoint_name(level));
                    DB::execute_plain(&mut tx, &savepoint).await?;
                }
                enclosing = Enclosing::Ended(gone);
            }
            Err(other) => return Err(other),
        }
    } else if DB::ROLLBACK_NEEDS_TRANSACTION {
        reopen::<DB>(&mut tx).await;
    }
    tx.rollback().await?;
    Ok(enclosing)
}

/// sqlx's name for the savepoint it opened at depth `level` (1 for the
/// first savepoint inside a transaction).
fn savepoint_name(level: usize) -> String {
    format!("_sqlx_savepoint_{level}")
}

/// Runs [`Backend::REOPEN`] until a statement fails (a transaction is
/// still open, or the connection is gone: the statement after this one
/// reports that).
async fn reopen<DB: Backend>(conn: &mut DB::Connection) {
    for statement in DB::REOPEN {
        if DB::execute_plain(conn, statement).await.is_err() {
            break;
        }
    }
}

/// The error for a failure whose savepoint rollback found `enclosing`:
/// `failure` as it is when the enclosing transaction is intact; when the
/// server ended it, [`Error::Retryable`] for a transient conflict and
/// [`Error::TransactionRolledBack`] for anything else (with the server's
/// answer to the rollback as the source when `failure` holds no database
/// error).
pub(crate) fn ended<DB: Backend>(failure: Error, enclosing: Enclosing) -> Error {
    let Enclosing::Ended(evidence) = enclosing else {
        return failure;
    };
    match failure {
        Error::Retryable(conflict) => Error::Retryable(conflict),
        Error::Database(error) if DB::error_kind(&error) == ErrorKind::Transient => {
            Error::Retryable(error)
        }
        Error::Database(error) => Error::TransactionRolledBack(error),
        _ => Error::TransactionRolledBack(evidence),
    }
}

/// [`roll_back`], then [`ended`] on `failure`; a failed rollback is
/// returned instead (the connection is then broken or out of step: its
/// error says more than `failure`).
pub(crate) async fn fail<DB: Backend>(tx: Transaction<'_, DB>, failure: Error) -> Error {
    match roll_back(tx).await {
        Ok(enclosing) => ended::<DB>(failure, enclosing),
        Err(rollback) => db_error::<DB>(rollback),
    }
}
