use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(issue: Draft -> Issued, pay: Issued -> Paid))]
enum InvoiceStatus {
    #[state_machine(rename = "")]
    Draft,
    #[state_machine(rename = "issued\n")]
    Issued,
    Paid,
}

fn main() {}
