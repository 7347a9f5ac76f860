// A malformed transition is reported once; the others are still checked,
// and nothing that uses the enum reports an error of its own.
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue: Draft => Issued,
    pay: Issued -> Paid,
    refund: Paid -> Refundd,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
    Refunded,
}

fn main() {
    let _ = InvoiceStatus::issue();
    let _ = InvoiceStatus::pay();
}
