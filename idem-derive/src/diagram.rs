//! The state machine as a Mermaid `stateDiagram-v2` and a Graphviz digraph,
//! rendered at compile time.

use std::fmt::Write;

use crate::ast::Machine;
use crate::valid::Graph;

/// ```text
/// stateDiagram-v2
///     Draft
///     Issued
///     [*] --> Draft
///     Draft --> Issued: issue
/// ```
pub(crate) fn mermaid(machine: &Machine<'_>, graph: &Graph<'_>) -> String {
    let mut out = String::from("stateDiagram-v2\n");
    for state in &machine.states {
        let _ = writeln!(out, "    {}", state.name());
    }
    for &initial in &graph.initial {
        let _ = writeln!(out, "    [*] --> {}", machine.states[initial].name());
    }
    for edge in &graph.transitions {
        for &source in &edge.sources {
            let _ = writeln!(
                out,
                "    {} --> {}: {}",
                machine.states[source].name(),
                machine.states[edge.target].name(),
                edge.name()
            );
        }
    }
    out
}

/// ```text
/// digraph InvoiceStatus {
///     Draft;
///     Issued;
///     "[*]" [shape=point];
///     "[*]" -> Draft;
///     Draft -> Issued [label="issue"];
/// }
/// ```
pub(crate) fn dot(machine: &Machine<'_>, graph: &Graph<'_>) -> String {
    let id = |i: usize| dot_id(&machine.states[i].name());
    let mut out = format!("digraph {} {{\n", dot_id(&machine.name()));
    for i in 0..machine.states.len() {
        let _ = writeln!(out, "    {};", id(i));
    }
    out.push_str("    \"[*]\" [shape=point];\n");
    for &initial in &graph.initial {
        let _ = writeln!(out, "    \"[*]\" -> {};", id(initial));
    }
    for edge in &graph.transitions {
        for &source in &edge.sources {
            let _ = writeln!(
                out,
                "    {} -> {} [label=\"{}\"];",
                id(source),
                id(edge.target),
                edge.name()
            );
        }
    }
    out.push_str("}\n");
    out
}

/// A Rust identifier as a DOT ID: as is, unless it is one of DOT's
/// (case-insensitive) keywords, which must be quoted.
fn dot_id(name: &str) -> String {
    const KEYWORDS: &[&str] = &["node", "edge", "graph", "digraph", "subgraph", "strict"];
    if KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(name)) {
        format!("\"{name}\"")
    } else {
        name.to_owned()
    }
}
