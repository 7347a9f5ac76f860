use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(pay: Issued -> Paid, settle: Issued -> Settled))]
enum InvoiceStatus {
    Issued,
    Paid,
    #[state_machine(rename = "paid")]
    Settled,
}

fn main() {}
