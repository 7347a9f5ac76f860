// `rename_all` on the enum, `rename` on a variant (which wins).
use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(rename_all = "SCREAMING_SNAKE_CASE")]
#[state_machine(transitions(settle: AwaitingPayment -> PaidInFull))]
enum Settlement {
    AwaitingPayment,
    #[state_machine(rename = "paid-in-full (v2)")]
    PaidInFull,
}

fn main() {
    assert_eq!(Settlement::AwaitingPayment.as_str(), "AWAITING_PAYMENT");
    assert_eq!(Settlement::PaidInFull.to_string(), "paid-in-full (v2)");
    assert_eq!(
        Settlement::parse("paid-in-full (v2)").unwrap(),
        Settlement::PaidInFull
    );
}
