//! A transition's SQL is a `'static` constant: the whole path from the enum
//! to the statement text is evaluated by the compiler, so getting it at run
//! time allocates nothing and formats nothing.

use idem_core::{Dialect, DialectSql, KeyFamily, State, Transition};
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(
    issue: Draft -> Issued,
    pay:   Issued -> Paid,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
}

const fn sql(
    transition: &'static Transition<InvoiceStatus>,
    dialect: Dialect,
) -> &'static DialectSql {
    match transition.sql_for(dialect) {
        Some(sql) => sql,
        None => panic!("the state machine has a table"),
    }
}

// Evaluated by the compiler: a heap allocation or a `format!` anywhere on
// the way would not compile in a `const`.
const PAY_POSTGRES: &str = sql(InvoiceStatus::pay(), Dialect::Postgres)
    .apply
    .get(KeyFamily::Integer);
const PAY_MYSQL: &str = sql(InvoiceStatus::pay(), Dialect::MySql)
    .apply
    .get(KeyFamily::Text);
const PAY_SQLITE: &str = sql(InvoiceStatus::pay(), Dialect::Sqlite)
    .apply
    .get(KeyFamily::Uuid);
const PAY_BY_INDEX: &Transition<InvoiceStatus> = <InvoiceStatus as State>::TRANSITIONS[1];
static CURRENT_SQLITE: &str = sql(InvoiceStatus::pay(), Dialect::Sqlite)
    .current
    .get(KeyFamily::Integer);

#[test]
fn the_sql_of_a_transition_is_available_in_a_const_context() {
    for (apply, dialect, family) in [
        (PAY_POSTGRES, Dialect::Postgres, KeyFamily::Integer),
        (PAY_MYSQL, Dialect::MySql, KeyFamily::Text),
        (PAY_SQLITE, Dialect::Sqlite, KeyFamily::Uuid),
    ] {
        let compiled = InvoiceStatus::pay().sql_for(dialect).unwrap();
        assert_eq!(apply, compiled.apply.get(family));
        assert!(apply.contains("'paid'"), "{apply}");
        assert!(apply.contains("'issued'"), "{apply}");
    }
    assert_eq!(PAY_BY_INDEX, InvoiceStatus::pay());
    assert!(CURRENT_SQLITE.starts_with("SELECT"), "{CURRENT_SQLITE}");
}
