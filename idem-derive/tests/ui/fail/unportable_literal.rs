use idem_derive::StateMachine;

// Text the SQL would not keep on every server: a backslash is an escape on
// MySQL and MariaDB unless NO_BACKSLASH_ESCAPES is set (and on PostgreSQL
// with standard_conforming_strings off), a double-quoted name is a string
// on MySQL. One error each, nothing else.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "documents", transitions(archive: Active -> Archived, purge: Archived -> Purged))]
#[state_machine(assign(archive, note = "'moved to C:\\archive'"))]
#[state_machine(assign(purge, note = "\"reason\"", purged_at = "CURRENT_TIMESTAMP"))]
enum Document {
    Active,
    #[state_machine(rename = "archived\\2024")]
    Archived,
    #[state_machine(rename = "purged\\")]
    Purged,
}

fn main() {}
