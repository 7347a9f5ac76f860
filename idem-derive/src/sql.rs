//! The SQL every transition compiles to, for every dialect, as tokens of an
//! `idem_core::TransitionSql` constant (`idem_core` is the alias the
//! expansion brings into scope for the crate path in use).
//!
//! Identifiers are quoted per dialect (they were validated as plain SQL
//! identifiers before), states are embedded as string literals (validated
//! to mean the same text in every dialect and server mode), and the
//! row key is the only bind parameter. Every statement is generated once
//! per key family (`idem_core::KeyFamily`): on PostgreSQL the key is cast
//! to the family's type, so each family has its own text (sqlx caches
//! prepared statements by their text); on MySQL and SQLite the row is
//! selected by the key and by a byte-exact comparison of the two text
//! forms, chosen for the family. What each statement is for is documented
//! on `idem_core::DialectSql`; the runtime that sends them lives in
//! idem-sqlx.

use proc_macro2::TokenStream;
use quote::quote;

/// Where the state machine is stored (identifiers already validated).
pub(crate) struct TableSpec<'a> {
    /// The enum's name, for the statements' tags.
    pub machine: &'a str,
    pub name: &'a str,
    pub column: &'a str,
    pub key: &'a str,
    pub history: Option<&'a str>,
    /// The stored value of every state, in declaration order.
    pub states: &'a [String],
}

/// One transition, with states as their stored values.
pub(crate) struct TransitionSpec<'a> {
    pub name: &'a str,
    pub sources: &'a [String],
    pub target: &'a str,
    /// Extra `column = <SQL expression>` assignments made by the same UPDATE.
    pub assignments: &'a [(String, String)],
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    fn quote_ident(self, ident: &str) -> String {
        let q = match self {
            Dialect::MySql => '`',
            Dialect::Postgres | Dialect::Sqlite => '"',
        };
        ident
            .split('.')
            .map(|part| format!("{q}{part}{q}"))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The name of the text type in `CAST(x AS ...)`.
    fn text(self) -> &'static str {
        match self {
            Dialect::MySql => "CHAR",
            Dialect::Postgres | Dialect::Sqlite => "TEXT",
        }
    }
}

/// The kind of value a row key is, in `idem_core::KeyFamily`'s order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    Integer,
    Text,
    Uuid,
}

const FAMILIES: [Family; 3] = [Family::Integer, Family::Text, Family::Uuid];

impl Family {
    /// PostgreSQL's type for the key.
    fn postgres(self) -> &'static str {
        match self {
            Family::Integer => "int8",
            Family::Text => "text",
            Family::Uuid => "uuid",
        }
    }
}

/// A string literal: `'...'` with each `'` doubled, which every dialect
/// reads the same in every server mode, as long as the value holds no
/// backslash (an escape on MySQL without NO_BACKSLASH_ESCAPES and on
/// PostgreSQL with standard_conforming_strings off) and no control
/// character: `valid.rs` refuses both in stored values.
fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The pieces every statement of one transition in one dialect, for one
/// key family, is built of.
struct Parts {
    d: Dialect,
    family: Family,
    tbl: String,
    col: String,
    key: String,
    /// `"paid_at" = now(), "status" = 'paid'`: the extra assignments, then
    /// the state column's (see [`Parts::set`]).
    set: String,
    /// The extra assignments alone: `"paid_at" = now()`.
    extras: Vec<String>,
    /// `'draft', 'issued'`
    sources: String,
    target: String,
    name: String,
    history: Option<String>,
    /// Every known state: `'draft', 'issued', ...`
    states: String,
    /// `Invoice.pay:` and a hash of everything the statements are made
    /// of, the start of every tag (see [`Parts::tag`]).
    tag: String,
}

