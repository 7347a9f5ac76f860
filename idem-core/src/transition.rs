use crate::{Dialect, DialectSql, State, TransitionSql};

/// One named edge of a state machine: `pay: Issued -> Paid`.
///
/// Obtained from the generated associated functions (`InvoiceStatus::pay()`);
/// always `'static`. Its SQL for every dialect is a compile-time constant.
#[derive(Debug)]
pub struct Transition<S: 'static> {
    name: &'static str,
    sources: &'static [S],
    target: S,
    sql: Option<&'static TransitionSql>,
}

impl<S: State> Transition<S> {
    /// Builds a transition. Called by the generated code; `sql` is `None`
    /// when the state machine has no table binding.
    #[doc(hidden)]
    pub const fn new(
        name: &'static str,
        sources: &'static [S],
        target: S,
        sql: Option<&'static TransitionSql>,
    ) -> Self {
        Transition {
            name,
            sources,
            target,
            sql,
        }
    }

    /// The transition's name (`"pay"`).
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The states it may start from.
    pub const fn sources(&self) -> &'static [S] {
        self.sources
    }

    /// The state it leads to.
    pub const fn target(&self) -> S {
        self.target
    }

    /// Whether the transition may start from `from`.
    pub fn allows(&self, from: S) -> bool {
        self.sources.contains(&from)
    }

    /// The compiled SQL of every dialect, when the state machine has a
    /// table binding.
    pub const fn sql(&self) -> Option<&'static TransitionSql> {
        self.sql
    }

    /// The compiled SQL for one dialect, when the state machine has a table
    /// binding.
    pub const fn sql_for(&self, dialect: Dialect) -> Option<&'static DialectSql> {
        match self.sql {
            Some(sql) => Some(sql.get(dialect)),
            None => None,
        }
    }
}

impl<S: State> PartialEq for Transition<S> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.sources == other.sources && self.target == other.target
    }
}

impl<S: State> Eq for Transition<S> {}
