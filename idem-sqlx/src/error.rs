use crate::insert::{BusinessKey, ViolatedKey};

/// Everything that can go wrong in idem-sqlx.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of idem's model (unknown stored state, missing table
    /// binding, invalid key, ...).
    #[error(transparent)]
    Core(#[from] idem_core::Error),

    /// A serialization failure, deadlock or busy database inside a
    /// transaction the caller owns: roll it back and run it again.
    #[error(
        "transient database conflict (serialization failure, deadlock or busy database): \
         roll the transaction back and run it again: {0}"
    )]
    Retryable(#[source] sqlx::Error),

    /// idem retried a transaction it owns on transient conflicts and gave up.
    #[error(
        "gave up after {attempts} attempts that each hit a transient database conflict; \
         the contention is too high or the retry policy too short: {source}"
    )]
    RetriesExhausted {
        /// How many times the transaction ran.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: sqlx::Error,
    },

    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),

    /// A table that an earlier version of idem installed on MySQL/MariaDB
    /// keeps identifiers (scopes, keys, consumers, event ids) in text
    /// columns, whose collations compare values that differ only in case,
    /// accents or trailing spaces as equal: one client could be answered
    /// with another's stored response. `install` refuses to go on; run
    /// `migration` once (it keeps every row; it rebuilds the table, so
    /// schedule it), then install again.
    #[error(
        "table `{table}` was installed by an earlier version of idem: its column(s) {columns} \
         compare identifiers that differ only in case, accents or trailing spaces as equal; \
         run this statement once (it keeps every row), then install again: {migration}"
    )]
    OutdatedSchema {
        /// The table.
        table: &'static str,
        /// The outdated columns and their current types.
        columns: String,
        /// The statement that converts them to `VARBINARY`.
        migration: String,
    },

    /// The database rolled back the caller's whole transaction while idem
    /// worked under a savepoint in it, for a reason that running it again
    /// would not cure: a trigger's `RAISE(ROLLBACK)`, a constraint declared
    /// `ON CONFLICT ROLLBACK` or a full disk on SQLite. (A deadlock or lock
    /// wait timeout that ends the transaction, as InnoDB's do, is
    /// [`Error::Retryable`] instead.) Every write the transaction made
    /// before is gone. idem left the connection in a transaction of its own
    /// (read-only on PostgreSQL and MySQL, so later writes fail) only so
    /// that the caller's `rollback()` succeeds: roll it back. The source is
    /// the error that ended the transaction, or, when a handler's own
    /// error hid it, the database's answer that idem's savepoint no longer
    /// exists.
    #[error(
        "the database rolled back the whole transaction (every earlier write in it is lost); \
         roll it back: {0}"
    )]
    TransactionRolledBack(#[source] sqlx::Error),

    /// A [`BusinessKey`] that cannot name a unique key: an empty table or
    /// column name, no columns, a column named twice.
    #[error("invalid business key: {0}")]
    InvalidBusinessKey(String),

    /// [`insert_once`](crate::insert_once): a unique constraint other than
    /// the business key the caller named rejected the row (another order
    /// already has this e-mail address, say). Nothing was written and the
    /// caller's transaction is still usable. A row that repeats the
    /// business key as well may be reported this way, when the database
    /// checks the other key first: see [`insert_once`](crate::insert_once).
    #[error(
        "the row violates {violated}, which is not the business key {key}: \
         nothing was written; {source}"
    )]
    OtherUniqueViolation {
        /// The business key the caller named.
        key: Box<BusinessKey>,
        /// The constraint that rejected the row.
        violated: Box<ViolatedKey>,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },

    /// [`insert_once`](crate::insert_once): a unique constraint rejected
    /// the row, but idem could not tell whether it is the business key the
    /// caller named (`reason` says why: an index on expressions, a table
    /// whose triggers write elsewhere on MariaDB, which does not name the
    /// table of a violated key, ...). It is never reported as
    /// [`Insert::AlreadyExists`](crate::Insert::AlreadyExists). Nothing was
    /// written and the caller's transaction is still usable.
    #[error(
        "a unique constraint ({violated}) rejected the row, and idem cannot tell whether it \
         is the business key {key}: {reason}; nothing was written: {source}"
    )]
    UnresolvedUniqueViolation {
        /// The business key the caller named.
        key: Box<BusinessKey>,
        /// What the database reported about the violated constraint.
        violated: Box<ViolatedKey>,
        /// Why idem could not attribute it.
        reason: String,
        /// The database's error.
        #[source]
        source: sqlx::Error,
    },

    /// The row kept moving into and out of the transition's source states
    /// between idem's statements (only possible when transitions form a
    /// cycle and other writers keep running them).
    #[error(
        "the row kept changing while `{transition}` was applied ({rounds} rounds); \
         apply it again later or in a transaction idem owns (`apply_with`)"
    )]
    Contended {
        /// The transition's name.
        transition: &'static str,
        /// How many rounds ran.
        rounds: u32,
    },

    /// PostgreSQL answered a statement of idem's with the result of
    /// another statement (another tag, or no row where one always comes
    /// back), or with an error that only a misrouted named prepared
    /// statement gives ("prepared statement ... does not exist" or
    /// "already exists", a bind message for another statement's
    /// parameters). A named prepared statement ran on a server connection
    /// where its name means another statement: a pooler in transaction
    /// mode hands each transaction (and each statement outside one) to any
    /// server connection. Nothing the answer says is used; a transaction
    /// idem owns is rolled back. Behind such a pooler, use
    /// [`Protocol::Simple`](crate::Protocol::Simple).
    #[error(
        "PostgreSQL answered idem's statement {expected} as another statement ({}): a named \
         prepared statement ran on a server connection where its name means another statement, \
         as happens behind a pooler in transaction mode (PgBouncer's pool_mode = transaction). \
         A transaction idem owned was rolled back, but a statement sent outside a transaction \
         (`apply` on a pool) may have run the other statement. Behind such a pooler call \
         `idem_sqlx::postgres::set_protocol(Protocol::Simple)` at start-up (or use session \
         pooling)",
        idem_core::Excerpt(.found)
    )]
    Misrouted {
        /// The statement idem sent (its tag).
        expected: &'static str,
        /// What came back instead: another tag, a driver error, "no row".
        found: String,
    },

    /// PostgreSQL cannot compare the key column of a state machine's table
    /// with a key of this Rust type (a `&str` key on a `BIGINT` column, an
    /// `i64` on a `TEXT` one): the key's family has no comparison with the
    /// column's type. Nothing was written.
    #[error(
        "`{transition}` was given a key of Rust type `{key_type}` ({} key), which PostgreSQL \
         cannot compare with the key column `{column}` of `{table}`: pass the key as the Rust type \
         of the column (an integer type for an integer column, `String` or `&str` for a text \
         column, `uuid::Uuid` for a uuid column): {source}",
        .family.name()
    )]
    KeyType {
        /// The transition.
        transition: &'static str,
        /// The table.
        table: &'static str,
        /// Its key column.
        column: &'static str,
        /// The key's Rust type (`std::any::type_name`).
        key_type: &'static str,
        /// The key's family.
        family: idem_core::KeyFamily,
        /// PostgreSQL's error (42883, an operator that does not exist).
        #[source]
        source: sqlx::Error,
    },

    /// A text value idem was to send to PostgreSQL holds a NUL character
    /// (U+0000), which PostgreSQL text cannot hold. Nothing was sent.
    #[error("{what} holds a NUL character (U+0000), which PostgreSQL text cannot hold: remove it")]
    Nul {
        /// What holds it: "the key", "the scope", ...
        what: &'static str,
    },
}

