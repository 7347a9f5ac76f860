//! `invoicing sql`: the invoice state machine and the SQL each of its
//! transitions compiles to, as the derive generated it at compile time.

use std::fmt::Write;

use clap::{Args, ValueEnum};
use idem::{Dialect, KeyFamily, State};

use crate::invoice::InvoiceStatus;

/// The dialect to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DialectArg {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
    /// SQLite.
    Sqlite,
}

impl From<DialectArg> for Dialect {
    fn from(arg: DialectArg) -> Self {
        match arg {
            DialectArg::Postgres => Dialect::Postgres,
            DialectArg::Mysql => Dialect::MySql,
            DialectArg::Sqlite => Dialect::Sqlite,
        }
    }
}

/// `invoicing sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL dialect.
    #[arg(long, value_enum, default_value_t = DialectArg::Sqlite)]
    dialect: DialectArg,
}

/// Prints the report for `args`.
pub fn print(args: &SqlArgs) {
    print!("{}", report(args.dialect.into()));
}

/// The Mermaid diagram, then every transition's statements in `dialect`.
pub fn report(dialect: Dialect) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "```mermaid\n{}```\n", InvoiceStatus::mermaid());
    for transition in InvoiceStatus::TRANSITIONS {
        let sources: Vec<&str> = transition.sources().iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "-- {}: {} -> {} ({})",
            transition.name(),
            sources.join(" | "),
            transition.target().as_str(),
            dialect.name()
        );
        let Some(sql) = transition.sql_for(dialect) else {
            continue;
        };
        // Invoices are keyed by integers.
        let family = KeyFamily::Integer;
        let _ = writeln!(out, "-- apply\n{};", sql.apply.get(family));
        let _ = writeln!(
            out,
            "-- current state (when the update did not apply)\n{};",
            sql.current.get(family)
        );
        for (source, statement) in transition.sources().iter().zip(sql.apply_from) {
            let _ = writeln!(out, "-- apply from {source}\n{};", statement.get(family));
        }
        for (source, statement) in transition.sources().iter().zip(sql.history) {
            let _ = writeln!(
                out,
                "-- history row for a change from {source}\n{statement};"
            );
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_shows_the_diagram_and_every_guarded_update() {
        for dialect in Dialect::ALL {
            let report = report(dialect);
            assert!(report.contains("stateDiagram"), "{report}");
            for transition in InvoiceStatus::TRANSITIONS {
                assert!(report.contains(&format!("-- {}:", transition.name())));
            }
            assert!(report.contains("UPDATE"), "{report}");
            assert!(report.contains("paid_at"), "{report}");
        }
    }
}
