//! The SQL every transition compiles to, for every dialect, as tokens of an
//! `::idem_core::TransitionSql` constant.

use proc_macro2::TokenStream;
use quote::quote;

/// Where the state machine is stored (identifiers already validated).
pub(crate) struct TableSpec<'a> {
    pub name: &'a str,
    pub column: &'a str,
    pub key: &'a str,
    pub history: Option<&'a str>,
}

/// One transition, with states as their stored values.
pub(crate) struct TransitionSpec<'a> {
    pub name: &'a str,
    pub sources: &'a [String],
    pub target: &'a str,
    /// Extra `column = <SQL expression>` assignments made by the same UPDATE.
    pub assignments: &'a [(String, String)],
}

#[derive(Clone, Copy)]
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
}

fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn statements(d: Dialect, table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> TokenStream {
    let tbl = d.quote_ident(table.name);
    let col = d.quote_ident(table.column);
    let key = d.quote_ident(table.key);
    let p = d.param();
    let sources = t
        .sources
        .iter()
        .map(|s| literal(s))
        .collect::<Vec<_>>()
        .join(", ");
    let mut set = format!("{col} = {}", literal(t.target));
    for (column, expr) in t.assignments {
        set.push_str(&format!(", {} = {expr}", d.quote_ident(column)));
    }
    let apply = format!("UPDATE {tbl} SET {set} WHERE {key} = {p} AND {col} IN ({sources})");
    let lock = match d {
        Dialect::MySql => " LOCK IN SHARE MODE",
        Dialect::Postgres | Dialect::Sqlite => "",
    };
    let current = format!("SELECT {col} FROM {tbl} WHERE {key} = {p}{lock}");
    quote! {
        ::idem_core::DialectSql {
            apply: #apply,
            current: #current,
        }
    }
}

/// The `::idem_core::TransitionSql` constant expression of one transition.
pub(crate) fn transition_sql(table: &TableSpec<'_>, t: &TransitionSpec<'_>) -> TokenStream {
    let _ = t.name;
    let postgres = statements(Dialect::Postgres, table, t);
    let mysql = statements(Dialect::MySql, table, t);
    let sqlite = statements(Dialect::Sqlite, table, t);
    quote! {
        ::idem_core::TransitionSql {
            postgres: #postgres,
            mysql: #mysql,
            sqlite: #sqlite,
        }
    }
}