impl Error {
    /// The transient conflict inside [`Error::Retryable`], or the error
    /// unchanged: what an [`InboxHandler::transient`](crate::inbox::InboxHandler::transient)
    /// or [`TransitionHandler::transient`](crate::TransitionHandler::transient)
    /// whose error is an idem [`Error`] returns, so that a deadlock hit by
    /// an idem call inside the handler (say [`insert_once`](crate::insert_once))
    /// runs the owning transaction again.
    pub fn into_transient(self) -> Result<sqlx::Error, Self> {
        match self {
            Error::Retryable(conflict) => Ok(conflict),
            other => Err(other),
        }
    }
}

/// The error of an operation that runs a user handler (`apply_with`,
/// `Inbox::process`): either the handler's own error, returned as it was,
/// or idem's.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError<E> {
    /// The handler failed; everything it and idem wrote was rolled back.
    #[error("handler failed (its writes and the state change were rolled back): {0}")]
    Handler(#[source] E),
    /// idem or the database failed.
    #[error(transparent)]
    Idem(#[from] Error),
}

impl<E> HandlerError<E> {
    /// The transient conflict inside `HandlerError::Idem(Error::Retryable)`,
    /// or the error unchanged: what the `transient` hook of a handler that
    /// calls [`apply_with_on`](crate::TransitionExt::apply_with_on) returns,
    /// so that a deadlock there runs the owning transaction again.
    pub fn into_transient(self) -> Result<sqlx::Error, Self> {
        match self {
            HandlerError::Idem(error) => error.into_transient().map_err(HandlerError::Idem),
            other => Err(other),
        }
    }
}
