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

/// What kind of value a row key is. Each family has a statement text of
/// its own in every dialect, so a driver that caches prepared statements
/// by their text (sqlx does, per connection) never sends a key of one
/// family to a statement prepared for another, and the comparison with
/// the key column is chosen for the family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// Integers (`i16`, `i32`, `i64`): bound as one 64-bit integer type,
    /// so every integer width shares one statement.
    Integer,
    /// Text (`String`, `&str`).
    Text,
    /// UUIDs (bound as PostgreSQL's `uuid`, and as 16 bytes on MySQL and
    /// SQLite).
    Uuid,
}

impl KeyFamily {
    /// Every family, in the order of [`PerFamily`]'s array.
    pub const ALL: [KeyFamily; 3] = [KeyFamily::Integer, KeyFamily::Text, KeyFamily::Uuid];

    /// The family's position in [`KeyFamily::ALL`].
    pub const fn index(self) -> usize {
        match self {
            KeyFamily::Integer => 0,
            KeyFamily::Text => 1,
            KeyFamily::Uuid => 2,
        }
    }

    /// The family's lower-case name (`"integer"`, `"text"`, `"uuid"`).
    pub const fn name(self) -> &'static str {
        match self {
            KeyFamily::Integer => "integer",
            KeyFamily::Text => "text",
            KeyFamily::Uuid => "uuid",
        }
    }
}

/// One value for each [`KeyFamily`], in the order of [`KeyFamily::ALL`].
#[derive(Debug, PartialEq, Eq)]
pub struct PerFamily<T>(pub [T; 3]);

impl<T> PerFamily<T> {
    /// The value of `family`.
    pub const fn get(&self, family: KeyFamily) -> &T {
        &self.0[family.index()]
    }
}

/// One statement whose only parameter is the row key, in one text per key
/// family.
#[derive(Debug, PartialEq, Eq)]
pub struct Keyed {
    /// The statement for each key family. On PostgreSQL the key is
    /// `$1`, cast to the family's type (`CAST($1 AS int8)`, `... AS text`,
    /// `... AS uuid`; arrays of them in a batch), and a text key is also
    /// compared under `COLLATE "C"`. On MySQL and SQLite each `?` binds
    /// the key: the row is selected by `key = ?` (which keeps the index)
    /// and by a byte-exact comparison of the two text forms beside it,
    /// which a string never passes for a number it merely converts to, nor
    /// a collation's equal for a different value.
    pub text: PerFamily<&'static str>,
    /// How many times the statement binds the key (every `?` on MySQL
    /// and SQLite; PostgreSQL's `$1` is bound once however often it
    /// appears).
    pub binds: usize,
    /// PostgreSQL: the text the statement returns in its first column
    /// (the first row's, in a batch), naming the state machine, the
    /// transition and the statement. A named prepared statement that a
    /// pooler sent to a server connection where the name means another
    /// statement returns another tag, or none, and idem refuses the
    /// answer. `None` on MySQL and SQLite.
    pub tag: Option<&'static str>,
}

impl Keyed {
    /// The statement for keys of `family`.
    pub const fn get(&self, family: KeyFamily) -> &'static str {
        self.text.0[family.index()]
    }
}

/// A batch statement of MySQL and SQLite, assembled per chunk of keys at
/// run time: `parts[0]`, the items of `lists[0]`, `parts[1]`, ..., the
/// items of the last list, the last part.
#[derive(Debug, PartialEq, Eq)]
pub struct BatchSql {
    /// The text around the lists: one more part than there are lists.
    pub parts: &'static [&'static str],
    /// The lists, in order.
    pub lists: &'static [List],
}

/// One list of a [`BatchSql`]: an item per key of the chunk, in the
/// chunk's order, joined by `separator`.
#[derive(Debug, PartialEq, Eq)]
pub struct List {
    /// One `?` (binding the key) and, where the key's position in the
    /// chunk (counted from 0) goes, a `#`: `" WHEN CAST(? AS BINARY) THEN
    /// #"`, `"(#, ?)"`.
    pub item: &'static str,
    /// Between two items.
    pub separator: &'static str,
}

/// How a dialect applies one transition to a batch of keys.
#[derive(Debug, PartialEq, Eq)]
pub enum ManySql {
    /// PostgreSQL: the whole batch in one statement, binding the keys as
    /// one array and returning `(tag, ord, before, applied, found)` per
    /// key in the order given (`tag` on the first row only; `ord` counts
    /// from 1; `found`: there is a row, so a NULL `before` is a NULL
    /// state).
    Whole(Keyed),
    /// MySQL and SQLite: chunks of keys. `read` returns `(position in the
    /// chunk, state as text)` for every row of the chunk that exists, its
    /// state NULL or not (MySQL: `SELECT CASE <key> WHEN ... END, state
    /// FROM ... WHERE key IN (...) AND <exact> IN (...) LOCK IN SHARE
    /// MODE`; SQLite: `WITH u(ord, k) AS (VALUES (0, ?), ...) SELECT
    /// u.ord, state FROM u JOIN ...`). `from[i]` is the compare-and-set
    /// `UPDATE` of a chunk of keys from exactly `sources[i]`.
    Chunked {
        /// The batch read, per key family.
        read: PerFamily<BatchSql>,
        /// The batch `UPDATE` per source, in source order, per key family.
        from: &'static [PerFamily<BatchSql>],
    },
}

/// The statements one transition compiles to in one dialect. All are
/// `'static` constants with the source and target states embedded as
/// literals and the row key as the only bind parameter.
///
/// Which statements a dialect uses:
///
/// | | PostgreSQL | MySQL / MariaDB | SQLite |
/// |---|---|---|---|
/// | [`apply`](Self::apply) | CTE: tag, state before, whether it applied (+ history) | guarded `UPDATE` (multi-source: reports the source through `LAST_INSERT_ID`) | guarded `UPDATE` |
/// | [`current`](Self::current) | one row: tag, state, whether the row exists | locking read | plain read |
/// | [`apply_from`](Self::apply_from) | — | — | one compare-and-set `UPDATE` per source |
/// | [`history`](Self::history) | — (inside `apply`) | one `INSERT` per source | one `INSERT` per source |
/// | [`many`](Self::many) | [`ManySql::Whole`]: the batch, keys as an array | [`ManySql::Chunked`] | [`ManySql::Chunked`] |
#[derive(Debug, PartialEq, Eq)]
pub struct DialectSql {
    /// The guarded `UPDATE` (on PostgreSQL, a data-modifying CTE around it
    /// that returns one row: `tag`, `before` (the state before, as text;
    /// NULL when there is no row or its state is NULL), `applied` and
    /// `found` (whether there is a row)).
    pub apply: Keyed,
    /// Reads the row's current state as text (a locking read on MySQL, so
    /// that a REPEATABLE READ transaction sees the latest committed row).
    /// On PostgreSQL it always returns one row: `tag`, the state, and
    /// whether the row exists.
    pub current: Keyed,
    /// SQLite only, for multi-source transitions: the compare-and-set
    /// `UPDATE` from exactly `sources[i]`, in source order.
    pub apply_from: &'static [Keyed],
    /// MySQL and SQLite, when the state machine has a history table: the
    /// `INSERT` of the history row for a change from `sources[i]`, in
    /// source order. It binds the key's text form (what PostgreSQL's
    /// `CAST(key AS TEXT)` gives: decimal digits, the string itself, a
    /// hyphenated UUID).
    pub history: &'static [&'static str],
    /// Batches.
    pub many: ManySql,
}
