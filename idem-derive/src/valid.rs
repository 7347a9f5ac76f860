//! Cross-cutting checks, and the resolved graph `expand` generates from:
//! every state named in a transition exists, names and edges are unique,
//! no self-loops, every state is reachable, SQL identifiers are safe.

use std::collections::{BTreeSet, HashMap};

use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, LitStr};

use crate::ast::Machine;
use crate::attr::{Assign, Sources, TransitionDef};
use crate::ctxt::{did_you_mean, Ctxt};

/// Names of the inherent functions the derive generates besides one per
/// transition.
pub(crate) const RESERVED: &[&str] = &["mermaid", "dot"];

pub(crate) struct Graph<'a> {
    /// Indices into `Machine::states`.
    pub initial: Vec<usize>,
    pub transitions: Vec<Edge<'a>>,
    pub table: Option<Binding>,
}

pub(crate) struct Edge<'a> {
    pub name: &'a Ident,
    pub sources: Vec<usize>,
    pub target: usize,
    /// `(column, SQL expression)` set by the same UPDATE.
    pub assignments: Vec<(String, String)>,
}

impl Edge<'_> {
    /// The transition's name as written, without `r#`.
    pub(crate) fn name(&self) -> String {
        self.name.unraw().to_string()
    }
}

pub(crate) struct Binding {
    pub name: String,
    pub column: String,
    pub key: String,
    pub history: Option<String>,
}

/// Checks `machine` and resolves its transitions; `None` when there is no
/// graph to generate from (the reasons are reported to `cx`).
pub(crate) fn resolve<'a>(cx: &Ctxt, machine: &'a Machine<'_>) -> Option<Graph<'a>> {
    check_values(cx, machine);
    let table = binding(cx, machine);
    // Not an enum, or no variants: already reported, and there is nothing
    // to resolve the transitions against.
    if machine.states.is_empty() {
        return None;
    }
    let Some((_, defs)) = &machine.attrs.transitions else {
        if machine.attrs.incomplete {
            return None;
        }
        cx.error_spanned_by(
            machine.ident,
            "missing `#[state_machine(transitions(...))]`: list the transitions as \
             `name: From -> To`, e.g. `pay: Issued -> Paid`",
        );
        return None;
    };
    check_names(cx, defs);
    // Every transition is resolved (and its unknown states reported) before
    // giving up on the graph.
    let resolved = defs
        .iter()
        .map(|def| edge(cx, machine, def))
        .collect::<Vec<_>>();
    let assigned = assignments(cx, machine, table.as_ref(), defs);
    let mut transitions = resolved.into_iter().collect::<Option<Vec<_>>>()?;
    for (edge, assignments) in transitions.iter_mut().zip(assigned) {
        edge.assignments = assignments;
    }
    check_edges(cx, machine, defs, &transitions);
    // With a transition that did not parse, states it would have reached
    // would be reported as unreachable.
    if !machine.attrs.malformed.is_empty() {
        return None;
    }
    let initial = initial_states(machine);
    check_reachable(cx, machine, &initial, &transitions);
    Some(Graph {
        initial,
        transitions,
        table,
    })
}

/// Stored values: non-empty, printable, one per state.
fn check_values(cx: &Ctxt, machine: &Machine<'_>) {
    let mut seen: HashMap<&str, &Ident> = HashMap::new();
    for state in &machine.states {
        let at = state
            .rename
            .as_ref()
            .map_or_else(|| state.ident.to_token_stream(), ToTokens::to_token_stream);
        if state.value.is_empty() {
            cx.error_spanned_by(
                &at,
                "a state's stored value cannot be empty: give `rename` a non-empty string",
            );
        } else if state.value.chars().any(char::is_control) {
            cx.error_spanned_by(
                &at,
                format!(
                    "the stored value {:?} contains a control character: use printable text",
                    state.value
                ),
            );
        } else if state.value.contains('\\') {
            cx.error_spanned_by(
                &at,
                format!(
                    "the stored value {:?} contains a backslash, which the SQL literal of the state \
                     would not keep on every server: MySQL and MariaDB read it as an escape unless \
                     NO_BACKSLASH_ESCAPES is set, and so does PostgreSQL with \
                     standard_conforming_strings off; choose a value without `\\`",
                    state.value
                ),
            );
        } else if let Some(first) = seen.get(state.value.as_str()) {
            cx.duplicate(
                &at,
                first,
                format!(
                    "states `{first}` and `{}` are both stored as \"{}\": rename one of them",
                    state.ident, state.value
                ),
            );
        } else {
            seen.insert(&state.value, state.ident);
        }
    }
}

