//! The invoice: its state machine, its JSON shapes and the validation of
//! what clients send.

use idem::inbox::EventId;
use idem::StateMachine;
use serde::{Deserialize, Serialize};

/// The life of an invoice. Every change of `invoices.status` goes through
/// one of these guarded transitions; `pay` also stamps `paid_at` in the same
/// `UPDATE`, and every applied transition leaves a row in `invoice_history`.
#[derive(StateMachine, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[state_machine(
    table = "invoices",
    column = "status",
    key = "id",
    history = "invoice_history"
)]
#[state_machine(transitions(
    issue:  Draft          -> Issued,
    pay:    Issued         -> Paid,
    void:   Draft | Issued -> Void,
    refund: Paid           -> Refunded,
))]
#[state_machine(assign(pay, paid_at = "CURRENT_TIMESTAMP"))]
pub enum InvoiceStatus {
    /// Created, not yet sent to the customer.
    #[state_machine(initial)]
    Draft,
    /// Sent; waiting for the payment.
    Issued,
    /// Paid, exactly once.
    Paid,
    /// Cancelled before it was paid.
    Void,
    /// Paid, then refunded.
    Refunded,
}

/// The currencies the service accepts (ISO 4217 codes).
pub const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "JPY", "CHF"];

/// The longest customer name accepted, in characters.
pub const MAX_CUSTOMER_LEN: usize = 200;

/// An invoice as the API returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Invoice {
    /// The invoice number.
    pub id: i64,
    /// Who pays.
    pub customer: String,
    /// The amount due, in the currency's minor unit.
    pub amount_cents: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The state (`draft`, `issued`, `paid`, `void`, `refunded`).
    pub status: String,
    /// When the `pay` transition applied (UTC, RFC 3339), if it did.
    pub paid_at: Option<String>,
}

/// The body of `POST /invoices`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewInvoice {
    /// Who pays.
    pub customer: String,
    /// The amount due, in the currency's minor unit.
    pub amount_cents: i64,
    /// ISO 4217 code, one of [`CURRENCIES`].
    pub currency: String,
}

/// The body of `POST /invoices/{id}/pay`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayRequest {
    /// The amount paid; must equal the invoice's amount.
    pub amount_cents: i64,
}

/// The body of `POST /events`: a message from the payment provider, which
/// may deliver it more than once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The provider's event id: the deduplication key of the inbox.
    pub id: String,
    /// The event type; only `payment.received` is known.
    #[serde(rename = "type")]
    pub kind: String,
    /// The invoice paid.
    pub invoice_id: i64,
    /// The amount paid; must equal the invoice's amount.
    pub amount_cents: i64,
}

/// The only event type `POST /events` handles.
pub const PAYMENT_RECEIVED: &str = "payment.received";

/// A payment row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Payment {
    /// The payment's number.
    pub id: i64,
    /// The invoice it paid.
    pub invoice_id: i64,
    /// The amount taken.
    pub amount_cents: i64,
    /// Where it came from: `api` (`POST /invoices/{id}/pay`) or `event`
    /// (`POST /events`).
    pub source: String,
    /// The idempotency key or event id it arrived with, if any.
    pub reference: Option<String>,
}

/// One applied transition, from `invoice_history`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The transition's name (`pay`).
    pub transition: String,
    /// The state before.
    pub from: String,
    /// The state after.
    pub to: String,
    /// When it was applied, as the database wrote it.
    pub at: String,
}

/// A request field that is not acceptable, with what to send instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}`: {problem}")]
pub struct Invalid {
    /// The JSON field.
    pub field: &'static str,
    /// What is wrong with it and what to send.
    pub problem: String,
}

fn invalid(field: &'static str, problem: impl Into<String>) -> Invalid {
    Invalid {
        field,
        problem: problem.into(),
    }
}

fn positive(field: &'static str, amount: i64) -> Result<(), Invalid> {
    if amount > 0 {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be a positive number of cents, got {amount}"),
        ))
    }
}

