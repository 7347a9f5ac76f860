use idem_core::Dialect;
use sqlx::Sqlite;

use crate::{Backend, ErrorKind};

impl Backend for Sqlite {
    const DIALECT: Dialect = Dialect::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        // sqlx reports SQLite's extended result code; the primary code is
        // its low byte.
        let code: i32 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
        match (code & 0xff, code) {
            // SQLITE_BUSY (incl. BUSY_SNAPSHOT), SQLITE_LOCKED
            (5 | 6, _) => ErrorKind::Transient,
            // SQLITE_CONSTRAINT_PRIMARYKEY, SQLITE_CONSTRAINT_UNIQUE
            (_, 1555 | 2067) => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }
}
