use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "invoices; DROP TABLE invoices",
    column = "billing.status",
    key = "1d",
    history = "a.b.c",
)]
#[state_machine(transitions(pay: Issued -> Paid))]
#[state_machine(assign(pay, montant_payé = "0", paid_at = "now()"))]
enum InvoiceStatus {
    Issued,
    Paid,
}

fn main() {}
