//! The SQL every transition compiles to, for every dialect, as tokens of an
//! `idem_core::TransitionSql` constant (`idem_core` is the alias the
//! expansion brings into scope for the crate path in use).
//!
//! Identifiers are quoted per dialect (they were validated as plain SQL
//! identifiers before), states are embedded as string literals (validated
//! to mean the same text in every dialect and server mode), and the
//! row key is the only bind parameter. What each statement is for is
//! documented on `idem_core::DialectSql`; the runtime that sends them lives
//! in idem-sqlx.

use proc_macro2::TokenStream;
use quote::quote;

/// Where the state machine is stored (identifiers already validated).
pub(crate) struct TableSpec<'a> {
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

    fn param(self) -> &'static str {
        match self {
            Dialect::Postgres => "$1",
            Dialect::MySql | Dialect::Sqlite => "?",
        }
    }

    /// The name of the text type in `CAST(x AS ...)`.
    fn text(self) -> &'static str {
        match self {
            Dialect::MySql => "CHAR",
            Dialect::Postgres | Dialect::Sqlite => "TEXT",
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

/// The pieces every statement of one transition in one dialect is built of.
struct Parts {
    d: Dialect,
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
}

impl Parts {
    fn new(d: Dialect, table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> Parts {
        let col = d.quote_ident(table.column);
        let target = literal(t.target);
        let extras: Vec<String> = t
            .assignments
            .iter()
            .map(|(column, expr)| format!("{} = {expr}", d.quote_ident(column)))
            .collect();
        let set = Parts::set(&extras, &format!("{col} = {target}"));
        Parts {
            d,
            tbl: d.quote_ident(table.name),
            key: d.quote_ident(table.key),
            col,
            set,
            extras,
            sources: t
                .sources
                .iter()
                .map(|s| literal(s))
                .collect::<Vec<_>>()
                .join(", "),
            target,
            name: literal(t.name),
            history: table.history.map(|h| d.quote_ident(h)),
            states: table
                .states
                .iter()
                .map(|s| literal(s))
                .collect::<Vec<_>>()
                .join(", "),
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
        let mut sql = format!(
            "WITH prev AS (SELECT {col} AS s FROM {tbl} WHERE {key} = $1), \
             upd AS (UPDATE {tbl} SET {set} WHERE {key} = $1 AND {col} IN ({sources}) \
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
        sql.push_str(
            " SELECT CAST((SELECT s FROM prev) AS TEXT) AS before, \
             EXISTS (SELECT 1 FROM upd) AS applied, EXISTS (SELECT 1 FROM prev) AS found",
        );
        sql
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
    /// `before`).
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
        let mut sql = format!(
            "WITH u AS (SELECT k, ord, min(ord) OVER (PARTITION BY k) AS first \
             FROM unnest($1) WITH ORDINALITY AS x(k, ord)), \
             prev AS (SELECT {key} AS k, {col} AS s FROM {tbl} WHERE {key} = ANY($1)), \
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
        sql.push_str(
            " SELECT u.ord, CAST(prev.s AS TEXT) AS before, \
             (upd.k IS NOT NULL AND u.ord = u.first) AS applied, prev.k IS NOT NULL AS found \
             FROM u LEFT JOIN prev ON prev.k = u.k LEFT JOIN upd ON upd.k = u.k \
             ORDER BY u.ord",
        );
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
        format!("UPDATE {tbl} SET {set} WHERE {key} = ? AND {col} IN ({sources})")
    }

    fn current(&self) -> String {
        let Parts {
            d, tbl, col, key, ..
        } = self;
        let lock = match d {
            Dialect::MySql => " LOCK IN SHARE MODE",
            Dialect::Postgres | Dialect::Sqlite => "",
        };
        format!(
            "SELECT CAST({col} AS {}) FROM {tbl} WHERE {key} = {}{lock}",
            d.text(),
            d.param()
        )
    }

    fn apply_from(&self, source: &str) -> String {
        let Parts {
            tbl, col, key, set, ..
        } = self;
        format!(
            "UPDATE {tbl} SET {set} WHERE {key} = ? AND {col} = {}",
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

    /// The batch read, in pieces around the placeholders the runtime adds.
    /// MySQL: `CASE key WHEN ? THEN 0 ... END` numbers the rows of a locking
    /// `IN (...)` read. SQLite: the keys are numbered in a `VALUES` list
    /// (`(0, ?), (1, ?), ...`) joined to the table by its key, one index
    /// probe per key, so the read stays linear in the batch size.
    fn many_read(&self) -> [String; 3] {
        let Parts {
            d, tbl, col, key, ..
        } = self;
        match d {
            Dialect::Sqlite => [
                "WITH u(ord, k) AS (VALUES ".to_owned(),
                format!(
                    ") SELECT u.ord, CAST(t.{col} AS TEXT) FROM u JOIN {tbl} AS t ON t.{key} = u.k"
                ),
                String::new(),
            ],
            Dialect::MySql | Dialect::Postgres => [
                format!("SELECT CASE {key}"),
                format!(
                    " END, CAST({col} AS {}) FROM {tbl} WHERE {key} IN (",
                    d.text()
                ),
                ") LOCK IN SHARE MODE".to_owned(),
            ],
        }
    }

    fn many_from(&self, source: &str) -> String {
        let Parts {
            tbl, col, key, set, ..
        } = self;
        format!(
            "UPDATE {tbl} SET {set} WHERE {col} = {} AND {key} IN (",
            literal(source)
        )
    }
}

/// The statements of one dialect, as plain strings (the token emission is
/// separate so tests can look at the text).
struct Statements {
    apply: String,
    current: String,
    apply_from: Vec<String>,
    history: Vec<String>,
    many: Vec<String>,
    many_from: Vec<String>,
}

fn statements(d: Dialect, table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> Statements {
    let p = Parts::new(d, table, t);
    let multi = t.sources.len() > 1;
    let per_source = |f: &dyn Fn(&str) -> String| t.sources.iter().map(|s| f(s)).collect();
    match d {
        Dialect::Postgres => Statements {
            apply: p.postgres_apply(),
            current: p.current(),
            apply_from: Vec::new(),
            history: Vec::new(),
            many: vec![p.postgres_many()],
            many_from: Vec::new(),
        },
        Dialect::MySql | Dialect::Sqlite => Statements {
            apply: if d == Dialect::MySql {
                p.mysql_apply(multi)
            } else {
                format!(
                    "UPDATE {} SET {} WHERE {} = ? AND {} IN ({})",
                    p.tbl, p.set, p.key, p.col, p.sources
                )
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
            many: p.many_read().to_vec(),
            many_from: per_source(&|s| p.many_from(s)),
        },
    }
}

fn emit(s: Statements) -> TokenStream {
    let Statements {
        apply,
        current,
        apply_from,
        history,
        many,
        many_from,
    } = s;
    quote! {
        idem_core::DialectSql {
            apply: #apply,
            current: #current,
            apply_from: &[#(#apply_from),*],
            history: &[#(#history),*],
            many: &[#(#many),*],
            many_from: &[#(#many_from),*],
        }
    }
}

/// The `idem_core::TransitionSql` constant expression of one transition.
pub(crate) fn transition_sql(table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> TokenStream {
    let postgres = emit(statements(Dialect::Postgres, table, t));
    let mysql = emit(statements(Dialect::MySql, table, t));
    let sqlite = emit(statements(Dialect::Sqlite, table, t));
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

    #[test]
    fn postgres_apply_is_one_statement_with_compare_and_set_on_the_state_seen() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(Dialect::Postgres, &invoices(None), &void(&sources));
        assert_eq!(
            s.apply,
            "WITH prev AS (SELECT \"status\" AS s FROM \"invoices\" WHERE \"id\" = $1), \
             upd AS (UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = $1 \
             AND \"status\" IN ('draft', 'issued') AND \"status\" = (SELECT s FROM prev) \
             RETURNING 1) SELECT CAST((SELECT s FROM prev) AS TEXT) AS before, \
             EXISTS (SELECT 1 FROM upd) AS applied, EXISTS (SELECT 1 FROM prev) AS found"
        );
        assert!(s.apply_from.is_empty() && s.history.is_empty());
    }

    #[test]
    fn postgres_history_is_inserted_by_the_same_statement() {
        let sources = ["issued".to_owned()];
        let s = statements(
            Dialect::Postgres,
            &invoices(Some("invoice_history")),
            &void(&sources),
        );
        assert!(s.apply.contains(
            "RETURNING \"id\" AS k), hist AS (INSERT INTO \"invoice_history\" \
             (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             SELECT CAST(k AS TEXT), 'void', CAST((SELECT s FROM prev) AS TEXT), 'void' FROM upd)"
        ));
        assert!(s.many[0].contains("hist AS (INSERT INTO \"invoice_history\""));
    }

    #[test]
    fn mysql_multi_source_reports_the_source_through_last_insert_id() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(Dialect::MySql, &invoices(None), &void(&sources));
        assert_eq!(
            s.apply,
            "UPDATE `invoices` SET `status` = IF(LAST_INSERT_ID(FIELD(`status`, 'draft', 'issued')) > 0, \
             'void', 'void') WHERE `id` = ? AND `status` IN ('draft', 'issued')"
        );
        assert_eq!(
            s.current,
            "SELECT CAST(`status` AS CHAR) FROM `invoices` WHERE `id` = ? LOCK IN SHARE MODE"
        );
    }

    #[test]
    fn sqlite_multi_source_has_one_compare_and_set_per_source() {
        let sources = ["draft".to_owned(), "issued".to_owned()];
        let s = statements(Dialect::Sqlite, &invoices(Some("h")), &void(&sources));
        assert_eq!(
            s.apply_from,
            [
                "UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \"status\" = 'draft'",
                "UPDATE \"invoices\" SET \"status\" = 'void' WHERE \"id\" = ? AND \"status\" = 'issued'",
            ]
        );
        assert_eq!(
            s.history[1],
            "INSERT INTO \"h\" (\"entity_key\", \"transition\", \"from_state\", \"to_state\") \
             VALUES (?, 'void', 'issued', 'void')"
        );
    }

    #[test]
    fn assignments_and_schema_qualified_names_are_quoted() {
        let sources = ["issued".to_owned()];
        let assignments = [("paid_at".to_owned(), "CURRENT_TIMESTAMP".to_owned())];
        let table = TableSpec {
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
        let s = statements(Dialect::MySql, &table, &t);
        assert_eq!(
            s.apply,
            "UPDATE `billing`.`invoices` SET `paid_at` = CURRENT_TIMESTAMP, `status` = 'paid' \
             WHERE `id` = ? AND `status` IN ('issued')"
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
        let s = statements(Dialect::MySql, &invoices(None), &t);
        assert_eq!(
            s.apply,
            "UPDATE `invoices` SET `closed_from` = status, `status` = \
             IF(LAST_INSERT_ID(FIELD(`status`, 'open', 'frozen')) > 0, 'closed', 'closed') \
             WHERE `id` = ? AND `status` IN ('open', 'frozen')"
        );
        assert_eq!(
            s.many_from[1],
            "UPDATE `invoices` SET `closed_from` = status, `status` = 'closed' \
             WHERE `status` = 'frozen' AND `id` IN ("
        );
        let s = statements(Dialect::Sqlite, &invoices(None), &t);
        assert!(s.apply_from[0].contains("SET \"closed_from\" = status, \"status\" = 'closed'"));
    }

    #[test]
    fn literals_escape_quotes() {
        assert_eq!(literal("o'clock"), "'o''clock'");
    }
}
