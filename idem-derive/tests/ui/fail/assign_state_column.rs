use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", transitions(pay: Issued -> Paid))]
#[state_machine(assign(pay, status = "'paid'", paid_at = "CURRENT_TIMESTAMP"))]
#[state_machine(assign(pay, paid_at = "now()"))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
