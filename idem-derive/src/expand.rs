//! Code generation: `impl State`, `Display`, `FromStr` and the inherent
//! functions (one per transition, `mermaid()`, `dot()`).

use proc_macro2::{Span, TokenStream};
use proc_macro_crate::{crate_name, FoundCrate};
use quote::quote;
use syn::{DeriveInput, Ident};

use crate::ast::Machine;
use crate::ctxt::Ctxt;
use crate::sql::{transition_sql, TableSpec, TransitionSpec};
use crate::valid::{self, Binding, Edge, Graph};
use crate::{diagram, fallback};

/// The whole derive: parse, check, generate, or on error the errors and a
/// stub that keeps the user's other code compiling.
pub(crate) fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let machine = Machine::from_ast(&cx, input);
    let graph = valid::resolve(&cx, &machine);
    match (cx.check(), graph) {
        (Ok(()), Some(graph)) => expand(input, &machine, &graph),
        (Err(error), _) => fallback::expand(input, &machine, error),
        (Ok(()), None) => unreachable!("resolve reports an error whenever it yields no graph"),
    }
}

/// The path the generated code reaches idem-core by: `crate = "..."`, else
/// `::idem::__private_core` when the user's crate depends on the facade (a
/// hidden re-export of the whole of idem-core, so nothing the facade adds
/// can shadow a name the generated code uses), else `::idem_core`.
pub(crate) fn crate_path(machine: &Machine<'_>) -> syn::Path {
    if let Some(path) = &machine.attrs.krate {
        return path.clone();
    }
    for (package, lib) in [("idem", "idem"), ("idem-core", "idem_core")] {
        match crate_name(package) {
            Ok(FoundCrate::Name(name)) => return core_path(&name, package),
            // The package itself: its doctests, examples and benches reach
            // the library by its name. (Its own library code would have to
            // say `crate = "crate"`.)
            Ok(FoundCrate::Itself) => return core_path(lib, package),
            Err(_) => {}
        }
    }
    syn::parse_quote!(::idem::__private_core)
}

/// `::name` for idem-core itself, `::name::__private_core` for the facade.
fn core_path(name: &str, package: &str) -> syn::Path {
    let name = Ident::new(name, Span::call_site());
    if package == "idem" {
        syn::parse_quote!(::#name::__private_core)
    } else {
        syn::parse_quote!(::#name)
    }
}

fn expand(input: &DeriveInput, machine: &Machine<'_>, graph: &Graph<'_>) -> TokenStream {
    let ident = machine.ident;
    let vis = &input.vis;
    let krate = crate_path(machine);
    let type_name = machine.name();
    let variants = machine
        .states
        .iter()
        .map(|state| state.ident)
        .collect::<Vec<_>>();
    let values = machine
        .states
        .iter()
        .map(|state| &state.value)
        .collect::<Vec<_>>();
    let initial = graph.initial.iter().map(|&i| variants[i]);
    let transitions = graph
        .transitions
        .iter()
        .map(|edge| transition(machine, graph.table.as_ref(), edge));
    let table = match &graph.table {
        Some(binding) => {
            let Binding {
                name,
                column,
                key,
                history,
            } = binding;
            let history = match history {
                Some(history) => quote!(::core::option::Option::Some(#history)),
                None => quote!(::core::option::Option::None),
            };
            quote! {
                ::core::option::Option::Some(&idem_core::Table {
                    name: #name,
                    column: #column,
                    key: #key,
                    history: #history,
                })
            }
        }
        None => quote!(::core::option::Option::None),
    };
    // Local names a user's constant of the same name cannot capture.
    let value = Ident::new("__value", Span::mixed_site());
    let f = Ident::new("__formatter", Span::mixed_site());
    let accessors = graph
        .transitions
        .iter()
        .enumerate()
        .map(|(i, edge)| accessor(machine, vis, i, edge));
    let mermaid = diagram::mermaid(machine, graph);
    let dot = diagram::dot(machine, graph);
    let mermaid_doc = format!("The state machine as a Mermaid diagram:\n\n```text\n{mermaid}```");
    let dot_doc = format!("The state machine as a Graphviz (DOT) digraph:\n\n```text\n{dot}```");

    quote! {
        const _: () = {
            use #krate as idem_core;

            #[automatically_derived]
            impl idem_core::State for #ident {
                const TYPE_NAME: &'static str = #type_name;
                const ALL: &'static [Self] = &[#(Self::#variants),*];
                const INITIAL: &'static [Self] = &[#(Self::#initial),*];
                const TRANSITIONS: &'static [&'static idem_core::Transition<Self>] = &[#(#transitions),*];
                const TABLE: ::core::option::Option<&'static idem_core::Table> = #table;

                #[inline]
                fn as_str(self) -> &'static str {
                    match self {
                        #(Self::#variants => #values,)*
                    }
                }

                fn parse(#value: &str) -> ::core::result::Result<Self, idem_core::Error> {
                    match #value {
                        #(#values => ::core::result::Result::Ok(Self::#variants),)*
                        _ => ::core::result::Result::Err(idem_core::Error::UnknownState {
                            type_name: #type_name,
                            value: ::std::string::ToString::to_string(#value),
                        }),
                    }
                }
            }

            #[automatically_derived]
            impl ::core::fmt::Display for #ident {
                fn fmt(&self, #f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                    #f.pad(match self {
                        #(Self::#variants => #values,)*
                    })
                }
            }

            #[automatically_derived]
            impl ::core::str::FromStr for #ident {
                type Err = idem_core::Error;

                fn from_str(#value: &str) -> ::core::result::Result<Self, Self::Err> {
                    <Self as idem_core::State>::parse(#value)
                }
            }

            #[automatically_derived]
            #[allow(dead_code)]
            impl #ident {
                #(#accessors)*

                #[doc = #mermaid_doc]
                #vis const fn mermaid() -> &'static str {
                    #mermaid
                }

                #[doc = #dot_doc]
                #vis const fn dot() -> &'static str {
                    #dot
                }
            }
        };
    }
}

