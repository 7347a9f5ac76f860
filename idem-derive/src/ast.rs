//! The derive input as idem sees it: the enum, its states and its
//! attributes, each keeping the `syn` node it came from for spans.

use syn::ext::IdentExt;
use syn::{Data, DeriveInput, Fields, Ident, LitStr};

use crate::attr::{Container, VariantAttrs};
use crate::case::RenameRule;
use crate::ctxt::Ctxt;

pub(crate) struct Machine<'a> {
    pub ident: &'a Ident,
    pub attrs: Container,
    pub states: Vec<StateDef<'a>>,
}

pub(crate) struct StateDef<'a> {
    pub ident: &'a Ident,
    pub initial: bool,
    /// The `rename` literal, when given (for spans).
    pub rename: Option<LitStr>,
    /// The value stored in the column.
    pub value: String,
}

impl<'a> Machine<'a> {
    /// Reads the input, reporting every problem of its shape to `cx`.
    pub(crate) fn from_ast(cx: &Ctxt, input: &'a DeriveInput) -> Self {
        let attrs = Container::from_attrs(cx, &input.attrs);
        if !input.generics.params.is_empty() {
            cx.error_spanned_by(
                &input.generics,
                "a StateMachine enum cannot be generic: its states are stored as plain strings; \
                 remove the generic parameters",
            );
        }
        let states = match &input.data {
            Data::Enum(data) => data
                .variants
                .iter()
                .map(|variant| StateDef::from_ast(cx, variant, attrs.rename_all))
                .collect(),
            Data::Struct(data) => {
                cx.error_spanned_by(
                    data.struct_token,
                    "StateMachine can only be derived for an enum whose unit variants are the states",
                );
                Vec::new()
            }
            Data::Union(data) => {
                cx.error_spanned_by(
                    data.union_token,
                    "StateMachine can only be derived for an enum whose unit variants are the states",
                );
                Vec::new()
            }
        };
        if matches!(input.data, Data::Enum(_)) && states.is_empty() {
            cx.error_spanned_by(
                &input.ident,
                "a StateMachine enum needs at least one variant: each variant is a state",
            );
        }
        Machine {
            ident: &input.ident,
            attrs,
            states,
        }
    }

    /// The enum's name as written, without `r#`.
    pub(crate) fn name(&self) -> String {
        self.ident.unraw().to_string()
    }
}

impl<'a> StateDef<'a> {
    /// The variant's name as written, without `r#`.
    pub(crate) fn name(&self) -> String {
        self.ident.unraw().to_string()
    }

    fn from_ast(cx: &Ctxt, variant: &'a syn::Variant, rule: Option<RenameRule>) -> Self {
        if !matches!(variant.fields, Fields::Unit) {
            cx.error_spanned_by(
                &variant.fields,
                format!(
                    "state `{}` has fields: a StateMachine state is a unit variant, stored as one string",
                    variant.ident
                ),
            );
        }
        let attrs = VariantAttrs::from_attrs(cx, &variant.attrs);
        let value = match &attrs.rename {
            Some(rename) => rename.value(),
            None => rule
                .unwrap_or(RenameRule::Snake)
                .apply(&variant.ident.unraw().to_string()),
        };
        StateDef {
            ident: &variant.ident,
            initial: attrs.initial,
            rename: attrs.rename,
            value,
        }
    }
}
