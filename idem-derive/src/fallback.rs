//! On error: the errors, plus a stub of everything the derive would have
//! generated, so the user's uses of it (`InvoiceStatus::pay()`, `Display`)
//! produce no follow-on errors (thiserror's `fallback.rs`).

use std::collections::BTreeSet;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ext::IdentExt;
use syn::{Data, DeriveInput};

use crate::ast::Machine;
use crate::expand::crate_path;
use crate::valid::RESERVED;

pub(crate) fn expand(input: &DeriveInput, machine: &Machine<'_>, error: syn::Error) -> TokenStream {
    let errors = error.into_compile_error();
    // A stub for a generic type would need bounds the user never wrote.
    if !input.generics.params.is_empty() {
        return errors;
    }
    let ident = &input.ident;
    let vis = &input.vis;
    let krate = crate_path(machine);
    let type_name = machine.name();
    let state_impl = matches!(input.data, Data::Enum(_)).then(|| {
        quote! {
            #[automatically_derived]
            impl idem_core::State for #ident {
                const TYPE_NAME: &'static str = #type_name;
                const ALL: &'static [Self] = &[];
                const INITIAL: &'static [Self] = &[];
                const TRANSITIONS: &'static [&'static idem_core::Transition<Self>] = &[];
                const TABLE: ::core::option::Option<&'static idem_core::Table> = ::core::option::Option::None;

                fn as_str(self) -> &'static str {
                    ::core::unreachable!()
                }
            }
        }
    });
    // One function per distinct, non-reserved name, so the stub adds no
    // "duplicate definition" error of its own.
    let mut names = BTreeSet::new();
    let parsed = machine
        .attrs
        .transitions
        .iter()
        .flat_map(|(_, defs)| defs)
        .map(|def| &def.name);
    let malformed = machine.attrs.malformed.iter().flatten();
    let accessors = parsed
        .chain(malformed)
        .filter(|name| {
            let name = name.unraw().to_string();
            !RESERVED.contains(&name.as_str()) && names.insert(name)
        })
        .map(|name| {
            quote! {
                #[doc = "A transition (unavailable: the derive reported an error)."]
                #vis fn #name() -> &'static idem_core::Transition<Self> {
                    ::core::unreachable!()
                }
            }
        })
        .collect::<Vec<_>>();

    quote! {
        #errors

        const _: () = {
            use #krate as idem_core;

            #state_impl

            #[automatically_derived]
            impl ::core::fmt::Display for #ident {
                fn fmt(&self, _: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl ::core::str::FromStr for #ident {
                type Err = idem_core::Error;

                fn from_str(_: &str) -> ::core::result::Result<Self, Self::Err> {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            #[allow(dead_code)]
            impl #ident {
                #(#accessors)*

                #[doc = "The diagram (unavailable: the derive reported an error)."]
                #vis fn mermaid() -> &'static str {
                    ::core::unreachable!()
                }

                #[doc = "The diagram (unavailable: the derive reported an error)."]
                #vis fn dot() -> &'static str {
                    ::core::unreachable!()
                }
            }
        };
    }
}
