use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    issue:  Draft    -> Issued,
    pay:    Issued   -> Paid,
    refund: Disputed -> Refunded,
))]
enum InvoiceStatus {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Disputed,
    Refunded,
}

fn main() {}
