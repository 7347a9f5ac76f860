//! `mermaid()` and `dot()` list every state and every edge: both diagrams
//! are parsed back and compared with the transition table.

use std::collections::BTreeSet;

use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue:  Draft          -> Issued,
    pay:    Issued         -> Paid,
    void:   Draft | Issued -> Void,
    refund: Paid           -> Refunded,
    cancel: _              -> Cancelled,
))]
enum InvoiceStatus {
    #[state_machine(initial)]
    Draft,
    #[state_machine(initial, rename = "imported")]
    Issued,
    Paid,
    Void,
    Refunded,
    Cancelled,
}

type Edges = BTreeSet<(String, String, String)>;

/// `(from, to, transition)` for every edge of the table, wildcards expanded.
fn table_edges<S: State>() -> Edges {
    S::TRANSITIONS
        .iter()
        .flat_map(|t| {
            t.sources().iter().map(move |from| {
                (
                    format!("{from:?}"),
                    format!("{:?}", t.target()),
                    t.name().to_owned(),
                )
            })
        })
        .collect()
}

fn state_names<S: State>() -> BTreeSet<String> {
    S::ALL.iter().map(|s| format!("{s:?}")).collect()
}

fn initial_names<S: State>() -> BTreeSet<String> {
    S::INITIAL.iter().map(|s| format!("{s:?}")).collect()
}

#[test]
fn mermaid_lists_every_state_initial_marker_and_edge() {
    let text = InvoiceStatus::mermaid();
    let mut lines = text.lines().map(str::trim);
    assert_eq!(lines.next(), Some("stateDiagram-v2"));

    let (mut states, mut initial, mut edges) = (BTreeSet::new(), BTreeSet::new(), Edges::new());
    for line in lines {
        if let Some(state) = line.strip_prefix("[*] --> ") {
            initial.insert(state.to_owned());
        } else if let Some((from, rest)) = line.split_once(" --> ") {
            let (to, name) = rest.split_once(": ").expect("an edge is labelled");
            edges.insert((from.to_owned(), to.to_owned(), name.to_owned()));
        } else {
            states.insert(line.to_owned());
        }
    }
    assert_eq!(states, state_names::<InvoiceStatus>());
    assert_eq!(initial, initial_names::<InvoiceStatus>());
    assert_eq!(edges, table_edges::<InvoiceStatus>());
    assert_eq!(edges.len(), 10);
}

#[test]
fn dot_lists_every_state_initial_marker_and_edge() {
    let text = InvoiceStatus::dot();
    let mut lines = text.lines().map(str::trim);
    assert_eq!(lines.next(), Some("digraph InvoiceStatus {"));
    assert_eq!(text.lines().last(), Some("}"));

    let (mut states, mut initial, mut edges) = (BTreeSet::new(), BTreeSet::new(), Edges::new());
    for line in lines.filter(|line| *line != "}") {
        let statement = line.strip_suffix(';').expect("statements end in `;`");
        if statement == "\"[*]\" [shape=point]" {
            continue;
        } else if let Some(state) = statement.strip_prefix("\"[*]\" -> ") {
            initial.insert(state.to_owned());
        } else if let Some((from, rest)) = statement.split_once(" -> ") {
            let (to, label) = rest.split_once(" [label=\"").expect("an edge is labelled");
            let name = label.strip_suffix("\"]").expect("the label is closed");
            edges.insert((from.to_owned(), to.to_owned(), name.to_owned()));
        } else {
            states.insert(statement.to_owned());
        }
    }
    assert_eq!(states, state_names::<InvoiceStatus>());
    assert_eq!(initial, initial_names::<InvoiceStatus>());
    assert_eq!(edges, table_edges::<InvoiceStatus>());
}

/// States named like DOT keywords, which DOT only accepts quoted.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(connect: Node -> Edge, draw: Edge -> Graph))]
enum Subgraph {
    Node,
    Edge,
    Graph,
}

#[test]
fn dot_quotes_the_ids_that_are_dot_keywords() {
    assert_eq!(
        Subgraph::dot(),
        "digraph \"Subgraph\" {\n    \"Node\";\n    \"Edge\";\n    \"Graph\";\n    \"[*]\" [shape=point];\n    \
         \"[*]\" -> \"Node\";\n    \"Node\" -> \"Edge\" [label=\"connect\"];\n    \
         \"Edge\" -> \"Graph\" [label=\"draw\"];\n}\n"
    );
}

#[test]
fn diagrams_are_compile_time_constants() {
    const MERMAID: &str = InvoiceStatus::mermaid();
    const DOT: &str = InvoiceStatus::dot();
    assert!(MERMAID.contains("    Issued --> Paid: pay\n"));
    assert!(DOT.contains("    Issued -> Paid [label=\"pay\"];\n"));
}
