// `crate = "..."`: the generated code reaches idem-core through a path of
// the user's choosing (a re-export, as a facade crate would have).
use idem_derive::StateMachine;

mod reexported {
    pub mod core {
        pub use idem_core::*;
    }
}

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(crate = "crate::reexported::core", table = "lights")]
#[state_machine(transitions(switch_on: Off -> On, switch_off: On -> Off))]
enum Light {
    Off,
    On,
}

fn main() {
    use reexported::core::State;
    assert_eq!(Light::ALL, &[Light::Off, Light::On]);
    assert_eq!(Light::switch_on().name(), "switch_on");
}