impl Parts {
    fn new(d: Dialect, family: Family, table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> Parts {
        let col = d.quote_ident(table.column);
        let target = literal(t.target);
        let extras: Vec<String> = t
            .assignments
            .iter()
            .map(|(column, expr)| format!("{} = {expr}", d.quote_ident(column)))
            .collect();
        let set = Parts::set(&extras, &format!("{col} = {target}"));
        let sources = t
            .sources
            .iter()
            .map(|s| literal(s))
            .collect::<Vec<_>>()
            .join(", ");
        let made_of = format!(
            "{}|{}|{}|{:?}|{sources}|{set}|{:?}",
            table.name, table.column, table.key, table.history, table.states
        );
        Parts {
            d,
            family,
            tbl: d.quote_ident(table.name),
            key: d.quote_ident(table.key),
            col,
            set,
            extras,
            sources,
            target,
            name: literal(t.name),
            history: table.history.map(|h| d.quote_ident(h)),
            states: table
                .states
                .iter()
                .map(|s| literal(s))
                .collect::<Vec<_>>()
                .join(", "),
            tag: format!("{}.{}:{:08x}", table.machine, t.name, fnv1a(&made_of)),
        }
    }

    /// The SET list: the extra assignments first, the state column's last.
    /// MySQL and MariaDB evaluate a single-table `SET` from left to right,
    /// each right-hand side seeing the assignments before it, where
    /// PostgreSQL and SQLite (and standard SQL) read every right-hand side
    /// from the row as it was. With the state column assigned last, an
    /// extra assignment that reads it (`closed_from = status`) gets the
    /// state before the transition on every backend. The derive refuses an
    /// extra assignment that reads a column another one writes (`valid.rs`),
    /// the one case no order makes portable.
    fn set(extras: &[String], state: &str) -> String {
        let mut set = extras.to_vec();
        set.push(state.to_owned());
        set.join(", ")
    }

    /// The tag a PostgreSQL statement returns first: `idem:` and the
    /// state machine, the transition, a hash of the table, column, key,
    /// history, states and assignments it was made from, and which of
    /// the transition's statements it is (`apply`, `current`, `many`).
    /// Two statements with the same tag are the same statement.
    fn tag(&self, kind: &str) -> String {
        format!("idem:{}:{kind}", self.tag)
    }

    /// The key as the statement binds it, on PostgreSQL cast to the
    /// family's type: `CAST($1 AS int8)`.
    fn param(&self) -> String {
        match self.d {
            Dialect::Postgres => format!("CAST($1 AS {})", self.family.postgres()),
            Dialect::MySql | Dialect::Sqlite => "?".to_owned(),
        }
    }

    /// MySQL and SQLite: `column`'s value as bytes to compare exactly
    /// with [`Parts::exact_param`]. MySQL converts a text value to utf8mb4
    /// first (a latin1 column's `á` is not the key's UTF-8 bytes), but
    /// keeps a UUID column's bytes as they are (16 bytes are no utf8mb4
    /// text); SQLite's text form of a number is its canonical decimal, of
    /// a blob its bytes.
    fn exact(&self, column: &str) -> String {
        match (self.d, self.family) {
            (Dialect::MySql, Family::Uuid) => format!("CAST({column} AS BINARY)"),
            (Dialect::MySql, _) => format!("CAST(CONVERT({column} USING utf8mb4) AS BINARY)"),
            // A CAST keeps the column's collation on SQLite (NOCASE, RTRIM):
            // BINARY compares the bytes.
            (Dialect::Sqlite, _) => format!("CAST({column} AS TEXT) COLLATE BINARY"),
            // A text column's nondeterministic collation (an ICU one
            // ignoring case or accents) would call `ACME` and `acme` equal:
            // "C" compares the bytes.
            (Dialect::Postgres, _) => format!("CAST({column} AS text) COLLATE \"C\""),
        }
    }

    /// MySQL and SQLite: the key as bytes (`CAST(7 AS BINARY)` is `'7'`).
    fn exact_param(&self) -> &'static str {
        match self.d {
            Dialect::MySql => "CAST(? AS BINARY)",
            Dialect::Sqlite | Dialect::Postgres => "CAST(? AS TEXT)",
        }
    }

    /// The condition that selects the row of the key in `column`. On
    /// PostgreSQL, `column = CAST($1 AS <the family's type>)`: a key of a
    /// family the column cannot be compared with is PostgreSQL's type
    /// error, not a conversion; a text key is also compared byte for byte
    /// (a filter on the rows the index found), as a column may have a
    /// nondeterministic collation. On MySQL and SQLite, `column = ?` (which
    /// keeps the index) and the exact comparison of the text forms: MySQL
    /// finds row 7 for `'7abc'`, and a case- or pad-insensitive
    /// collation finds `ACME` for `acme `; SQLite finds INTEGER 7 for
    /// `'07'`, `' 7'` and `'7.0'`. Binds the key twice there.
    fn key_is(&self, column: &str) -> String {
        match self.d {
            Dialect::Postgres if self.family == Family::Text => format!(
                "{column} = {param} AND {} = {param}",
                self.exact(column),
                param = self.param()
            ),
            Dialect::Postgres => format!("{column} = {}", self.param()),
            Dialect::MySql | Dialect::Sqlite => format!(
                "{column} = ? AND {} = {}",
                self.exact(column),
                self.exact_param()
            ),
        }
    }

