// An attribute that stops parsing hides the keys after it; the derive
// reports that error only, not a "missing transitions" of its own.
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices" column = "status", transitions(pay: Issued -> Paid))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
