use idem_core::Dialect;
use sqlx::Postgres;

use crate::{Backend, ErrorKind};

impl Backend for Postgres {
    const DIALECT: Dialect = Dialect::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        match db.code().as_deref() {
            // serialization_failure, deadlock_detected, lock_not_available
            Some("40001" | "40P01" | "55P03") => ErrorKind::Transient,
            Some("23505") => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }
}
