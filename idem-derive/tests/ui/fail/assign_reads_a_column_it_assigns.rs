use idem_derive::StateMachine;

// Reading the state column is portable (it is assigned last); reading
// `closed_at`, which the same transition assigns, is not: MySQL reads the
// new value, PostgreSQL and SQLite the old one.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "accounts", transitions(close: Open -> Closed))]
#[state_machine(assign(
    close,
    closed_from = "status",
    closed_at = "CURRENT_TIMESTAMP",
    note = "coalesce(Closed_At, 'never')",
))]
enum Account {
    Open,
    Closed,
}

fn main() {}
