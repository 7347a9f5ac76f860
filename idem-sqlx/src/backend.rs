use futures::future::BoxFuture;
use idem_core::{Dialect, DialectSql, Outcome, State, Transition};

use crate::{Error, Key, KeyValue};

/// What a database error means to idem's retry and insert logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A serialization failure, deadlock, lock timeout or busy database:
    /// running the whole transaction again may succeed.
    Transient,
    /// A unique or primary-key constraint rejected the write.
    UniqueViolation,
    /// Anything else.
    Other,
}

/// A database idem runs on: implemented for `sqlx::Postgres`,
/// `sqlx::MySql` and `sqlx::Sqlite`. Everything that differs between them
/// lives behind this trait, one file per backend.
pub trait Backend: sqlx::Database {
    /// The SQL dialect of the compiled statements to send.
    const DIALECT: Dialect;

    /// The statement that opens a transaction idem owns and will write in
    /// (`BEGIN IMMEDIATE` on SQLite, so the write lock is taken up front and
    /// a busy database waits on the busy timeout instead of failing).
    const BEGIN_WRITE: &'static str;

    /// Classifies a driver error.
    fn error_kind(error: &sqlx::Error) -> ErrorKind;

    /// Whether `error` answers `ROLLBACK TO SAVEPOINT` with "no such
    /// savepoint" or "no transaction in progress": the server ended the
    /// transaction the savepoint was in (a deadlock or lock wait timeout
    /// on InnoDB, `RAISE(ROLLBACK)` or a full disk on SQLite). Used by
    /// idem's savepoint handling.
    #[doc(hidden)]
    fn is_missing_savepoint(error: &sqlx::Error) -> bool;

    /// The statements that open a transaction again after the server ended
    /// the one sqlx believes open, so that sqlx's own rollbacks succeed and
    /// the connection goes back to its pool in step with the server. Run in
    /// order; the first that fails stops the rest (MySQL refuses
    /// `SET TRANSACTION` while a transaction is open, and `START
    /// TRANSACTION` there would commit it). Read-only where the backend has
    /// read-only transactions, so that a write the caller still attempts in
    /// the dead transaction fails instead of committing on its own.
    #[doc(hidden)]
    const REOPEN: &'static [&'static str];

    /// Whether `ROLLBACK` fails when no transaction is open (SQLite): then
    /// idem opens one ([`REOPEN`](Self::REOPEN)) before it rolls back a
    /// transaction it owns, in case the server ended that transaction.
    #[doc(hidden)]
    const ROLLBACK_NEEDS_TRANSACTION: bool;

    /// Adds a key to a statement's arguments with its family's type
    /// (`i64`, `&str`, `uuid::Uuid`).
    #[doc(hidden)]
    fn bind_key<'q>(
        args: &mut Self::Arguments<'q>,
        value: KeyValue<'q>,
    ) -> Result<(), sqlx::error::BoxDynError>;

    /// Runs a script without parameters: one statement, or several
    /// separated by `;` (schema installation).
    #[doc(hidden)]
    fn execute_plain<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
    ) -> BoxFuture<'c, Result<(), sqlx::Error>>;

    /// The number of rows a statement matched.
    #[doc(hidden)]
    fn rows_affected(done: &Self::QueryResult) -> u64;

    /// Runs one transition's compiled statements on `conn` and classifies
    /// what happened (history rows included; the caller makes them atomic
    /// when they are separate statements). Used by
    /// [`TransitionExt`](crate::TransitionExt).
    #[doc(hidden)]
    fn apply_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut Self::Connection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        key: &'c K,
    ) -> BoxFuture<'c, Result<Outcome<S>, Error>>;

    /// Runs one transition on a batch of keys, one outcome per key in the
    /// order given. Used by [`TransitionExt::apply_many`](crate::TransitionExt::apply_many).
    #[doc(hidden)]
    fn apply_many_on<'c, S: State, K: Key<Self>>(
        conn: &'c mut Self::Connection,
        transition: &'static Transition<S>,
        sql: &'static DialectSql,
        keys: &'c [K],
    ) -> BoxFuture<'c, Result<Vec<Outcome<S>>, Error>>;
}

/// Maps a driver error: transient conflicts become [`Error::Retryable`].
pub(crate) fn db_error<B: Backend>(error: sqlx::Error) -> Error {
    match B::error_kind(&error) {
        ErrorKind::Transient => Error::Retryable(error),
        ErrorKind::UniqueViolation | ErrorKind::Other => Error::Database(error),
    }
}

/// The state a read of the row found: `row` is `None` when there is no
/// row and `Some(None)` when its state is NULL ([`idem_core::Error::NullState`]).
pub(crate) fn state_of<S: State>(
    transition: &'static Transition<S>,
    row: Option<Option<String>>,
) -> Result<Option<S>, Error> {
    Ok(transition.state_of(row.as_ref().map(Option::as_deref))?)
}

/// How many times one call re-runs its update after the row moved into a
/// source state between two of its statements before it gives up.
pub(crate) const MAX_ROUNDS: u32 = 16;

/// The error when the row kept moving between idem's statements.
pub(crate) fn contended<S: State>(transition: &'static Transition<S>) -> Error {
    Error::Contended {
        transition: transition.name(),
        rounds: MAX_ROUNDS,
    }
}
