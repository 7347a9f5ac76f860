use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoice status", colour = "red")]
#[state_machine(transitions(
    issue: Draft  -> Issued,
    issue: Issued -> Paid,
    pay:   Paid   -> Paid,
))]
#[state_machine(assign(refund, refunded_at = "CURRENT_TIMESTAMP"))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
    Disputed,
}

fn main() {}
