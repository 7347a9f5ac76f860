//! What `#[derive(StateMachine)]` generates: the `State` impl, `Display`,
//! `FromStr`, the transition functions and the table binding.

use std::collections::BTreeSet;
use std::str::FromStr;

use idem_core::{Error, State, Table, Transition};
use idem_derive::StateMachine;

/// The invoice of DESIGN.md, with a wildcard, a history table and an extra
/// assignment.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "billing.invoices", column = "state", key = "invoice_id")]
#[state_machine(history = "billing.invoice_history")]
#[state_machine(transitions(
    issue:  Draft          -> Issued,
    pay:    Issued         -> Paid,
    void:   Draft | Issued -> Void,
    refund: Paid           -> Refunded,
    cancel: _              -> Cancelled,
))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
enum InvoiceStatus {
    #[state_machine(initial)]
    Draft,
    Issued,
    Paid,
    Void,
    Refunded,
    Cancelled,
}

/// No table, several initial states, renames.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(rename_all = "SCREAMING-KEBAB-CASE")]
#[state_machine(transitions(
    approve: Waiting -> Approved,
    reject:  Waiting -> RejectedByReviewer,
    reopen:  RejectedByReviewer -> Waiting,
))]
enum Review {
    #[state_machine(initial)]
    Waiting,
    #[state_machine(initial, rename = "ok")]
    Approved,
    RejectedByReviewer,
}

/// No state marked initial: the first one is.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(transitions(go: Start -> End))]
enum Implicit {
    Start,
    End,
}

fn names<S: State>() -> Vec<&'static str> {
    S::TRANSITIONS.iter().map(|t| t.name()).collect()
}

#[test]
fn every_state_round_trips_through_display_and_from_str() {
    for &state in InvoiceStatus::ALL {
        let stored = state.to_string();
        assert_eq!(stored, state.as_str());
        assert_eq!(InvoiceStatus::from_str(&stored).unwrap(), state);
        assert_eq!(InvoiceStatus::parse(&stored).unwrap(), state);
    }
    for &state in Review::ALL {
        assert_eq!(state.to_string().parse::<Review>().unwrap(), state);
    }
}

#[test]
fn stored_values_are_snake_case_by_default() {
    let values = InvoiceStatus::ALL
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>();
    assert_eq!(
        values,
        ["draft", "issued", "paid", "void", "refunded", "cancelled"]
    );
}

#[test]
fn rename_wins_over_rename_all() {
    assert_eq!(Review::Waiting.as_str(), "WAITING");
    assert_eq!(Review::Approved.as_str(), "ok");
    assert_eq!(Review::RejectedByReviewer.as_str(), "REJECTED-BY-REVIEWER");
    assert_eq!(Review::parse("ok").unwrap(), Review::Approved);
    assert!(Review::parse("APPROVED").is_err());
}

#[test]
fn display_honours_width_and_alignment() {
    assert_eq!(format!("[{:>8}]", InvoiceStatus::Paid), "[    paid]");
    assert_eq!(format!("[{:<7}]", InvoiceStatus::Void), "[void   ]");
}

#[test]
fn an_unknown_stored_value_is_an_unknown_state_error() {
    for junk in [
        "",
        "Draft",
        "DRAFT",
        "draft ",
        "paid'",
        "refunded\0",
        "nope",
    ] {
        match InvoiceStatus::from_str(junk) {
            Err(Error::UnknownState { type_name, value }) => {
                assert_eq!(type_name, "InvoiceStatus");
                assert_eq!(value, junk);
            }
            other => panic!("{junk:?} parsed as {other:?}"),
        }
        assert!(matches!(
            InvoiceStatus::parse(junk),
            Err(Error::UnknownState { .. })
        ));
    }
}

#[test]
fn all_lists_the_states_in_declaration_order() {
    use InvoiceStatus::*;
    assert_eq!(InvoiceStatus::TYPE_NAME, "InvoiceStatus");
    assert_eq!(
        InvoiceStatus::ALL,
        &[Draft, Issued, Paid, Void, Refunded, Cancelled]
    );
}

#[test]
fn initial_states_are_the_marked_ones_or_else_the_first() {
    assert_eq!(InvoiceStatus::INITIAL, &[InvoiceStatus::Draft]);
    assert_eq!(InvoiceStatus::initial(), InvoiceStatus::Draft);
    assert_eq!(Review::INITIAL, &[Review::Waiting, Review::Approved]);
    assert_eq!(Implicit::INITIAL, &[Implicit::Start]);
}

