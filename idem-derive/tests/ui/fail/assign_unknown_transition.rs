use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", transitions(pay: Issued -> Paid))]
#[state_machine(assign(payy, paid_at = "CURRENT_TIMESTAMP"))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
