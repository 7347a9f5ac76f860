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
