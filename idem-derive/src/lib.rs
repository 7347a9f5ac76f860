//! `#[derive(StateMachine)]` for [idem](https://docs.rs/idem): turns a
//! domain enum's transition table into a `State` impl and the guarded SQL
//! of every transition, all as compile-time constants.
//!
//! Use it through the `idem` facade (`use idem::prelude::*;`). The example
//! below depends on `idem-core` directly, which the derive also supports:
//!
//! ```
//! use idem_core::{Dialect, KeyFamily, State};
//! use idem_derive::StateMachine;
//!
//! #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! #[state_machine(table = "invoices", column = "status", key = "id")]
//! #[state_machine(transitions(
//!     issue:  Draft          -> Issued,
//!     pay:    Issued         -> Paid,
//!     void:   Draft | Issued -> Void,
//!     refund: Paid           -> Refunded,
//! ))]
//! pub enum InvoiceStatus {
//!     #[state_machine(initial)]
//!     Draft,
//!     Issued,
//!     Paid,
//!     Void,
//!     Refunded,
//! }
//!
//! let pay = InvoiceStatus::pay();
//! assert!(pay.allows(InvoiceStatus::Issued));
//! assert_eq!(pay.target(), InvoiceStatus::Paid);
//! assert_eq!(InvoiceStatus::Paid.to_string(), "paid");
//! assert_eq!("void".parse::<InvoiceStatus>().unwrap(), InvoiceStatus::Void);
//!
//! // The SQL is a constant: nothing is formatted at run time.
//! let sql = pay.sql_for(Dialect::Sqlite).unwrap();
//! let update = sql.apply.get(KeyFamily::Integer);
//! assert!(update.starts_with("UPDATE \"invoices\" SET \"status\" = 'paid'"));
//! assert!(InvoiceStatus::mermaid().contains("Issued --> Paid: pay"));
//! ```

mod ast;
mod attr;
mod case;
mod ctxt;
mod diagram;
mod expand;
mod fallback;
mod sql;
mod valid;

use proc_macro::TokenStream;
use syn::{parse_macro_input, DeriveInput};

/// Derives `State`, `Display`, `FromStr`, one function per transition and
/// the diagrams for an enum whose unit variants are the states.
///
/// # Attributes on the enum
///
/// `#[state_machine(...)]` may be repeated; each key may be given once.
///
/// | key | meaning |
/// |---|---|
/// | `transitions(name: A -> B, ...)` | **required**: the transition table (below) |
/// | `table = "invoices"` | binds the machine to a table; without it there is no SQL (`State::TABLE` is `None`) |
/// | `column = "status"` | the column holding the state; default `"status"`; needs `table` |
/// | `key = "id"` | the key column, the single bind parameter; default `"id"`; needs `table` |
/// | `history = "invoice_history"` | a table receiving one row per applied transition; needs `table` |
/// | `assign(pay, paid_at = "CURRENT_TIMESTAMP", ...)` | extra `column = SQL expression` assignments made by the same `UPDATE` as transition `pay`; repeatable; needs `table` |
/// | `rename_all = "snake_case"` | how variant names become stored values: one of serde's `"lowercase"`, `"UPPERCASE"`, `"PascalCase"`, `"camelCase"`, `"snake_case"` (the default), `"SCREAMING_SNAKE_CASE"`, `"kebab-case"`, `"SCREAMING-KEBAB-CASE"` |
/// | `crate = "path"` | where the generated code finds idem-core's items (a path to `idem`, `idem_core` or a re-export of either); by default `::idem::__private_core` (idem-core as re-exported by the facade) when the crate depends on `idem`, else `::idem_core` |
///
/// `table` and `history` are `[A-Za-z_][A-Za-z0-9_]*`, optionally
/// schema-qualified (`billing.invoices`: a PostgreSQL schema, a MySQL
/// database or an attached SQLite database); `column`, `key` and `assign`
/// columns are `[A-Za-z_][A-Za-z0-9_]*`. They are quoted per dialect in the
/// SQL. `assign` expressions are SQL text, embedded as written, and sent
/// to every backend, so they may hold no backslash and no double-quoted
/// name (a string on MySQL): both are compile errors. They are evaluated against the row as it was before
/// the transition on every backend: MySQL and MariaDB evaluate `SET` from
/// left to right, so the state column is assigned after the extra
/// assignments and an expression reading it (`closed_from = "status"`)
/// gets the state the row moved from. An expression reading a column that
/// another assignment of the same transition writes has no order that
/// means the same on every backend, and is a compile error.
///
/// # The transition table
///
/// `name: Source -> Target`, with several sources as `A | B -> C`, and
/// `_ -> C` for "from every state except `C`". Each `name` becomes an
/// associated function `Enum::name() -> &'static Transition<Enum>`.
///
/// # Attributes on a variant
///
/// - `#[state_machine(initial)]`: rows may be created in this state. Several
///   states may be initial; when none is marked, the first variant is.
/// - `#[state_machine(rename = "...")]`: the stored value, overriding
///   `rename_all`; non-empty, without control characters or backslashes
///   (the value is a string literal in the SQL, and MySQL/MariaDB without
///   `NO_BACKSLASH_ESCAPES`, like PostgreSQL with
///   `standard_conforming_strings` off, would read a backslash as an
///   escape).
///
/// # Generated
///
/// - `impl State`: `TYPE_NAME`, `ALL` (declaration order), `INITIAL`,
///   `TRANSITIONS` (declaration order), `TABLE`, `as_str`, `parse`
///   (an unknown value is `Error::UnknownState`).
/// - `Display` (the stored value) and `FromStr` (`Err = Error`).
/// - One associated `const fn` per transition, and `mermaid()` / `dot()`
///   returning the diagram as a `&'static str`.
///
/// # Compile errors
///
/// Each points at the offending token, and all of one derive are reported
/// together; a stub of the generated items keeps the rest of the crate free
/// of follow-on errors. They cover: a state named in a transition that is no
/// variant; a duplicate transition name; the same `A -> B` edge in two
/// transitions; a self-loop (the target among the sources: a self-loop
/// cannot be idempotent by state, use an idempotency key); a state not
/// reachable from any initial state; a variant with fields; generics; a
/// struct or union; an unsafe SQL identifier; an unknown, misplaced or
/// duplicate key; a missing `transitions`; a transition named `mermaid` or
/// `dot`; an empty or duplicate stored value, or one with a control
/// character or a backslash; `assign` naming an unknown
/// transition or the state column, or an `assign` expression reading a
/// column another assignment of its transition writes, or holding a
/// backslash or a double-quoted name.
#[proc_macro_derive(StateMachine, attributes(state_machine))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