/// `&Transition::new("pay", &[Self::Issued], Self::Paid, sql)`.
fn transition(machine: &Machine<'_>, table: Option<&Binding>, edge: &Edge<'_>) -> TokenStream {
    let name = edge.name();
    let sources = edge.sources.iter().map(|&i| machine.states[i].ident);
    let target = machine.states[edge.target].ident;
    let sql = match table {
        Some(binding) => {
            let state_values = machine
                .states
                .iter()
                .map(|s| s.value.clone())
                .collect::<Vec<_>>();
            let machine_name = machine.name();
            let table = TableSpec {
                machine: &machine_name,
                name: &binding.name,
                column: &binding.column,
                key: &binding.key,
                history: binding.history.as_deref(),
                states: &state_values,
            };
            let source_values = edge
                .sources
                .iter()
                .map(|&i| machine.states[i].value.clone())
                .collect::<Vec<_>>();
            let spec = TransitionSpec {
                name: &name,
                sources: &source_values,
                target: &machine.states[edge.target].value,
                assignments: &edge.assignments,
            };
            let sql = transition_sql(&table, &spec);
            quote!(::core::option::Option::Some(&#sql))
        }
        None => quote!(::core::option::Option::None),
    };
    quote! {
        &idem_core::Transition::new(#name, &[#(Self::#sources),*], Self::#target, #sql)
    }
}

/// `pub const fn pay() -> &'static Transition<Self>`.
fn accessor(
    machine: &Machine<'_>,
    vis: &syn::Visibility,
    index: usize,
    edge: &Edge<'_>,
) -> TokenStream {
    let fn_name = edge.name;
    let sources = edge
        .sources
        .iter()
        .map(|&i| format!("`{}`", machine.states[i].name()))
        .collect::<Vec<_>>()
        .join(" | ");
    let target = machine.states[edge.target].name();
    let doc = format!("The `{}` transition: {sources} -> `{target}`.", edge.name());
    quote! {
        #[doc = #doc]
        #vis const fn #fn_name() -> &'static idem_core::Transition<Self> {
            <Self as idem_core::State>::TRANSITIONS[#index]
        }
    }
}