/// `table`, `column`, `key` and `history`, checked to be safe identifiers.
fn binding(cx: &Ctxt, machine: &Machine<'_>) -> Option<Binding> {
    let attrs = &machine.attrs;
    let Some(table) = &attrs.table else {
        for (key, lit) in [
            ("column", &attrs.column),
            ("key", &attrs.key),
            ("history", &attrs.history),
        ] {
            if let Some(lit) = lit {
                cx.error_spanned_by(
                    lit,
                    format!(
                        "`{key}` needs `table = \"...\"`: name the table the state is stored in"
                    ),
                );
            }
        }
        return None;
    };
    let ident = |lit: &LitStr, what: &str, qualified: bool| {
        let value = lit.value();
        if !is_sql_identifier(&value, qualified) {
            let form = if qualified {
                "[A-Za-z_][A-Za-z0-9_]*, optionally schema-qualified as `schema.name`"
            } else {
                "[A-Za-z_][A-Za-z0-9_]*"
            };
            cx.error_spanned_by(
                lit,
                format!("{what} {value:?} is not a safe SQL identifier: use {form}"),
            );
        }
        value
    };
    let default = |lit: &Option<LitStr>, what: &str, fallback: &str| match lit {
        Some(lit) => ident(lit, what, false),
        None => fallback.to_owned(),
    };
    Some(Binding {
        name: ident(table, "table", true),
        column: default(&attrs.column, "column", "status"),
        key: default(&attrs.key, "key", "id"),
        history: attrs
            .history
            .as_ref()
            .map(|lit| ident(lit, "history table", true)),
    })
}

pub(crate) fn is_sql_identifier(value: &str, qualified: bool) -> bool {
    let part = |part: &str| {
        let mut chars = part.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    match value.split_once('.') {
        Some((schema, name)) if qualified => part(schema) && part(name),
        Some(_) => false,
        None => part(value),
    }
}

/// Transition names: unique, and not one of the generated functions.
fn check_names(cx: &Ctxt, defs: &[TransitionDef]) {
    let mut seen: HashMap<String, &Ident> = HashMap::new();
    for def in defs {
        let name = def.name.unraw().to_string();
        if RESERVED.contains(&name.as_str()) {
            cx.error_spanned_by(
                &def.name,
                format!(
                    "a transition cannot be named `{name}`: the derive generates `{name}()` \
                     (the diagram); choose another name"
                ),
            );
        }
        match seen.get(&name) {
            Some(first) => cx.duplicate(
                &def.name,
                first,
                format!("duplicate transition name `{name}`: each transition needs its own name"),
            ),
            None => {
                seen.insert(name, &def.name);
            }
        }
    }
}

/// Resolves one transition's states; reports unknown ones and self-loops.
fn edge<'a>(cx: &Ctxt, machine: &Machine<'_>, def: &'a TransitionDef) -> Option<Edge<'a>> {
    let target = state_index(cx, machine, def, &def.target);
    let sources = match &def.sources {
        Sources::Any(_) => Some(
            (0..machine.states.len())
                .filter(|&i| Some(i) != target)
                .collect::<Vec<_>>(),
        ),
        Sources::States(states) => {
            let resolved = states
                .iter()
                .map(|ident| state_index(cx, machine, def, ident))
                .collect::<Vec<_>>();
            resolved.into_iter().collect::<Option<Vec<_>>>()
        }
    };
    let (sources, target) = (sources?, target?);
    if let Sources::States(idents) = &def.sources {
        for (ident, &source) in idents.iter().zip(&sources) {
            if source == target {
                cx.error_spanned_by(
                    ident,
                    format!(
                        "transition `{}` goes from `{ident}` to itself: a self-loop cannot be \
                         idempotent by state (a retry would apply it again); remove `{ident}` \
                         from its sources and use an idempotency key for this operation instead",
                        def.name
                    ),
                );
            }
        }
        for (i, ident) in idents.iter().enumerate() {
            if let Some(first) = idents[..i].iter().find(|other| *other == ident) {
                cx.duplicate(
                    ident,
                    first,
                    format!(
                        "`{ident}` is listed twice among the sources of `{}`",
                        def.name
                    ),
                );
            }
        }
    }
    Some(Edge {
        name: &def.name,
        sources,
        target,
        assignments: Vec::new(),
    })
}

fn state_index(
    cx: &Ctxt,
    machine: &Machine<'_>,
    def: &TransitionDef,
    ident: &Ident,
) -> Option<usize> {
    let found = machine.states.iter().position(|state| state.ident == ident);
    if found.is_none() {
        let names = machine.states.iter().map(|state| state.name());
        let known = names
            .clone()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>();
        cx.error_spanned_by(
            ident,
            format!(
                "unknown state `{ident}` in transition `{}`:{} {} has the states {}",
                def.name,
                did_you_mean(&ident.to_string(), names),
                machine.ident,
                known.join(", ")
            ),
        );
    }
    found
}

/// The same `source -> target` edge in two transitions would make the
/// transition a row took ambiguous.
fn check_edges(cx: &Ctxt, machine: &Machine<'_>, defs: &[TransitionDef], edges: &[Edge<'_>]) {
    let mut seen: HashMap<(usize, usize), &TransitionDef> = HashMap::new();
    for (def, edge) in defs.iter().zip(edges) {
        for &source in &edge.sources {
            let key = (source, edge.target);
            match seen.get(&key) {
                Some(first) if first.name != def.name => cx.duplicate(
                    source_token(machine, def, source),
                    source_token(machine, first, source),
                    format!(
                        "duplicate edge `{} -> {}`: transitions `{}` and `{}` both take it; \
                         keep it in one transition",
                        machine.states[source].ident,
                        machine.states[edge.target].ident,
                        first.name,
                        def.name
                    ),
                ),
                Some(_) => {}
                None => {
                    seen.insert(key, def);
                }
            }
        }
    }
}

