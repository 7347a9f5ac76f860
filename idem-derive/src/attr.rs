//! Parses `#[state_machine(...)]` on the enum and on its variants.

use proc_macro2::{TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, LitStr, Token};

use crate::case::RenameRule;
use crate::ctxt::{did_you_mean, Ctxt};

const ENUM_KEYS: &[&str] = &[
    "table",
    "column",
    "key",
    "history",
    "rename_all",
    "transitions",
    "assign",
    "crate",
];
const VARIANT_KEYS: &[&str] = &["initial", "rename"];

/// A key that may be given once. Remembers where, for "first defined here".
struct Once<T> {
    key: &'static str,
    value: Option<(syn::Path, T)>,
}

impl<T> Once<T> {
    fn new(key: &'static str) -> Self {
        Once { key, value: None }
    }

    fn set(&mut self, cx: &Ctxt, path: &syn::Path, value: T) {
        match &self.value {
            Some((first, _)) => cx.duplicate(
                path,
                first,
                format!("duplicate `{}` key: give it once", self.key),
            ),
            None => self.value = Some((path.clone(), value)),
        }
    }

    fn get(self) -> Option<T> {
        self.value.map(|(_, value)| value)
    }
}

/// The enum's `#[state_machine(...)]` attributes.
pub(crate) struct Container {
    pub table: Option<LitStr>,
    pub column: Option<LitStr>,
    pub key: Option<LitStr>,
    pub history: Option<LitStr>,
    pub rename_all: Option<RenameRule>,
    /// The `transitions` keyword (for spans) and the list.
    pub transitions: Option<(syn::Path, Vec<TransitionDef>)>,
    /// Transitions that did not parse (reported already): their names
    /// when they got that far, for the fallback stub.
    pub malformed: Vec<Option<Ident>>,
    /// An attribute stopped parsing at an error (reported already), so
    /// keys after it, `transitions` among them, may be missing.
    pub incomplete: bool,
    pub assigns: Vec<Assign>,
    pub krate: Option<syn::Path>,
}

/// `name: A | B -> C` or `name: _ -> C`.
pub(crate) struct TransitionDef {
    pub name: Ident,
    pub sources: Sources,
    pub target: Ident,
}

pub(crate) enum Sources {
    /// `_`: every state except the target.
    Any(Token![_]),
    States(Vec<Ident>),
}

/// One `column = "SQL expression"` of `assign(transition, ...)`.
pub(crate) struct Assign {
    pub transition: Ident,
    pub column: Ident,
    pub expr: LitStr,
}

/// A variant's `#[state_machine(...)]` attributes.
#[derive(Default)]
pub(crate) struct VariantAttrs {
    pub initial: bool,
    pub rename: Option<LitStr>,
}

impl Container {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut table = Once::new("table");
        let mut column = Once::new("column");
        let mut key = Once::new("key");
        let mut history = Once::new("history");
        let mut rename_all = Once::new("rename_all");
        let mut transitions = Once::new("transitions");
        let mut krate = Once::new("crate");
        let mut assigns = Vec::new();
        let mut malformed = Vec::new();
        let mut incomplete = false;

