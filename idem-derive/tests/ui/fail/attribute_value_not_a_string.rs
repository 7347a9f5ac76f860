use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = invoices, column("status"), transitions(pay: Issued -> Paid))]
enum InvoiceStatus {
    Issued,
    #[state_machine(rename = 7)]
    Paid,
}

fn main() {
    let _ = InvoiceStatus::pay();
}
