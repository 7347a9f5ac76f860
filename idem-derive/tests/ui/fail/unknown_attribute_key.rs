use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(tabel = "invoices", transitions(pay: Issued -> Paid), initial)]
enum InvoiceStatus {
    #[state_machine(start)]
    Issued,
    #[state_machine(rename = "paid", column = "x")]
    Paid,
}

fn main() {}
