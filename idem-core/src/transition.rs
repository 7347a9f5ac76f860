use crate::{Dialect, DialectSql, Error, Outcome, State, TransitionSql};

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

    /// The position of `state` among the sources, when the transition may
    /// start from it.
    pub fn source_index(&self, state: S) -> Option<usize> {
        self.sources.iter().position(|s| *s == state)
    }

    /// The state a read of the row found: `row` is `None` when there is no
    /// row, `Some(None)` when the row's state column is NULL and
    /// `Some(Some(value))` for a stored value.
    ///
    /// Errors: a NULL state is [`Error::NullState`] and a value that is no
    /// state (an empty string among them) [`Error::UnknownState`]: a row
    /// that exists is never taken for a missing one.
    ///
    /// ```
    /// # use idem_core::{Error, State, Transition};
    /// # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    /// # enum Door { Open, Closed }
    /// # impl std::fmt::Display for Door {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
    /// # }
    /// # impl State for Door {
    /// #     const TYPE_NAME: &'static str = "Door";
    /// #     const ALL: &'static [Self] = &[Door::Open, Door::Closed];
    /// #     const INITIAL: &'static [Self] = &[Door::Open];
    /// #     const TRANSITIONS: &'static [&'static Transition<Self>] =
    /// #         &[&Transition::new("close", &[Door::Open], Door::Closed, None)];
    /// #     const TABLE: Option<&'static idem_core::Table> = None;
    /// #     fn as_str(self) -> &'static str { match self { Door::Open => "open", Door::Closed => "closed" } }
    /// # }
    /// let close = Door::transition("close").unwrap();
    /// assert_eq!(close.state_of(None).unwrap(), None);
    /// assert_eq!(close.state_of(Some(Some("open"))).unwrap(), Some(Door::Open));
    /// assert!(matches!(close.state_of(Some(None)), Err(Error::NullState { .. })));
    /// assert!(matches!(close.state_of(Some(Some(""))), Err(Error::UnknownState { .. })));
    /// ```
    pub fn state_of(&self, row: Option<Option<&str>>) -> Result<Option<S>, Error> {
        match row {
            None => Ok(None),
            Some(None) => Err(Error::NullState {
                type_name: S::TYPE_NAME,
                transition: self.name,
            }),
            Some(Some(value)) => S::parse(value).map(Some),
        }
    }

    /// What it means that the row is in `current` (`None`: there is no
    /// row) after a guarded update that did not apply:
    /// [`Outcome::NotFound`], [`Outcome::AlreadyApplied`] when the row is in
    /// the target state, [`Outcome::Rejected`] when the transition is not
    /// allowed from `current`, and `None` when the transition *is* allowed
    /// from `current` — the row moved into a source state after the update
    /// looked at it, so the update has to run again.
    ///
    /// ```
    /// # use idem_core::{Outcome, State, Transition};
    /// # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    /// # enum Door { Open, Closed, Locked }
    /// # impl std::fmt::Display for Door {
    /// #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
    /// # }
    /// # impl State for Door {
    /// #     const TYPE_NAME: &'static str = "Door";
    /// #     const ALL: &'static [Self] = &[Door::Open, Door::Closed, Door::Locked];
    /// #     const INITIAL: &'static [Self] = &[Door::Open];
    /// #     const TRANSITIONS: &'static [&'static Transition<Self>] = &[
    /// #         &Transition::new("close", &[Door::Open], Door::Closed, None),
    /// #         &Transition::new("lock", &[Door::Closed], Door::Locked, None),
    /// #     ];
    /// #     const TABLE: Option<&'static idem_core::Table> = None;
    /// #     fn as_str(self) -> &'static str { match self { Door::Open => "open", Door::Closed => "closed", Door::Locked => "locked" } }
    /// # }
    /// let close = Door::transition("close").unwrap();
    /// assert_eq!(close.settled(None), Some(Outcome::NotFound));
    /// assert_eq!(close.settled(Some(Door::Closed)), Some(Outcome::AlreadyApplied { state: Door::Closed }));
    /// assert_eq!(close.settled(Some(Door::Locked)), Some(Outcome::Rejected { current: Door::Locked }));
    /// assert_eq!(close.settled(Some(Door::Open)), None);
    /// ```
    pub fn settled(&self, current: Option<S>) -> Option<Outcome<S>> {
        match current {
            None => Some(Outcome::NotFound),
            Some(state) if state == self.target => Some(Outcome::AlreadyApplied { state }),
            Some(state) if self.allows(state) => None,
            Some(current) => Some(Outcome::Rejected { current }),
        }
    }

    /// The outcome of a change this call made from `from`.
    pub fn applied_from(&self, from: S) -> Outcome<S> {
        Outcome::Applied {
            from,
            to: self.target,
        }
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
