use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(crate = "idem core", transitions(pay: Issued -> Paid))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {
    let _ = InvoiceStatus::pay();
}
