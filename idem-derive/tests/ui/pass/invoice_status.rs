// The state machine of DESIGN.md, used the way an application uses it.
use idem_core::{Dialect, State};
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", column = "status", key = "id")]
#[state_machine(transitions(
    issue:  Draft          -> Issued,
    pay:    Issued         -> Paid,
    void:   Draft | Issued -> Void,
    refund: Paid           -> Refunded,
))]
pub enum InvoiceStatus {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
    Refunded,
}

fn main() {
    let pay = InvoiceStatus::pay();
    assert!(pay.allows(InvoiceStatus::Issued));
    assert_eq!(pay.target(), InvoiceStatus::Paid);
    assert!(pay.sql_for(Dialect::Postgres).is_some());
    assert_eq!(InvoiceStatus::initial(), InvoiceStatus::Draft);
    assert_eq!("paid".parse::<InvoiceStatus>().unwrap(), InvoiceStatus::Paid);
    assert_eq!(InvoiceStatus::Refunded.to_string(), "refunded");
    assert!(InvoiceStatus::mermaid().starts_with("stateDiagram-v2"));
    assert!(InvoiceStatus::dot().starts_with("digraph InvoiceStatus {"));
}
