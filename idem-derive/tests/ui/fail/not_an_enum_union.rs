use idem_derive::StateMachine;

#[derive(StateMachine)]
#[state_machine(transitions(pay: Issued -> Paid))]
union InvoiceStatus {
    paid: u8,
}

fn main() {}