    fn history_columns(&self) -> String {
        let q = |c| self.d.quote_ident(c);
        format!(
            "({}, {}, {}, {})",
            q("entity_key"),
            q("transition"),
            q("from_state"),
            q("to_state")
        )
    }

    /// PostgreSQL: one statement reports the state before the update (the
    /// statement's snapshot) and whether the update applied. The update
    /// compares and sets the exact state seen, so `before` is the real
    /// `from` even when READ COMMITTED re-evaluates the guard on a row a
    /// concurrent transaction changed; the history row is inserted by the
    /// same statement.
    fn postgres_apply(&self) -> String {
        let Parts {
            tbl,
            col,
            key,
            set,
            sources,
            ..
        } = self;
        let returning = if self.history.is_some() {
            format!("{key} AS k")
        } else {
            "1".to_owned()
        };
        let key_is = self.key_is(key);
        let mut sql = format!(
            "WITH prev AS (SELECT {col} AS s FROM {tbl} WHERE {key_is}), \
             upd AS (UPDATE {tbl} SET {set} WHERE {key_is} AND {col} IN ({sources}) \
             AND {col} = (SELECT s FROM prev) RETURNING {returning})"
        );
        if let Some(history) = &self.history {
            sql.push_str(&format!(
                ", hist AS (INSERT INTO {history} {} SELECT CAST(k AS TEXT), {}, \
                 CAST((SELECT s FROM prev) AS TEXT), {} FROM upd)",
                self.history_columns(),
                self.name,
                self.target
            ));
        }
        sql.push_str(&format!(
            " SELECT {} AS tag, CAST((SELECT s FROM prev) AS TEXT) AS before, \
             EXISTS (SELECT 1 FROM upd) AS applied, EXISTS (SELECT 1 FROM prev) AS found",
            literal(&self.tag("apply"))
        ));
        sql
    }

    /// PostgreSQL: the row's state, in exactly one row whether or not the
    /// row exists, so a statement that answers with no row at all is not
    /// this one.
    fn postgres_current(&self) -> String {
        let Parts { tbl, col, key, .. } = self;
        format!(
            "SELECT {} AS tag, CAST(t.{col} AS TEXT) AS state, t.{key} IS NOT NULL AS found \
             FROM (SELECT 1) AS one LEFT JOIN {tbl} AS t ON {}",
            literal(&self.tag("current")),
            self.key_is(&format!("t.{key}"))
        )
    }

    /// PostgreSQL: the batch. `u` numbers the keys (and marks each key's
    /// first occurrence with a window function, and the result joins `upd`,
    /// so the statement stays linear in the batch size); the update compares
    /// and sets the state each row had in the statement's snapshot; a key
    /// given twice is applied for its first occurrence only. A row holding a
    /// value that is no state, or a NULL state, stops the whole update: the
    /// batch fails with `UnknownState` or `NullState` and, being one
    /// autocommitted statement, must not have moved the other rows. `found`
    /// tells a row whose state is NULL from no row (both have a NULL
    /// `before`). The first row carries the tag.
    fn postgres_many(&self) -> String {
        let Parts {
            tbl,
            col,
            key,
            set,
            sources,
            states,
            ..
        } = self;
        let keys = format!("CAST($1 AS {}[])", self.family.postgres());
        // A text key is compared byte for byte too, in the read and in the
        // joins of the answer (see `key_is`).
        let (exact_read, exact_prev, exact_upd) = if self.family == Family::Text {
            (
                format!(" AND {} = ANY({keys})", self.exact(key)),
                format!(" AND {} = u.k", self.exact("prev.k")),
                format!(" AND {} = u.k", self.exact("upd.k")),
            )
        } else {
            Default::default()
        };
        let mut sql = format!(
            "WITH u AS (SELECT k, ord, min(ord) OVER (PARTITION BY k) AS first \
             FROM unnest({keys}) WITH ORDINALITY AS x(k, ord)), \
             prev AS (SELECT {key} AS k, {col} AS s FROM {tbl} WHERE {key} = ANY({keys}){exact_read}), \
             upd AS (UPDATE {tbl} SET {set} FROM prev WHERE {tbl}.{key} = prev.k \
             AND {tbl}.{col} = prev.s AND prev.s IN ({sources}) \
             AND NOT EXISTS (SELECT 1 FROM prev AS p \
             WHERE p.s IS NULL OR CAST(p.s AS TEXT) NOT IN ({states})) \
             RETURNING prev.k, prev.s)"
        );
        if let Some(history) = &self.history {
            sql.push_str(&format!(
                ", hist AS (INSERT INTO {history} {} SELECT CAST(k AS TEXT), {}, \
                 CAST(s AS TEXT), {} FROM upd)",
                self.history_columns(),
                self.name,
                self.target
            ));
        }
        sql.push_str(&format!(
            " SELECT CASE WHEN u.ord = 1 THEN {} END AS tag, u.ord, \
             CAST(prev.s AS TEXT) AS before, \
             (upd.k IS NOT NULL AND u.ord = u.first) AS applied, prev.k IS NOT NULL AS found \
             FROM u LEFT JOIN prev ON prev.k = u.k{exact_prev} \
             LEFT JOIN upd ON upd.k = u.k{exact_upd} ORDER BY u.ord",
            literal(&self.tag("many"))
        ));
        sql
    }