#[test]
fn transitions_are_listed_in_declaration_order() {
    use InvoiceStatus::*;
    assert_eq!(
        names::<InvoiceStatus>(),
        ["issue", "pay", "void", "refund", "cancel"]
    );
    let table = InvoiceStatus::TRANSITIONS
        .iter()
        .map(|t| (t.name(), t.sources(), t.target()))
        .collect::<Vec<_>>();
    assert_eq!(
        table,
        [
            ("issue", &[Draft][..], Issued),
            ("pay", &[Issued][..], Paid),
            ("void", &[Draft, Issued][..], Void),
            ("refund", &[Paid][..], Refunded),
            (
                "cancel",
                &[Draft, Issued, Paid, Void, Refunded][..],
                Cancelled
            ),
        ]
    );
}

#[test]
fn the_wildcard_means_every_state_except_the_target() {
    let cancel = InvoiceStatus::cancel();
    for &state in InvoiceStatus::ALL {
        assert_eq!(cancel.allows(state), state != InvoiceStatus::Cancelled);
    }
}

#[test]
fn each_transition_fn_returns_the_entry_of_the_table() {
    let fns: [fn() -> &'static Transition<InvoiceStatus>; 5] = [
        InvoiceStatus::issue,
        InvoiceStatus::pay,
        InvoiceStatus::void,
        InvoiceStatus::refund,
        InvoiceStatus::cancel,
    ];
    for (f, entry) in fns.iter().zip(InvoiceStatus::TRANSITIONS) {
        assert_eq!(f(), *entry);
        assert_eq!(InvoiceStatus::transition(f().name()).unwrap(), f());
    }
    assert!(InvoiceStatus::transition("ship").is_none());
}

#[test]
fn transitions_from_a_state_follow_the_table() {
    let from_issued = InvoiceStatus::Issued
        .transitions_from()
        .map(|t| t.name())
        .collect::<BTreeSet<_>>();
    assert_eq!(from_issued, BTreeSet::from(["pay", "void", "cancel"]));
    assert_eq!(InvoiceStatus::Cancelled.transitions_from().count(), 0);
}

#[test]
fn the_table_binding_carries_every_identifier() {
    assert_eq!(
        InvoiceStatus::TABLE,
        Some(&Table {
            name: "billing.invoices",
            column: "state",
            key: "invoice_id",
            history: Some("billing.invoice_history"),
        })
    );
    assert!(InvoiceStatus::pay().sql().is_some());
}

#[test]
fn column_and_key_default_to_status_and_id() {
    #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[state_machine(table = "orders", transitions(ship: Open -> Shipped))]
    enum Order {
        Open,
        Shipped,
    }
    assert_eq!(
        Order::TABLE,
        Some(&Table {
            name: "orders",
            column: "status",
            key: "id",
            history: None,
        })
    );
}

#[test]
fn without_a_table_there_is_no_binding_and_no_sql() {
    assert_eq!(Review::TABLE, None);
    for transition in Review::TRANSITIONS {
        assert!(transition.sql().is_none());
        assert!(transition.sql_for(idem_core::Dialect::Sqlite).is_none());
    }
}

#[test]
fn every_rename_all_rule_follows_serde() {
    macro_rules! stored {
        ($rule:literal) => {{
            #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
            #[state_machine(rename_all = $rule, transitions(go: PendingHTTPCall -> Done))]
            enum S {
                PendingHTTPCall,
                Done,
            }
            S::PendingHTTPCall.as_str()
        }};
    }
    assert_eq!(stored!("lowercase"), "pendinghttpcall");
    assert_eq!(stored!("UPPERCASE"), "PENDINGHTTPCALL");
    assert_eq!(stored!("PascalCase"), "PendingHTTPCall");
    assert_eq!(stored!("camelCase"), "pendingHTTPCall");
    assert_eq!(stored!("snake_case"), "pending_h_t_t_p_call");
    assert_eq!(stored!("SCREAMING_SNAKE_CASE"), "PENDING_H_T_T_P_CALL");
    assert_eq!(stored!("kebab-case"), "pending-h-t-t-p-call");
    assert_eq!(stored!("SCREAMING-KEBAB-CASE"), "PENDING-H-T-T-P-CALL");
}
