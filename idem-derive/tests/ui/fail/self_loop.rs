use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    send:         Draft          -> Sent,
    mark_overdue: Sent           -> Overdue,
    remind:       Sent | Overdue -> Sent,
))]
enum InvoiceStatus {
    Draft,
    Sent,
    Overdue,
}

fn main() {}
