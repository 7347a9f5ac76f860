use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue: Draft  -> Issued,
    pay:   Issued -> Paid,
    pay:   Draft  -> Paid,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
}

fn main() {}
