use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(pay: Issued -> Paid, void: Issued -> Void))]
enum InvoiceStatus {
    Issued,
    Paid { amount_cents: u64 },
    Void(u8),
}

fn main() {}
