use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(rename_all = "snake-case", transitions(pay: Issued -> Paid))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
