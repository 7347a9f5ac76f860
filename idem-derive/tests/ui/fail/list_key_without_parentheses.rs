use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", assign = "pay")]
#[state_machine(transitions = "pay: Issued -> Paid")]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
