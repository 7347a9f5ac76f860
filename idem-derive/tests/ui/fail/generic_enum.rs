use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(pay: Issued -> Paid))]
enum InvoiceStatus<const CURRENCY: u8> {
    Issued,
    Paid,
}

fn main() {}
