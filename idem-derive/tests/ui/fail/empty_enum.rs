use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(pay: Issued -> Paid))]
enum InvoiceStatus {}

fn main() {}
