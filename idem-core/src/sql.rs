/// A SQL dialect idem compiles transitions for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// PostgreSQL 13+ (and the engines that speak its protocol).
    Postgres,
    /// MySQL 8 and MariaDB 10.6+.
    MySql,
    /// SQLite 3.35+.
    Sqlite,
}

impl Dialect {
    /// Every dialect.
    pub const ALL: [Dialect; 3] = [Dialect::Postgres, Dialect::MySql, Dialect::Sqlite];

    /// The dialect's lower-case name (`"postgres"`, `"mysql"`, `"sqlite"`).
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }
}

/// The SQL of one transition for every dialect, generated at compile time.
#[derive(Debug, PartialEq, Eq)]
pub struct TransitionSql {
    /// PostgreSQL.
    pub postgres: DialectSql,
    /// MySQL / MariaDB.
    pub mysql: DialectSql,
    /// SQLite.
    pub sqlite: DialectSql,
}

impl TransitionSql {
    /// The statements of one dialect.
    pub const fn get(&self, dialect: Dialect) -> &DialectSql {
        match dialect {
            Dialect::Postgres => &self.postgres,
            Dialect::MySql => &self.mysql,
            Dialect::Sqlite => &self.sqlite,
        }
    }
}

/// The statements one transition compiles to in one dialect. All are
/// `'static` constants with the source and target states embedded as
/// literals and the row key as the single bind parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct DialectSql {
    /// The guarded `UPDATE` (on PostgreSQL, a data-modifying CTE around it).
    pub apply: &'static str,
    /// Reads the row's current state (a locking read on MySQL, so that a
    /// REPEATABLE READ transaction sees the latest committed row).
    pub current: &'static str,
}
