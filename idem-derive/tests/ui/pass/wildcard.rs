// `_ -> Cancelled`: from every state except the target.
use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "orders")]
#[state_machine(transitions(
    pack:   Placed -> Packed,
    ship:   Packed -> Shipped,
    cancel: _      -> Cancelled,
))]
enum OrderStatus {
    Placed,
    Packed,
    Shipped,
    Cancelled,
}

fn main() {
    let cancel = OrderStatus::cancel();
    assert_eq!(
        cancel.sources(),
        &[OrderStatus::Placed, OrderStatus::Packed, OrderStatus::Shipped]
    );
    assert!(!cancel.allows(OrderStatus::Cancelled));
    assert_eq!(OrderStatus::TRANSITIONS.len(), 3);
}
