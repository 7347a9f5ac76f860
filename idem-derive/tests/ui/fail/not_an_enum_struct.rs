use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(pay: Issued -> Paid))]
struct InvoiceStatus {
    paid: bool,
}

fn main() {}
