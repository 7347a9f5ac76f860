use idem_core::Dialect;

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
}
