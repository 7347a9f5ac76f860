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
///
/// Which statements a dialect uses:
///
/// | | PostgreSQL | MySQL / MariaDB | SQLite |
/// |---|---|---|---|
/// | [`apply`](Self::apply) | CTE: state before + whether it applied (+ history) | guarded `UPDATE` (multi-source: reports the source through `LAST_INSERT_ID`) | guarded `UPDATE` |
/// | [`current`](Self::current) | plain read | locking read | plain read |
/// | [`apply_from`](Self::apply_from) | — | — | one compare-and-set `UPDATE` per source |
/// | [`history`](Self::history) | — (inside `apply`) | one `INSERT` per source | one `INSERT` per source |
/// | [`many`](Self::many) | whole batch, keys as an array | batch-read fragments | batch-read fragments |
/// | [`many_from`](Self::many_from) | — | batch `UPDATE` head per source | batch `UPDATE` head per source |
#[derive(Debug, PartialEq, Eq)]
pub struct DialectSql {
    /// The guarded `UPDATE` (on PostgreSQL, a data-modifying CTE around it
    /// that returns one row: `before` (the state before, as text; NULL when
    /// there is no row or its state is NULL), `applied` and `found` (whether
    /// there is a row)).
    pub apply: &'static str,
    /// Reads the row's current state as text (a locking read on MySQL, so
    /// that a REPEATABLE READ transaction sees the latest committed row).
    pub current: &'static str,
    /// SQLite only, for multi-source transitions: the compare-and-set
    /// `UPDATE` from exactly `sources[i]`, in source order.
    pub apply_from: &'static [&'static str],
    /// MySQL and SQLite, when the state machine has a history table: the
    /// `INSERT` of the history row for a change from `sources[i]`, in
    /// source order. It binds the key's text form (what PostgreSQL's
    /// `CAST(key AS TEXT)` gives: decimal digits, the string itself, a
    /// hyphenated UUID).
    pub history: &'static [&'static str],
    /// Batches. PostgreSQL: the whole batch in one statement, binding the
    /// keys as one array and returning `(ord, before, applied, found)` per
    /// key (`ord` counts from 1; `found`: there is a row, so a NULL
    /// `before` is a NULL state). MySQL and SQLite: three fragments of the
    /// batch read of one chunk of keys, assembled at run time around the
    /// placeholders: `[head, middle, tail]` (MySQL: `SELECT CASE key WHEN ?
    /// THEN 0 ... END, state FROM ... WHERE key IN (?, ...) LOCK IN SHARE
    /// MODE`; SQLite: `WITH u(ord, k) AS (VALUES (0, ?), ...) SELECT
    /// u.ord, state FROM u JOIN ...`, with an empty tail). Every row it
    /// returns is a row that exists, its state NULL or not.
    pub many: &'static [&'static str],
    /// MySQL and SQLite: the head of the batch compare-and-set `UPDATE`
    /// from exactly `sources[i]`, ending in `IN (`; the placeholders and
    /// `)` are appended at run time.
    pub many_from: &'static [&'static str],
}
