// The generated code uses absolute paths and its own local names: items of
// the user's that shadow std's or idem's names change nothing.
#![deny(warnings)]
#![allow(non_upper_case_globals, non_camel_case_types, dead_code)]

use idem_derive::StateMachine;

mod idem_core {}
const value: u8 = 0;
const f: u8 = 0;
const s: u8 = 0;
struct Option;
struct Some;
struct None;
struct Result;
struct Ok;
struct Err;
struct String;
trait State {}
trait Display {}
trait FromStr {}
struct Transition;

#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(table = "invoices", history = "invoice_history")]
#[state_machine(transitions(issue: Draft -> Issued, pay: Issued -> Paid, cancel: _ -> Cancelled))]
enum InvoiceStatus {
    Draft,
    Issued,
    Paid,
    Cancelled,
}

fn main() {
    use ::idem_core::State as _;
    assert_eq!(InvoiceStatus::Paid.to_string(), "paid");
    assert_eq!(
        "issued".parse::<InvoiceStatus>().unwrap(),
        InvoiceStatus::Issued
    );
    assert!(InvoiceStatus::parse("junk").is_err());
    assert_eq!(InvoiceStatus::pay().name(), "pay");
    assert_eq!(InvoiceStatus::cancel().sources().len(), 3);
}
