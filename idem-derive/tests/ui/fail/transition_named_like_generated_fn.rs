use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(mermaid: Issued -> Paid, dot: Paid -> Archived))]
enum InvoiceStatus {
    Issued,
    Paid,
    Archived,
}

fn main() {}
