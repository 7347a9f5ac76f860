//! Tables an earlier version of idem installed on MySQL/MariaDB, whose
//! identifier columns were text: `CREATE TABLE IF NOT EXISTS` leaves them
//! as they are, so `install` looks at their column types and refuses to
//! go on with a column that is not `VARBINARY`, naming the `ALTER TABLE`
//! that fixes it ([`Error::OutdatedSchema`]).
//!
//! Why refuse rather than alter: converting a column rebuilds the table
//! (InnoDB copies it, blocking writes while it runs), which an operator
//! should schedule, not every instance of a service at start-up. Why not
//! just warn: a text column with MySQL's collations compares `payments`
//! and `payments ` (PAD SPACE, `utf8mb4_bin` included), or `acme` and
//! `ACME` (`_ci`), or `e` and `é` (`_ai`) as equal, so one client can be
//! answered with another's stored response.
// Only MySQL's stores read these; other builds compile them unused.
#![cfg_attr(not(feature = "mysql"), allow(dead_code))]

use crate::Error;

/// One of idem's tables and its identifier columns, each with the type it
/// has on MySQL/MariaDB (`VARBINARY`: bytes, compared byte for byte).
#[derive(Debug)]
pub(crate) struct Identifiers {
    /// The table (unqualified: the connection's current database).
    pub table: &'static str,
    /// `(column, its type and nullability)`, e.g. `("scope", "VARBINARY(512) NOT NULL")`.
    pub columns: &'static [(&'static str, &'static str)],
}

/// MySQL/MariaDB: the columns of table `?` (current database) named in the
/// comma-separated list `?` whose type is not `VARBINARY`, with their
/// current type, in table order. No row when the table is up to date.
pub(crate) const MYSQL_NOT_VARBINARY: &str = "\
SELECT CAST(COLUMN_NAME AS CHAR), CAST(COLUMN_TYPE AS CHAR) FROM information_schema.COLUMNS
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND FIND_IN_SET(COLUMN_NAME, ?) > 0
  AND DATA_TYPE <> 'varbinary'
ORDER BY ORDINAL_POSITION";

impl Identifiers {
    /// The column names, comma-separated (the second parameter of
    /// [`MYSQL_NOT_VARBINARY`]).
    pub(crate) fn names(&self) -> String {
        let names: Vec<&str> = self.columns.iter().map(|(name, _)| *name).collect();
        names.join(",")
    }

    /// `Ok` when no column is outdated; else the error naming the columns
    /// `outdated` (name, current type, as [`MYSQL_NOT_VARBINARY`] returns
    /// them) and the statement that converts them.
    pub(crate) fn check(&self, outdated: &[(String, String)]) -> Result<(), Error> {
        if outdated.is_empty() {
            return Ok(());
        }
        let modify: Vec<String> = self
            .columns
            .iter()
            .filter(|(name, _)| outdated.iter().any(|(old, _)| old == name))
            .map(|(name, ty)| format!("MODIFY {name} {ty}"))
            .collect();
        let columns: Vec<String> = outdated
            .iter()
            .map(|(name, ty)| format!("`{name}` ({ty})"))
            .collect();
        Err(Error::OutdatedSchema {
            table: self.table,
            columns: columns.join(", "),
            migration: format!("ALTER TABLE {} {}", self.table, modify.join(", ")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Identifiers = Identifiers {
        table: "t",
        columns: &[
            ("a", "VARBINARY(8) NOT NULL"),
            ("b", "VARBINARY(4) NOT NULL"),
        ],
    };

    #[test]
    fn an_up_to_date_table_passes() {
        assert!(T.check(&[]).is_ok());
        assert_eq!(T.names(), "a,b");
    }

    #[test]
    fn the_error_names_each_outdated_column_and_the_statement_that_converts_it() {
        let outdated = [("b".to_owned(), "varchar(4)".to_owned())];
        let error = T.check(&outdated).unwrap_err();
        let Error::OutdatedSchema {
            table,
            columns,
            migration,
        } = &error
        else {
            panic!("{error:?}")
        };
        assert_eq!((*table, columns.as_str()), ("t", "`b` (varchar(4))"));
        assert_eq!(migration, "ALTER TABLE t MODIFY b VARBINARY(4) NOT NULL");
        assert!(error.to_string().contains(migration.as_str()), "{error}");
    }
}