impl NewInvoice {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), Invalid> {
        let customer = self.customer.trim();
        if customer.is_empty() {
            return Err(invalid("customer", "must not be empty"));
        }
        if customer.chars().count() > MAX_CUSTOMER_LEN {
            return Err(invalid(
                "customer",
                format!("must be at most {MAX_CUSTOMER_LEN} characters"),
            ));
        }
        // PostgreSQL's text cannot hold U+0000 at all, and no backend
        // should keep a line break or an escape sequence in a name: the
        // same refusal on every backend.
        if customer.chars().any(char::is_control) {
            return Err(invalid(
                "customer",
                "must not contain control characters (U+0000 to U+001F, U+007F to U+009F)",
            ));
        }
        positive("amount_cents", self.amount_cents)?;
        if !CURRENCIES.contains(&self.currency.as_str()) {
            return Err(invalid(
                "currency",
                format!(
                    "must be one of {}, got `{}`",
                    CURRENCIES.join(", "),
                    self.currency
                ),
            ));
        }
        Ok(())
    }
}

impl NewInvoice {
    /// Whether `invoice` is what this request creates.
    pub fn matches(&self, invoice: &Invoice) -> bool {
        invoice.customer == self.customer.trim()
            && invoice.amount_cents == self.amount_cents
            && invoice.currency == self.currency
    }
}

impl PayRequest {
    /// Checks the amount is positive (its match with the invoice is checked
    /// against the stored invoice).
    pub fn validate(&self) -> Result<(), Invalid> {
        positive("amount_cents", self.amount_cents)
    }
}

impl Event {
    /// Checks the id (the inbox's rules), the type and the amount; returns
    /// the inbox's event id.
    pub fn validate(&self) -> Result<EventId, Invalid> {
        let id = EventId::new(self.id.as_str()).map_err(|e| invalid("id", e.to_string()))?;
        if self.kind != PAYMENT_RECEIVED {
            return Err(invalid(
                "type",
                format!(
                    "`{}` is not an event this service handles; only `{PAYMENT_RECEIVED}` is",
                    self.kind
                ),
            ));
        }
        positive("amount_cents", self.amount_cents)?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_invoice(customer: &str, amount_cents: i64, currency: &str) -> NewInvoice {
        NewInvoice {
            customer: customer.into(),
            amount_cents,
            currency: currency.into(),
        }
    }

    #[test]
    fn a_well_formed_invoice_is_valid() {
        assert_eq!(new_invoice("ACME", 1250, "EUR").validate(), Ok(()));
    }

    #[test]
    fn negative_zero_and_unknown_values_are_named() {
        assert_eq!(
            new_invoice("ACME", -5, "EUR").validate().unwrap_err().field,
            "amount_cents"
        );
        assert_eq!(
            new_invoice("ACME", 0, "EUR").validate().unwrap_err().field,
            "amount_cents"
        );
        let error = new_invoice("ACME", 5, "XXX").validate().unwrap_err();
        assert_eq!(error.field, "currency");
        assert!(error.to_string().contains("EUR, USD, GBP, JPY, CHF"));
        assert_eq!(
            new_invoice("  ", 5, "EUR").validate().unwrap_err().field,
            "customer"
        );
    }

    #[test]
    fn control_characters_in_a_name_are_refused_and_other_characters_are_not() {
        for name in [
            "AC\u{0}ME",
            "AC\nME",
            "AC\tME",
            "AC\u{1b}[31mME",
            "AC\u{7f}ME",
            "AC\u{85}ME",
        ] {
            let error = new_invoice(name, 5, "EUR").validate().unwrap_err();
            assert_eq!(error.field, "customer", "{name:?}");
        }
        for name in [
            "Ærøskøbing Æble",
            "株式会社",
            "\u{1f600} Smile",
            "O'Brien & \"Sons\" \\ Co",
        ] {
            assert_eq!(new_invoice(name, 5, "EUR").validate(), Ok(()), "{name:?}");
        }
    }

    #[test]
    fn only_payment_received_events_are_handled() {
        let event = Event {
            id: "evt_1".into(),
            kind: "payment.failed".into(),
            invoice_id: 1,
            amount_cents: 100,
        };
        assert_eq!(event.validate().unwrap_err().field, "type");
    }

    #[test]
    fn the_state_machine_has_the_documented_edges() {
        use idem::State;
        let names: Vec<_> = InvoiceStatus::TRANSITIONS
            .iter()
            .map(|t| t.name())
            .collect();
        assert_eq!(names, ["issue", "pay", "void", "refund"]);
        assert_eq!(InvoiceStatus::initial(), InvoiceStatus::Draft);
        assert!(InvoiceStatus::void().allows(InvoiceStatus::Issued));
        assert!(!InvoiceStatus::pay().allows(InvoiceStatus::Draft));
    }
}
