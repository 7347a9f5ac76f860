//! `#[derive(StateMachine)]` for [idem](https://docs.rs/idem). Use it through
//! the `idem` facade.

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

/// Derives `idem_core::State` and the guarded SQL of every transition.
#[proc_macro_derive(StateMachine, attributes(state_machine))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
