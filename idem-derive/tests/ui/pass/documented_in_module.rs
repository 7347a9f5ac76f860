//! The generated items are documented and raise no warning, whatever the
//! enum's visibility and whether its functions are used.
#![deny(missing_docs, warnings)]

/// Billing.
pub mod billing {
    use idem_derive::StateMachine;

    /// An invoice's state.
    #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[state_machine(table = "invoices", transitions(issue: Draft -> Issued, pay: Issued -> Paid))]
    pub enum InvoiceStatus {
        /// Being written.
        Draft,
        /// Sent to the customer.
        Issued,
        /// Paid.
        Paid,
    }

    /// A payment's state, visible to the crate only.
    #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[state_machine(transitions(capture: Authorized -> Captured))]
    pub(crate) enum PaymentStatus {
        Authorized,
        Captured,
    }

    /// A private machine whose generated functions are never called.
    #[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
    #[state_machine(transitions(finish: Running -> Finished))]
    enum Job {
        Running,
        Finished,
    }

    /// Uses the private machine's trait impl only.
    pub fn job_states() -> usize {
        <Job as idem_core::State>::ALL.len()
    }
}

fn main() {
    assert_eq!(billing::InvoiceStatus::pay().name(), "pay");
    assert_eq!(billing::PaymentStatus::capture().name(), "capture");
    assert_eq!(billing::job_states(), 2);
}
