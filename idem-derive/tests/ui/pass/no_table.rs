// Without `table` the machine is pure: no binding, no SQL.
use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(open: Closed -> Open, close: Open -> Closed))]
enum Door {
    Closed,
    Open,
}

fn main() {
    assert!(Door::TABLE.is_none());
    assert!(Door::open().sql().is_none());
    assert_eq!(Door::close().target(), Door::Closed);
}
