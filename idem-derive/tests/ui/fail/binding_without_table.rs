use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(column = "status", key = "id", transitions(pay: Issued -> Paid))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
