use std::fmt::{Debug, Display};
use std::hash::Hash;

use crate::{Error, Transition};

/// A domain enum whose values are the states of a row.
///
/// Written by `#[derive(StateMachine)]`; every item is a compile-time
/// constant, so nothing is allocated or formatted to look a state or a
/// transition up.
pub trait State: Copy + Eq + Hash + Debug + Display + Send + Sync + 'static {
    /// The enum's name, used in error messages (`"InvoiceStatus"`).
    const TYPE_NAME: &'static str;
    /// Every state, in declaration order.
    const ALL: &'static [Self];
    /// The states a row may be created in (at least one; the first is
    /// [`State::initial`]).
    const INITIAL: &'static [Self];
    /// The transition table, in declaration order.
    const TRANSITIONS: &'static [&'static Transition<Self>];
    /// The table the state is stored in, when the derive was given `table`.
    const TABLE: Option<&'static Table>;

    /// The value stored in the database column (`"draft"`).
    fn as_str(self) -> &'static str;

    /// Parses a stored value back into a state.
    ///
    /// A value that is no known state is [`Error::UnknownState`], never a
    /// panic and never a default.
    fn parse(value: &str) -> Result<Self, Error> {
        Self::ALL
            .iter()
            .copied()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| Error::UnknownState {
                type_name: Self::TYPE_NAME,
                value: value.to_owned(),
            })
    }

    /// The first initial state.
    fn initial() -> Self {
        Self::INITIAL[0]
    }

    /// Looks a transition up by name.
    fn transition(name: &str) -> Option<&'static Transition<Self>> {
        Self::TRANSITIONS.iter().copied().find(|t| t.name() == name)
    }

    /// The transitions allowed from this state.
    fn transitions_from(self) -> impl Iterator<Item = &'static Transition<Self>> {
        Self::TRANSITIONS
            .iter()
            .copied()
            .filter(move |t| t.allows(self))
    }
}

/// Where a state machine is stored: `#[state_machine(table = ..., column = ..., key = ...)]`.
///
/// Identifiers are checked at compile time to be plain SQL identifiers
/// (`[A-Za-z_][A-Za-z0-9_]*`, optionally `schema.table`). The schema of a
/// qualified name is a PostgreSQL schema, a MySQL/MariaDB database or an
/// attached SQLite database (attach it on every connection of the pool);
/// the table and its history may each be in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Table {
    /// The table (`"invoices"` or `"billing.invoices"`).
    pub name: &'static str,
    /// The column holding the state (`"status"`).
    pub column: &'static str,
    /// The key column the single bind parameter is compared with (`"id"`).
    pub key: &'static str,
    /// The history table, when `history = "..."` was given.
    pub history: Option<&'static str>,
}
