/// What applying a transition did to the row.
///
/// Every variant carries the row's real state, never a state remembered
/// from before the call, so a caller is never left holding a stale copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use = "an Outcome says whether this call moved the row; a no-op must not run side effects"]
pub enum Outcome<S> {
    /// This call moved the row from `from` to `to`.
    Applied {
        /// The state the row was in before.
        from: S,
        /// The state the row is in now (the transition's target).
        to: S,
    },
    /// A duplicate: the row is already in the transition's target state.
    AlreadyApplied {
        /// The row's state (the transition's target).
        state: S,
    },
    /// The transition is not allowed from the row's current state.
    Rejected {
        /// The row's state, untouched.
        current: S,
    },
    /// No row has this key.
    NotFound,
}

impl<S: Copy> Outcome<S> {
    /// True when this call moved the row (run side effects only then).
    pub const fn is_applied(&self) -> bool {
        matches!(self, Outcome::Applied { .. })
    }

    /// True for a duplicate: the row was already where the transition leads.
    pub const fn is_noop(&self) -> bool {
        matches!(self, Outcome::AlreadyApplied { .. })
    }

    /// True when the transition is not allowed from the row's state.
    pub const fn is_rejected(&self) -> bool {
        matches!(self, Outcome::Rejected { .. })
    }

    /// True when no row has the key.
    pub const fn is_not_found(&self) -> bool {
        matches!(self, Outcome::NotFound)
    }

    /// The row's state after the call, if the row exists.
    pub const fn state(&self) -> Option<S> {
        match *self {
            Outcome::Applied { to, .. } => Some(to),
            Outcome::AlreadyApplied { state } => Some(state),
            Outcome::Rejected { current } => Some(current),
            Outcome::NotFound => None,
        }
    }
}
