use idem_core::Dialect;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::MySql;

use crate::{Backend, ErrorKind};

impl Backend for MySql {
    const DIALECT: Dialect = Dialect::MySql;
    const BEGIN_WRITE: &'static str = "BEGIN";

    fn error_kind(error: &sqlx::Error) -> ErrorKind {
        let Some(db) = error.as_database_error() else {
            return ErrorKind::Other;
        };
        let Some(my) = db.try_downcast_ref::<MySqlDatabaseError>() else {
            return ErrorKind::Other;
        };
        match my.number() {
            // ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT, ER_CHECKREAD (snapshot
            // conflict under MariaDB's innodb_snapshot_isolation)
            1213 | 1205 | 1020 => ErrorKind::Transient,
            // ER_DUP_ENTRY, ER_DUP_ENTRY_WITH_KEY_NAME
            1062 | 1586 => ErrorKind::UniqueViolation,
            _ => ErrorKind::Other,
        }
    }
}
