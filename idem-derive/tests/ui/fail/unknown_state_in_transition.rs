use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue: Draft           -> Issued,
    pay:   Issued          -> Payed,
    void:  Drafted | Issued -> Void,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
    Void,
}

fn main() {}
