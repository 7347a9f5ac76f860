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
