use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", transitions(pay: Issued -> Paid))]
#[state_machine(table = "bills")]
enum InvoiceStatus {
    #[state_machine(initial, initial)]
    Issued,
    #[state_machine(rename = "paid")]
    #[state_machine(rename = "settled")]
    Paid,
}

fn main() {}