/// The token naming `source` in `def`: the state itself or the `_`.
fn source_token(
    machine: &Machine<'_>,
    def: &TransitionDef,
    source: usize,
) -> proc_macro2::TokenStream {
    match &def.sources {
        Sources::Any(underscore) => underscore.to_token_stream(),
        Sources::States(states) => states
            .iter()
            .find(|ident| *ident == machine.states[source].ident)
            .map_or_else(|| def.name.to_token_stream(), ToTokens::to_token_stream),
    }
}

/// `assign(transition, column = "expr")`, per transition (in `defs` order):
/// a known transition, a safe column, not the state column, each column
/// once per transition, and no expression reading a column another
/// assignment of the transition writes.
fn assignments(
    cx: &Ctxt,
    machine: &Machine<'_>,
    table: Option<&Binding>,
    defs: &[TransitionDef],
) -> Vec<Vec<(String, String)>> {
    let mut accepted: Vec<Vec<&Assign>> = vec![Vec::new(); defs.len()];
    let mut seen: HashMap<(usize, String), &Ident> = HashMap::new();
    for assign in &machine.attrs.assigns {
        let transition = assign.transition.unraw().to_string();
        let column = assign.column.unraw().to_string();
        let names = defs.iter().map(|def| def.name.unraw().to_string());
        let Some(index) = names.clone().position(|name| name == transition) else {
            let mut known = Vec::new();
            for name in names.clone().map(|name| format!("`{name}`")) {
                if !known.contains(&name) {
                    known.push(name);
                }
            }
            cx.error_spanned_by(
                &assign.transition,
                format!(
                    "`assign` names the unknown transition `{transition}`:{} the transitions are {}",
                    did_you_mean(&transition, names),
                    known.join(", ")
                ),
            );
            continue;
        };
        let Some(table) = table else {
            cx.error_spanned_by(
                &assign.transition,
                "`assign` needs `table = \"...\"`: extra assignments are made by the transition's UPDATE",
            );
            continue;
        };
        if !is_sql_identifier(&column, false) {
            cx.error_spanned_by(
                &assign.column,
                format!(
                    "column {column:?} is not a safe SQL identifier: use [A-Za-z_][A-Za-z0-9_]*"
                ),
            );
        } else if column == table.column {
            cx.error_spanned_by(
                &assign.column,
                format!(
                    "`{column}` is the state column: the transition already sets it to its target"
                ),
            );
        } else if let Some(first) = seen.get(&(index, column.clone())) {
            cx.duplicate(
                &assign.column,
                first,
                format!("`{column}` is assigned twice by transition `{transition}`"),
            );
        } else if assign.expr.value().trim().is_empty() {
            cx.error_spanned_by(
                &assign.expr,
                "the SQL expression is empty: write the value to assign, e.g. \"CURRENT_TIMESTAMP\"",
            );
        } else if let Some(reason) = unportable(&assign.expr.value()) {
            cx.error_spanned_by(
                &assign.expr,
                format!(
                    "this expression for `{column}` is sent as written to PostgreSQL, MySQL and \
                     SQLite, and {reason}"
                ),
            );
        } else {
            seen.insert((index, column.clone()), &assign.column);
            accepted[index].push(assign);
        }
    }
    for assigns in &accepted {
        check_reads(cx, assigns);
    }
    accepted
        .into_iter()
        .map(|assigns| {
            assigns
                .into_iter()
                .map(|a| (a.column.unraw().to_string(), a.expr.value()))
                .collect()
        })
        .collect()
}

