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
    let mut out = format!("digraph {} {{\n", machine.name());
    for state in &machine.states {
        let _ = writeln!(out, "    {};", state.name());
    }
    out.push_str("    \"[*]\" [shape=point];\n");
    for &initial in &graph.initial {
        let _ = writeln!(out, "    \"[*]\" -> {};", machine.states[initial].name());
    }
    for edge in &graph.transitions {
        for &source in &edge.sources {
            let _ = writeln!(
                out,
                "    {} -> {} [label=\"{}\"];",
                machine.states[source].name(),
                machine.states[edge.target].name(),
                edge.name()
            );
        }
    }
    out.push_str("}\n");
    out
}
