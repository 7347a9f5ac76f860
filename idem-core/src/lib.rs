//! The core model of [idem](https://docs.rs/idem): states, transitions and
//! their outcomes, the idempotency-key and inbox protocols, in-memory stores
//! and one error type. It depends on no database and no HTTP crate.
//!
//! Most users depend on the `idem` facade and write `use idem::prelude::*;`.
//! The derive generates code against the types here:
//!
//! ```
//! use idem_core::{Outcome, State, Transition};
//!
//! # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! # enum Door { Open, Closed }
//! # impl std::fmt::Display for Door {
//! #     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.as_str()) }
//! # }
//! # impl State for Door {
//! #     const TYPE_NAME: &'static str = "Door";
//! #     const ALL: &'static [Self] = &[Door::Open, Door::Closed];
//! #     const INITIAL: &'static [Self] = &[Door::Open];
//! #     const TRANSITIONS: &'static [&'static Transition<Self>] = &[
//! #         &Transition::new("close", &[Door::Open], Door::Closed, None),
//! #         &Transition::new("open", &[Door::Closed], Door::Open, None),
//! #     ];
//! #     const TABLE: Option<&'static idem_core::Table> = None;
//! #     fn as_str(self) -> &'static str { match self { Door::Open => "open", Door::Closed => "closed" } }
//! # }
//! let close = Door::transition("close").unwrap();
//! assert!(close.allows(Door::Open));
//! assert_eq!(close.target(), Door::Closed);
//! assert_eq!(Door::parse("closed").unwrap(), Door::Closed);
//!
//! let outcome = Outcome::Applied { from: Door::Open, to: Door::Closed };
//! assert!(outcome.is_applied());
//! ```
//!
//! In real code the `State` impl above is written by `#[derive(StateMachine)]`.

mod change;
mod error;
pub mod inbox;
pub mod keys;
mod outcome;
mod sql;
mod state;
mod transition;

pub use change::Change;
pub use error::{Error, Excerpt};
pub use outcome::Outcome;
pub use sql::{
    BatchSql, Dialect, DialectSql, KeyFamily, Keyed, List, ManySql, PerFamily, TransitionSql,
};
pub use state::{State, Table};
pub use transition::Transition;
