use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices")]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
