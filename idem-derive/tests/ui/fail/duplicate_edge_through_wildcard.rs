use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue:  Draft  -> Issued,
    void:   Issued -> Void,
    cancel: _      -> Void,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Void,
}

fn main() {}