    /// MySQL / MariaDB: the guarded update. A multi-source transition hands
    /// the 1-based position of the state it moved from to the client in
    /// the OK packet's last-insert-id (`LAST_INSERT_ID(expr)` evaluated on
    /// the old value, inside the assignment of the state column itself,
    /// which comes last: no assignment before it writes that column).
    fn mysql_apply(&self, multi: bool) -> String {
        let Parts {
            tbl,
            col,
            key,
            set,
            sources,
            target,
            extras,
            ..
        } = self;
        let set = if multi {
            Parts::set(
                extras,
                &format!(
                    "{col} = IF(LAST_INSERT_ID(FIELD({col}, {sources})) > 0, {target}, {target})"
                ),
            )
        } else {
            set.clone()
        };
        format!(
            "UPDATE {tbl} SET {set} WHERE {} AND {col} IN ({sources})",
            self.key_is(key)
        )
    }

    fn sqlite_apply(&self) -> String {
        let Parts {
            tbl,
            col,
            key,
            set,
            sources,
            ..
        } = self;
        format!(
            "UPDATE {tbl} SET {set} WHERE {} AND {col} IN ({sources})",
            self.key_is(key)
        )
    }

    /// MySQL and SQLite: the row's state (a locking read on MySQL).
    fn current(&self) -> String {
        let Parts {
            d, tbl, col, key, ..
        } = self;
        let lock = match d {
            Dialect::MySql => " LOCK IN SHARE MODE",
            Dialect::Postgres | Dialect::Sqlite => "",
        };
        format!(
            "SELECT CAST({col} AS {}) FROM {tbl} WHERE {}{lock}",
            d.text(),
            self.key_is(key)
        )
    }

    fn apply_from(&self, source: &str) -> String {
        let Parts {
            tbl, col, key, set, ..
        } = self;
        format!(
            "UPDATE {tbl} SET {set} WHERE {} AND {col} = {}",
            self.key_is(key),
            literal(source)
        )
    }

    fn history_insert(&self, history: &str, source: &str) -> String {
        format!(
            "INSERT INTO {history} {} VALUES (?, {}, {}, {})",
            self.history_columns(),
            self.name,
            literal(source),
            self.target
        )
    }

    /// The batch read of one chunk, around the lists the runtime fills.
    /// MySQL: `CASE <exact key> WHEN CAST(? AS BINARY) THEN 0 ... END`
    /// numbers the rows of a locking `key IN (...)` read, which the exact
    /// comparison narrows to the keys themselves. SQLite: the keys are
    /// numbered in a `VALUES` list (`(0, ?), (1, ?), ...`) joined to the
    /// table by its key and the exact comparison, one index probe per key,
    /// so the read stays linear in the batch size.
    fn many_read(&self) -> Batch {
        let Parts {
            d, tbl, col, key, ..
        } = self;
        match d {
            Dialect::Sqlite => Batch {
                parts: vec![
                    "WITH u(ord, k) AS (VALUES ".to_owned(),
                    format!(
                        ") SELECT u.ord, CAST(t.{col} AS TEXT) FROM u JOIN {tbl} AS t \
                         ON t.{key} = u.k AND {} = CAST(u.k AS TEXT)",
                        self.exact(&format!("t.{key}"))
                    ),
                ],
                lists: vec![("(#, ?)", ", ")],
            },
            Dialect::MySql | Dialect::Postgres => Batch {
                parts: vec![
                    format!("SELECT CASE {}", self.exact(key)),
                    format!(
                        " END, CAST({col} AS {}) FROM {tbl} WHERE {key} IN (",
                        d.text()
                    ),
                    format!(") AND {} IN (", self.exact(key)),
                    ") LOCK IN SHARE MODE".to_owned(),
                ],
                lists: vec![
                    (" WHEN CAST(? AS BINARY) THEN #", ""),
                    ("?", ", "),
                    ("CAST(? AS BINARY)", ", "),
                ],
            },
        }
    }

