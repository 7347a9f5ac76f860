use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(void: Draft | Issued | Draft -> Void, issue: Draft -> Issued))]
enum InvoiceStatus {
    Draft,
    Issued,
    Void,
}

fn main() {}
