// The enum has one real error (a self-loop). Everything below uses what the
// derive would have generated; none of it may report an error of its own.
use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices")]
#[state_machine(transitions(
    issue: Draft  -> Issued,
    pay:   Issued -> Paid,
    remind: Issued -> Issued,
))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
}

fn main() {
    let pay = InvoiceStatus::pay();
    let _ = pay.sql();
    let _ = InvoiceStatus::remind().name();
    let _: String = InvoiceStatus::Paid.to_string();
    let _: Result<InvoiceStatus, idem_core::Error> = "paid".parse();
    let _: &str = InvoiceStatus::mermaid();
    let _: &str = InvoiceStatus::dot();
    let _ = InvoiceStatus::ALL.len();
    let _ = InvoiceStatus::initial();
}