/// An extra assignment must not read a column another assignment of the
/// same transition writes: MySQL and MariaDB evaluate `SET` from left to
/// right (a later right-hand side sees the new value), PostgreSQL and
/// SQLite read the row as it was, and no order of the two assignments
/// means the same on all three when each reads the other. (Reading the
/// state column is fine: it is assigned last.)
fn check_reads(cx: &Ctxt, assigns: &[&Assign]) {
    for reader in assigns {
        let read = referenced_names(&reader.expr.value());
        for writer in assigns {
            let column = writer.column.unraw().to_string();
            if std::ptr::eq(*reader, *writer) || !read.contains(&column.to_ascii_lowercase()) {
                continue;
            }
            let mut error = syn::Error::new_spanned(
                &reader.expr,
                format!(
                    "this expression for `{}` reads `{column}`, which transition `{}` also assigns: \
                     MySQL and MariaDB would read the new `{column}` and PostgreSQL and SQLite \
                     the old one; compute it from columns the transition does not assign, \
                     or assign `{column}` in another transition",
                    reader.column.unraw(),
                    writer.transition.unraw()
                ),
            );
            error.combine(syn::Error::new_spanned(
                &writer.column,
                format!("`{column}` is assigned here"),
            ));
            cx.syn_error(error);
        }
    }
}

/// Why an `assign` expression would not mean the same on every backend and
/// in every server mode, if it would not: a backslash (an escape in
/// MySQL's strings unless NO_BACKSLASH_ESCAPES is set, and in
/// PostgreSQL's with standard_conforming_strings off; `\N` is NULL in
/// MySQL), or a double quote outside a string literal (a quoted name on
/// PostgreSQL and SQLite, a string on MySQL unless ANSI_QUOTES is set).
fn unportable(expr: &str) -> Option<&'static str> {
    if expr.contains('\\') {
        return Some(
            "a backslash means different things there: MySQL and MariaDB read it as an \
             escape unless NO_BACKSLASH_ESCAPES is set, and so does PostgreSQL with \
             standard_conforming_strings off; write the expression without `\\`",
        );
    }
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '\'' => in_string = !in_string,
            '"' if !in_string => {
                return Some(
                    "a double-quoted name is a column on PostgreSQL and SQLite but a string on \
                     MySQL and MariaDB unless ANSI_QUOTES is set; write the name unquoted, or \
                     a string in single quotes",
                )
            }
            _ => {}
        }
    }
    None
}