    /// The compare-and-set `UPDATE` of one chunk of keys from exactly
    /// `source`: selected by the key and the exact comparison.
    fn many_from(&self, source: &str) -> Batch {
        let Parts {
            tbl, col, key, set, ..
        } = self;
        Batch {
            parts: vec![
                format!(
                    "UPDATE {tbl} SET {set} WHERE {col} = {} AND {key} IN (",
                    literal(source)
                ),
                format!(") AND {} IN (", self.exact(key)),
                ")".to_owned(),
            ],
            lists: vec![("?", ", "), (self.exact_param(), ", ")],
        }
    }
}

/// FNV-1a, 32 bits: a short fingerprint of what a statement is made of.
fn fnv1a(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |hash: u32, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// A batch statement: the parts around the lists, and each list's item
/// and separator (`idem_core::BatchSql`).
#[derive(Debug, PartialEq, Eq)]
struct Batch {
    parts: Vec<String>,
    lists: Vec<(&'static str, &'static str)>,
}

/// How one dialect applies a batch (`idem_core::ManySql`).
#[derive(Debug, PartialEq, Eq)]
enum Many {
    Whole(String),
    Chunked { read: Batch, from: Vec<Batch> },
}

/// The statements of one dialect for one key family, as plain strings
/// (the token emission is separate so tests can look at the text).
struct Statements {
    apply: String,
    current: String,
    apply_from: Vec<String>,
    history: Vec<String>,
    many: Many,
}

fn statements(d: Dialect, f: Family, table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> Statements {
    let p = Parts::new(d, f, table, t);
    let multi = t.sources.len() > 1;
    let per_source = |g: &dyn Fn(&str) -> String| t.sources.iter().map(|s| g(s)).collect();
    match d {
        Dialect::Postgres => Statements {
            apply: p.postgres_apply(),
            current: p.postgres_current(),
            apply_from: Vec::new(),
            history: Vec::new(),
            many: Many::Whole(p.postgres_many()),
        },
        Dialect::MySql | Dialect::Sqlite => Statements {
            apply: if d == Dialect::MySql {
                p.mysql_apply(multi)
            } else {
                p.sqlite_apply()
            },
            current: p.current(),
            apply_from: if d == Dialect::Sqlite && multi {
                per_source(&|s| p.apply_from(s))
            } else {
                Vec::new()
            },
            history: match &p.history {
                Some(h) => per_source(&|s| p.history_insert(h, s)),
                None => Vec::new(),
            },
            many: Many::Chunked {
                read: p.many_read(),
                from: t.sources.iter().map(|s| p.many_from(s)).collect(),
            },
        },
    }
}

/// `idem_core::Keyed`: one text per family, how often it binds the key,
/// and its tag on PostgreSQL.
fn keyed(d: Dialect, texts: [&String; 3], tag: Option<String>) -> TokenStream {
    let binds: usize = match d {
        Dialect::Postgres => 1,
        Dialect::MySql | Dialect::Sqlite => 2,
    };
    let tag = match tag {
        Some(tag) => quote!(::core::option::Option::Some(#tag)),
        None => quote!(::core::option::Option::None),
    };
    quote! {
        idem_core::Keyed {
            text: idem_core::PerFamily([#(#texts),*]),
            binds: #binds,
            tag: #tag,
        }
    }
}

fn batch(b: &Batch) -> TokenStream {
    let parts = &b.parts;
    let lists = b
        .lists
        .iter()
        .map(|(item, separator)| quote!(idem_core::List { item: #item, separator: #separator }));
    quote! {
        idem_core::BatchSql { parts: &[#(#parts),*], lists: &[#(#lists),*] }
    }
}

fn per_family(batches: [&Batch; 3]) -> TokenStream {
    let batches = batches.map(batch);
    quote!(idem_core::PerFamily([#(#batches),*]))
}

/// The `idem_core::DialectSql` of one dialect, from its statements for
/// each family (in `FAMILIES` order).
fn emit(d: Dialect, s: &[Statements; 3], tags: &Parts) -> TokenStream {
    let postgres = d == Dialect::Postgres;
    let tag = |kind: &str| postgres.then(|| tags.tag(kind));
    let apply = keyed(d, [&s[0].apply, &s[1].apply, &s[2].apply], tag("apply"));
    let current = keyed(
        d,
        [&s[0].current, &s[1].current, &s[2].current],
        tag("current"),
    );
    let apply_from = (0..s[0].apply_from.len()).map(|i| {
        keyed(
            d,
            [
                &s[0].apply_from[i],
                &s[1].apply_from[i],
                &s[2].apply_from[i],
            ],
            None,
        )
    });
    // The history rows bind the key's text form: one text for every family.
    let history = &s[0].history;
    let many = match [&s[0].many, &s[1].many, &s[2].many] {
        [Many::Whole(a), Many::Whole(b), Many::Whole(c)] => {
            let whole = keyed(d, [a, b, c], tag("many"));
            quote!(idem_core::ManySql::Whole(#whole))
        }
        [Many::Chunked { read: r0, from: f0 }, Many::Chunked { read: r1, from: f1 }, Many::Chunked { read: r2, from: f2 }] =>
        {
            let read = per_family([r0, r1, r2]);
            let from = (0..f0.len()).map(|i| per_family([&f0[i], &f1[i], &f2[i]]));
            quote!(idem_core::ManySql::Chunked { read: #read, from: &[#(#from),*] })
        }
        _ => unreachable!("a dialect batches the same way for every family"),
    };
    quote! {
        idem_core::DialectSql {
            apply: #apply,
            current: #current,
            apply_from: &[#(#apply_from),*],
            history: &[#(#history),*],
            many: #many,
        }
    }
}

/// The `idem_core::TransitionSql` constant expression of one transition.
pub(crate) fn transition_sql(table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> TokenStream {
    let dialect = |d: Dialect| {
        let s = FAMILIES.map(|f| statements(d, f, table, t));
        emit(d, &s, &Parts::new(d, Family::Integer, table, t))
    };
    let postgres = dialect(Dialect::Postgres);
    let mysql = dialect(Dialect::MySql);
    let sqlite = dialect(Dialect::Sqlite);
    quote! {
        idem_core::TransitionSql {
            postgres: #postgres,
            mysql: #mysql,
            sqlite: #sqlite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoices(history: Option<&str>) -> TableSpec<'_> {
        TableSpec {
            machine: "Invoice",
            name: "invoices",
            column: "status",
            key: "id",
            history,
            states: &[],
        }
    }

    fn void(sources: &[String]) -> TransitionSpec<'_> {
        TransitionSpec {
            name: "void",
            sources,
            target: "void",
            assignments: &[],
        }
    }

    fn tag(d: Dialect, table: &TableSpec<'_>, t: &TransitionSpec<'_>, kind: &str) -> String {
        Parts::new(d, Family::Integer, table, t).tag(kind)
    }

    #[test]
    fn postgres_apply_is_one_statement_with_compare_and_set_on_the_state_seen() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let (table, t) = (invoices(None), void(&sources));
        let s = statements(Dialect::Postgres, Family::Integer, &table, &t);
        let tag = tag(Dialect::Postgres, &table, &t, "apply");
        assert_eq!(
            s.apply,
            format!(
                "WITH prev AS (SELECT \"status\" AS s FROM \"invoices\" WHERE \"id\" = CAST($1 AS int8)), \
                 upd AS (UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = CAST($1 AS int8) \
                 AND \"status\" IN ('draft', 'issued') AND \"status\" = (SELECT s FROM prev) \
                 RETURNING 1) SELECT '{tag}' AS tag, CAST((SELECT s FROM prev) AS TEXT) AS before, \
                 EXISTS (SELECT 1 FROM upd) AS applied, EXISTS (SELECT 1 FROM prev) AS found"
            )
        );
        assert!(s.apply_from.is_empty() && s.history.is_empty());
    }

    /// sqlx caches a prepared statement by its text, with the parameter
    /// types of its first use: each family has a text of its own.
    #[test]
    fn postgres_casts_the_key_to_its_familys_type_so_each_family_has_its_own_text() {
        let sources = ["issued".to_owned()];
        let (table, t) = (invoices(None), void(&sources));
        let texts = FAMILIES.map(|f| statements(Dialect::Postgres, f, &table, &t));
        for (s, ty) in texts.iter().zip(["int8", "text", "uuid"]) {
            assert!(
                s.apply.contains(&format!("\"id\" = CAST($1 AS {ty})")),
                "{}",
                s.apply
            );
            assert!(
                s.current.contains(&format!("t.\"id\" = CAST($1 AS {ty})")),
                "{}",
                s.current
            );
            let Many::Whole(many) = &s.many else {
                panic!("PostgreSQL batches in one statement")
            };
            assert!(
                many.contains(&format!("unnest(CAST($1 AS {ty}[]))")),
                "{many}"
            );
        }
        assert_ne!(texts[0].apply, texts[1].apply);
        assert_ne!(texts[1].apply, texts[2].apply);
    }

    #[test]
    fn postgres_current_is_always_one_row_with_its_tag() {
        let sources = ["issued".to_owned()];
        let (table, t) = (invoices(None), void(&sources));
        let s = statements(Dialect::Postgres, Family::Text, &table, &t);
        assert_eq!(
            s.current,
            format!(
                "SELECT '{}' AS tag, CAST(t.\"status\" AS TEXT) AS state, t.\"id\" IS NOT NULL AS found \
                 FROM (SELECT 1) AS one LEFT JOIN \"invoices\" AS t ON t.\"id\" = CAST($1 AS text) \
                 AND CAST(t.\"id\" AS text) COLLATE \"C\" = CAST($1 AS text)",
                tag(Dialect::Postgres, &table, &t, "current")
            )
        );
    }

    /// A tag names the machine, the transition and the statement, and
    /// differs whenever what the statement is made of differs.
    #[test]
    fn tags_differ_between_statements_and_tables() {
        let sources = ["issued".to_owned()];
        let t = void(&sources);
        let a = invoices(None);
        let mut b = invoices(None);
        b.name = "other_invoices";
        let apply = tag(Dialect::Postgres, &a, &t, "apply");
        assert!(apply.starts_with("idem:Invoice.void:"), "{apply}");
        assert!(apply.ends_with(":apply"), "{apply}");
        assert_ne!(apply, tag(Dialect::Postgres, &a, &t, "current"));
        assert_ne!(apply, tag(Dialect::Postgres, &b, &t, "apply"));
    }

    #[test]
    fn postgres_history_is_inserted_by_the_same_statement() {
        let sources = ["issued".to_owned()];
        let s = statements(
            Dialect::Postgres,
            Family::Integer,
            &invoices(Some("invoice_history")),
            &void(&sources),
        );
        assert!(s.apply.contains(
            "RETURNING \"id\" AS k), hist AS (INSERT INTO \"invoice_history\" \
             (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             SELECT CAST(k AS TEXT), 'void', CAST((SELECT s FROM prev) AS TEXT), 'void' FROM upd)"
        ));
        let Many::Whole(many) = &s.many else {
            panic!("PostgreSQL batches in one statement")
        };
        assert!(many.contains("hist AS (INSERT INTO \"invoice_history\""));
    }

    #[test]
    fn mysql_multi_source_reports_the_source_through_last_insert_id() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(
            Dialect::MySql,
            Family::Integer,
            &invoices(None),
            &void(&sources),
        );
        assert_eq!(
            s.apply,
            "UPDATE `invoices` SET `status` = IF(LAST_INSERT_ID(FIELD(`status`, 'draft', 'issued')) > 0, \
             'void', 'void') WHERE `id` = ? AND CAST(CONVERT(`id` USING utf8mb4) AS BINARY) = \
             CAST(? AS BINARY) AND `status` IN ('draft', 'issued')"
        );
        assert_eq!(
            s.current,
            "SELECT CAST(`status` AS CHAR) FROM `invoices` WHERE `id` = ? AND \
             CAST(CONVERT(`id` USING utf8mb4) AS BINARY) = CAST(? AS BINARY) LOCK IN SHARE MODE"
        );
    }

    /// A UUID's 16 bytes are no utf8mb4 text: MySQL compares them as
    /// they are.
    #[test]
    fn mysql_compares_uuid_keys_byte_for_byte_without_conversion() {
        let sources = ["issued".to_owned()];
        let s = statements(
            Dialect::MySql,
            Family::Uuid,
            &invoices(None),
            &void(&sources),
        );
        assert!(s
            .current
            .contains("`id` = ? AND CAST(`id` AS BINARY) = CAST(? AS BINARY)"));
        let Many::Chunked { read, from } = &s.many else {
            panic!("MySQL batches in chunks")
        };
        assert_eq!(read.parts[0], "SELECT CASE CAST(`id` AS BINARY)");
        assert_eq!(from[0].parts[1], ") AND CAST(`id` AS BINARY) IN (");
    }

    #[test]
    fn mysql_batches_narrow_every_key_list_to_exact_matches() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(
            Dialect::MySql,
            Family::Text,
            &invoices(None),
            &void(&sources),
        );
        let Many::Chunked { read, from } = &s.many else {
            panic!("MySQL batches in chunks")
        };
        let exact = "CAST(CONVERT(`id` USING utf8mb4) AS BINARY)";
        assert_eq!(
            read,
            &Batch {
                parts: vec![
                    format!("SELECT CASE {exact}"),
                    " END, CAST(`status` AS CHAR) FROM `invoices` WHERE `id` IN (".to_owned(),
                    format!(") AND {exact} IN ("),
                    ") LOCK IN SHARE MODE".to_owned(),
                ],
                lists: vec![
                    (" WHEN CAST(? AS BINARY) THEN #", ""),
                    ("?", ", "),
                    ("CAST(? AS BINARY)", ", "),
                ],
            }
        );
        assert_eq!(
            from[1],
            Batch {
                parts: vec![
                    "UPDATE `invoices` SET `status` = 'void' WHERE `status` = 'issued' AND `id` IN ("
                        .to_owned(),
                    format!(") AND {exact} IN ("),
                    ")".to_owned(),
                ],
                lists: vec![("?", ", "), ("CAST(? AS BINARY)", ", ")],
            }
        );
    }

    #[test]
    fn sqlite_multi_source_has_one_compare_and_set_per_source() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(
            Dialect::Sqlite,
            Family::Integer,
            &invoices(Some("h")),
            &void(&sources),
        );
        assert_eq!(
            s.apply_from,
            [
                "UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \
                 CAST(\"id\" AS TEXT) COLLATE BINARY = CAST(? AS TEXT) AND \"status\" = 'draft'",
                "UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \
                 CAST(\"id\" AS TEXT) COLLATE BINARY = CAST(? AS TEXT) AND \"status\" = 'issued'",
            ]
        );
        assert_eq!(
            s.history[1],
            "INSERT INTO \"h\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             VALUES (?, 'void', 'issued', 'void')"
        );
        let Many::Chunked { read, .. } = &s.many else {
            panic!("SQLite batches in chunks")
        };
        assert_eq!(
            read.parts[1],
            ") SELECT u.ord, CAST(t.\"status\" AS TEXT) FROM u JOIN \"invoices\" AS t \
             ON t.\"id\" = u.k AND CAST(t.\"id\" AS TEXT) COLLATE BINARY = CAST(u.k AS TEXT)"
        );
    }

    #[test]
    fn assignments_and_schema_qualified_names_are_quoted() {
        let sources = ["issued".to_owned()];
        let assignments = [("paid_at".to_owned(), "CURRENT_TIMESTAMP".to_owned())];
        let table = TableSpec {
            machine: "Invoice",
            name: "billing.invoices",
            column: "status",
            key: "id",
            history: None,
            states: &[],
        };
        let t = TransitionSpec {
            name: "pay",
            sources: &sources,
            target: "paid",
            assignments: &assignments,
        };
        let s = statements(Dialect::MySql, Family::Integer, &table, &t);
        assert_eq!(
            s.apply,
            "UPDATE `billing`.`invoices` SET `paid_at` = CURRENT_TIMESTAMP, `status` = 'paid' \
             WHERE `id` = ? AND CAST(CONVERT(`id` USING utf8mb4) AS BINARY) = CAST(? AS BINARY) \
             AND `status` IN ('issued')"
        );
    }

    #[test]
    fn the_state_column_is_assigned_last_so_extras_read_the_state_before() {
        let sources = ["open".to_owned(), "frozen".to_owned()];
        let assignments = [("closed_from".to_owned(), "status".to_owned())];
        let t = TransitionSpec {
            name: "close",
            sources: &sources,
            target: "closed",
            assignments: &assignments,
        };
        let s = statements(Dialect::MySql, Family::Integer, &invoices(None), &t);
        assert!(s.apply.starts_with(
            "UPDATE `invoices` SET `closed_from` = status, `status` = \
             IF(LAST_INSERT_ID(FIELD(`status`, 'open', 'frozen')) > 0, 'closed', 'closed') \
             WHERE `id` = ?"
        ));
        let Many::Chunked { from, .. } = &s.many else {
            panic!("MySQL batches in chunks")
        };
        assert_eq!(
            from[1].parts[0],
            "UPDATE `invoices` SET `closed_from` = status, `status` = 'closed' \
             WHERE `status` = 'frozen' AND `id` IN ("
        );
        let s = statements(Dialect::Sqlite, Family::Integer, &invoices(None), &t);
        assert!(s.apply_from[0].contains("SET \"closed_from\" = status, \"status\" = 'closed'"));
    }

    #[test]
    fn literals_escape_quotes() {
        assert_eq!(literal("o'clock"), "'o''clock'");
    }
}
