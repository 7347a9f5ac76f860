#![doc = include_str!("../README.md")]

pub use idem_core::*;
pub use idem_derive::StateMachine;

/// What `#[derive(StateMachine)]` generates code against. Not a public API.
#[doc(hidden)]
pub use idem_core as __private_core;

#[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
pub use idem_sqlx as sqlx;

#[cfg(feature = "http")]
pub use idem_http as http;

/// `use idem::prelude::*;` brings the derive, the model and the database
/// extension traits into scope.
pub mod prelude {
    pub use idem_core::{Change, Outcome, State, Transition};
    pub use idem_derive::StateMachine;
    #[cfg(any(feature = "sqlite", feature = "postgres", feature = "mysql"))]
    pub use idem_sqlx::{TransitionExt, TransitionHandler};
}