/// The names an SQL expression may read a column by, lower-cased: bare
/// words (`status`, `t.status`) and quoted identifiers (`"status"`,
/// `` `status` ``, `[status]`), but not the insides of string literals or
/// comments, numbers, or words directly followed by `(` (function calls).
/// Deliberately broad: a keyword spelled like a column counts too.
pub(crate) fn referenced_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let until = |from: usize, close: char| {
        (from..chars.len())
            .find(|&j| chars[j] == close)
            .unwrap_or(chars.len())
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' => i = until(i + 1, '\'') + 1,
            '"' | '`' | '[' => {
                let close = match c {
                    '[' => ']',
                    other => other,
                };
                let end = until(i + 1, close);
                names.insert(chars[i + 1..end].iter().collect::<String>().to_lowercase());
                i = end + 1;
            }
            '-' if chars.get(i + 1) == Some(&'-') => i = until(i, '\n') + 1,
            '/' if chars.get(i + 1) == Some(&'*') => {
                i = (i + 2..chars.len())
                    .find(|&j| chars[j] == '*' && chars.get(j + 1) == Some(&'/'))
                    .map_or(chars.len(), |j| j + 2);
            }
            c if c.is_alphanumeric() || c == '_' => {
                let end = (i..chars.len())
                    .find(|&j| !(chars[j].is_alphanumeric() || chars[j] == '_' || chars[j] == '$'))
                    .unwrap_or(chars.len());
                let call = chars[end..].iter().find(|c| !c.is_whitespace()) == Some(&'(');
                if !c.is_ascii_digit() && !call {
                    names.insert(chars[i..end].iter().collect::<String>().to_lowercase());
                }
                i = end;
            }
            _ => i += 1,
        }
    }
    names
}

/// The states marked `initial`, or the first state when none is.
fn initial_states(machine: &Machine<'_>) -> Vec<usize> {
    let marked = (0..machine.states.len())
        .filter(|&i| machine.states[i].initial)
        .collect::<Vec<_>>();
    if marked.is_empty() && !machine.states.is_empty() {
        vec![0]
    } else {
        marked
    }
}

fn check_reachable(cx: &Ctxt, machine: &Machine<'_>, initial: &[usize], edges: &[Edge<'_>]) {
    let mut reached = initial.iter().copied().collect::<BTreeSet<_>>();
    let mut frontier = initial.to_vec();
    while let Some(state) = frontier.pop() {
        for edge in edges.iter().filter(|edge| edge.sources.contains(&state)) {
            if reached.insert(edge.target) {
                frontier.push(edge.target);
            }
        }
    }
    let from = initial
        .iter()
        .map(|&i| format!("`{}`", machine.states[i].ident))
        .collect::<Vec<_>>()
        .join(", ");
    for (i, state) in machine.states.iter().enumerate() {
        if !reached.contains(&i) {
            cx.error_spanned_by(
                state.ident,
                format!(
                    "state `{}` is unreachable from the initial state {from}: add a transition \
                     into it, or mark it #[state_machine(initial)] if rows are created in it",
                    state.ident
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{is_sql_identifier, referenced_names};

    fn names(expr: &str) -> Vec<String> {
        referenced_names(expr).into_iter().collect()
    }

    #[test]
    fn column_names_are_found_bare_qualified_and_quoted_in_any_case() {
        assert_eq!(names("status"), ["status"]);
        assert_eq!(names("t.Status + 1"), ["status", "t"]);
        assert_eq!(names("\"Paid_At\" || `b` || [c]"), ["b", "c", "paid_at"]);
        assert_eq!(
            names("CASE WHEN a > 0 THEN b END"),
            ["a", "b", "case", "end", "then", "when"]
        );
    }

    #[test]
    fn literals_comments_numbers_and_calls_are_not_names() {
        assert!(names("'status' || 'it''s b'").is_empty());
        assert!(names("now() -- b\n").is_empty());
        assert!(names("coalesce (/* b */ 1e5, 2)").is_empty());
    }

    #[test]
    fn plain_identifiers_are_safe() {
        for ident in ["invoices", "_x", "Invoice_2", "a"] {
            assert!(is_sql_identifier(ident, false), "{ident}");
            assert!(is_sql_identifier(ident, true), "{ident}");
        }
    }

    #[test]
    fn a_schema_is_allowed_only_where_qualified() {
        assert!(is_sql_identifier("billing.invoices", true));
        assert!(!is_sql_identifier("billing.invoices", false));
    }

    #[test]
    fn anything_else_is_unsafe() {
        for ident in [
            "",
            "1a",
            "a b",
            "a-b",
            "a;b",
            "a\"b",
            "a'b",
            "a`b",
            ".a",
            "a.",
            "a..b",
            "a.b.c",
            "caf\u{e9}",
            "a\n",
        ] {
            assert!(!is_sql_identifier(ident, true), "{ident:?}");
        }
    }
}
