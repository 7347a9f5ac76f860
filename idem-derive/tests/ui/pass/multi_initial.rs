// Several initial states: rows may be created in any of them.
use idem_core::State;
use idem_derive::StateMachine;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(
    submit:  Draft     -> Submitted,
    approve: Submitted -> Approved,
))]
enum Expense {
    #[state_machine(initial)]
    Draft,
    // Imported expenses arrive already submitted.
    #[state_machine(initial)]
    Submitted,
    Approved,
}

fn main() {
    assert_eq!(Expense::INITIAL, &[Expense::Draft, Expense::Submitted]);
    assert_eq!(Expense::initial(), Expense::Draft);
    assert!(Expense::mermaid().contains("[*] --> Submitted"));
}