        for attr in state_machine_attrs(attrs) {
            let parsed = attr.parse_nested_meta(|meta| {
                let path = &meta.path;
                if path.is_ident("table") {
                    if let Some(lit) = string(cx, &meta)? {
                        table.set(cx, path, lit);
                    }
                } else if path.is_ident("column") {
                    if let Some(lit) = string(cx, &meta)? {
                        column.set(cx, path, lit);
                    }
                } else if path.is_ident("key") {
                    if let Some(lit) = string(cx, &meta)? {
                        key.set(cx, path, lit);
                    }
                } else if path.is_ident("history") {
                    if let Some(lit) = string(cx, &meta)? {
                        history.set(cx, path, lit);
                    }
                } else if path.is_ident("rename_all") {
                    let Some(name) = string(cx, &meta)? else {
                        return Ok(());
                    };
                    match RenameRule::from_name(&name.value()) {
                        Some(rule) => rename_all.set(cx, path, rule),
                        None => cx.error_spanned_by(
                            &name,
                            format!(
                                "unknown rename_all rule `{}`:{} expected one of {}",
                                name.value(),
                                did_you_mean(
                                    &name.value(),
                                    RenameRule::NAMES.iter().map(|(rule, _)| rule)
                                ),
                                RenameRule::expected()
                            ),
                        ),
                    }
                } else if path.is_ident("transitions") {
                    if !parenthesized(cx, &meta, "transitions(pay: Issued -> Paid, ...)")? {
                        // Present but unreadable: not "missing" as well.
                        malformed.push(None);
                        transitions.set(cx, path, Vec::new());
                        return Ok(());
                    }
                    let content;
                    syn::parenthesized!(content in meta.input);
                    let list = parse_transitions(cx, &content, &mut malformed)?;
                    if list.is_empty() && malformed.is_empty() {
                        cx.error_spanned_by(
                            path,
                            "`transitions(...)` is empty: list them as `name: From -> To`",
                        );
                    }
                    transitions.set(cx, path, list);
                } else if path.is_ident("assign") {
                    if !parenthesized(cx, &meta, "assign(pay, paid_at = \"CURRENT_TIMESTAMP\")")? {
                        return Ok(());
                    }
                    let content;
                    syn::parenthesized!(content in meta.input);
                    assigns.extend(parse_assign(&content)?);
                } else if path.is_ident("crate") {
                    let Some(lit) = string(cx, &meta)? else {
                        return Ok(());
                    };
                    match lit.parse::<syn::Path>() {
                        Ok(crate_path) => krate.set(cx, path, crate_path),
                        Err(_) => cx.error_spanned_by(
                            &lit,
                            format!(
                                "`crate` takes the path of idem or idem-core, e.g. \"::idem\" \
                                 or \"crate::reexports::idem\"; {:?} is not a path",
                                lit.value()
                            ),
                        ),
                    }
                } else if path.is_ident("initial") {
                    cx.error_spanned_by(
                        path,
                        "`initial` goes on a variant, not on the enum: \
                         write #[state_machine(initial)] above the state",
                    );
                    skip_value(&meta)?;
                } else if path.is_ident("rename") {
                    cx.error_spanned_by(
                        path,
                        "`rename` goes on a variant, not on the enum: write \
                         #[state_machine(rename = \"...\")] above the state, or use `rename_all`",
                    );
                    skip_value(&meta)?;
                } else {
                    let name = path_name(path);
                    cx.error_spanned_by(
                        path,
                        format!(
                            "unknown state_machine key `{name}`:{} expected one of {}",
                            did_you_mean(&name, ENUM_KEYS),
                            ENUM_KEYS.join(", ")
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
                incomplete = true;
            }
        }

        Container {
            table: table.get(),
            column: column.get(),
            key: key.get(),
            history: history.get(),
            rename_all: rename_all.get(),
            transitions: transitions.value,
            malformed,
            incomplete,
            assigns,
            krate: krate.get(),
        }
    }
}

impl VariantAttrs {
    pub(crate) fn from_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Self {
        let mut initial = Once::new("initial");
        let mut rename = Once::new("rename");
        for attr in state_machine_attrs(attrs) {
            let parsed = attr.parse_nested_meta(|meta| {
                let path = &meta.path;
                if path.is_ident("initial") {
                    initial.set(cx, path, ());
                } else if path.is_ident("rename") {
                    if let Some(lit) = string(cx, &meta)? {
                        rename.set(cx, path, lit);
                    }
                } else {
                    let name = path_name(path);
                    cx.error_spanned_by(
                        path,
                        format!(
                            "unknown state_machine key `{name}` on a variant:{} expected one of {}",
                            did_you_mean(&name, VARIANT_KEYS),
                            VARIANT_KEYS.join(", ")
                        ),
                    );
                    skip_value(&meta)?;
                }
                Ok(())
            });
            if let Err(error) = parsed {
                cx.syn_error(error);
            }
        }
        VariantAttrs {
            initial: initial.get().is_some(),
            rename: rename.get(),
        }
    }
}

fn state_machine_attrs(attrs: &[Attribute]) -> impl Iterator<Item = &Attribute> {
    attrs
        .iter()
        .filter(|attr| attr.path().is_ident("state_machine"))
}

fn path_name(path: &syn::Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}

/// The string value of `key = "..."`. Any other value is reported and
/// consumed, so the keys after it are still checked.
fn string(cx: &Ctxt, meta: &ParseNestedMeta<'_>) -> syn::Result<Option<LitStr>> {
    let key = path_name(&meta.path);
    let message = format!("`{key}` takes a string literal: {key} = \"...\"");
    if !meta.input.peek(Token![=]) {
        cx.error_spanned_by(&meta.path, message);
        skip_value(meta)?;
        return Ok(None);
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        return value.parse().map(Some);
    }
    let found: syn::Expr = value.parse()?;
    cx.error_spanned_by(found, message);
    Ok(None)
}

/// Whether a list key is followed by its parentheses; if not, reports the
/// expected form and consumes the value.
fn parenthesized(cx: &Ctxt, meta: &ParseNestedMeta<'_>, usage: &str) -> syn::Result<bool> {
    if meta.input.peek(syn::token::Paren) {
        return Ok(true);
    }
    cx.error_spanned_by(
        &meta.path,
        format!(
            "`{}` takes a parenthesized list: {usage}",
            path_name(&meta.path)
        ),
    );
    skip_value(meta)?;
    Ok(false)
}

/// Consumes the value of a key that was reported as misplaced or unknown,
/// so the keys after it are still checked.
fn skip_value(meta: &ParseNestedMeta<'_>) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        let content;
        syn::parenthesized!(content in meta.input);
        content.parse::<TokenStream>()?;
    }
    Ok(())
}

/// The comma-separated transitions. A malformed one is reported and
/// skipped up to the next comma, so the others are still checked.
fn parse_transitions(
    cx: &Ctxt,
    input: ParseStream<'_>,
    malformed: &mut Vec<Option<Ident>>,
) -> syn::Result<Vec<TransitionDef>> {
    let mut list = Vec::new();
    while !input.is_empty() {
        let name = input.fork().parse::<Ident>().ok();
        match input.parse::<TransitionDef>() {
            Ok(def) => list.push(def),
            Err(error) => {
                cx.syn_error(error);
                malformed.push(name);
                skip_past_comma(input)?;
                continue;
            }
        }
        if !input.is_empty() {
            if let Err(error) = input.parse::<Token![,]>() {
                cx.syn_error(error);
                skip_past_comma(input)?;
            }
        }
    }
    Ok(list)
}

fn skip_past_comma(input: ParseStream<'_>) -> syn::Result<()> {
    input.step(|cursor| {
        let mut rest = *cursor;
        while let Some((tt, next)) = rest.token_tree() {
            rest = next;
            if matches!(&tt, TokenTree::Punct(p) if p.as_char() == ',') {
                break;
            }
        }
        Ok(((), rest))
    })
}

impl Parse for TransitionDef {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let name: Ident = input.parse()?;
        input.parse::<Token![:]>()?;
        let sources = if input.peek(Token![_]) {
            Sources::Any(input.parse()?)
        } else {
            let mut states = vec![input.parse()?];
            while input.peek(Token![|]) {
                input.parse::<Token![|]>()?;
                states.push(input.parse()?);
            }
            Sources::States(states)
        };
        input.parse::<Token![->]>()?;
        let target = input.parse()?;
        Ok(TransitionDef {
            name,
            sources,
            target,
        })
    }
}

/// `assign(transition, column = "expr", ...)`.
fn parse_assign(input: ParseStream<'_>) -> syn::Result<Vec<Assign>> {
    let transition: Ident = input.parse()?;
    let mut assigns = Vec::new();
    while !input.is_empty() {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        let column = input.call(Ident::parse_any)?;
        input.parse::<Token![=]>()?;
        let expr = input.parse()?;
        assigns.push(Assign {
            transition: transition.clone(),
            column,
            expr,
        });
    }
    if assigns.is_empty() {
        return Err(syn::Error::new_spanned(
            &transition,
            format!("`assign({transition})` sets nothing: add `column = \"SQL expression\"`"),
        ));
    }
    Ok(assigns)
}
