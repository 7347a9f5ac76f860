//! The side effect of `pay`: the payment row, written by a transition
//! handler inside the transaction that moved the invoice to `paid`.

use async_trait::async_trait;
use idem::inbox::EventId;
use idem::prelude::*;
use idem::sqlx::inbox::InboxHandler;
use idem::sqlx::HandlerError;
use sqlx::{Encode, Executor, IntoArguments, Type};

use super::AppBackend;
use crate::invoice::InvoiceStatus;

/// Where a payment came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentSource {
    /// `POST /invoices/{id}/pay`.
    Api,
    /// A `payment.received` event on `POST /events`.
    Event,
}

impl PaymentSource {
    /// The value stored in `payments.source`.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentSource::Api => "api",
            PaymentSource::Event => "event",
        }
    }
}

/// Records the payment when — and only when — `pay` moved the invoice.
/// A duplicate, a rejected or a racing request never reaches it, which is
/// what keeps one payment per invoice (the table has no unique constraint
/// that would).
#[derive(Debug, Clone)]
pub struct RecordPayment {
    /// The amount paid (checked against the invoice before).
    pub amount_cents: i64,
    /// Where it came from.
    pub source: PaymentSource,
    /// The idempotency key or the event id it arrived with.
    pub reference: Option<String>,
}

#[async_trait]
impl<B> TransitionHandler<InvoiceStatus, B, i64> for RecordPayment
where
    B: AppBackend,
    for<'c> &'c mut B::Connection: Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: IntoArguments<'q, B>,
    for<'q> i64: Encode<'q, B> + Type<B>,
    for<'q> String: Encode<'q, B> + Type<B>,
    for<'q> Option<String>: Encode<'q, B> + Type<B>,
    i64: idem::sqlx::Key<B>,
{
    type Error = sqlx::Error;

    async fn on_applied(
        &self,
        conn: &mut B::Connection,
        change: Change<'_, InvoiceStatus, i64>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(B::QUERIES.insert_payment)
            .bind(*change.key)
            .bind(self.amount_cents)
            .bind(self.source.as_str().to_owned())
            .bind(self.reference.clone())
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// The `payments` consumer of `POST /events`: applies `pay` in the inbox's
/// transaction (the same guarded transition `POST /pay` uses) and records
/// the payment only when it moved the invoice. An event the invoice's
/// state does not allow is refused: the marker rolls back with it, so the
/// provider's redelivery is processed again.
#[derive(Debug, Clone)]
pub struct PayFromEvent {
    /// The invoice the event pays.
    pub invoice_id: i64,
    /// The payment to record.
    pub payment: RecordPayment,
}

/// Why [`PayFromEvent`] refused an event, or failed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// `pay` is not allowed from the invoice's state, or there is no such
    /// invoice.
    #[error("the event cannot pay the invoice: {0:?}")]
    Refused(Outcome<InvoiceStatus>),
    /// idem failed to apply the transition.
    #[error(transparent)]
    Idem(#[from] idem::sqlx::Error),
    /// Writing the payment failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

#[async_trait]
impl<B> InboxHandler<B> for PayFromEvent
where
    B: AppBackend,
    RecordPayment: TransitionHandler<InvoiceStatus, B, i64, Error = sqlx::Error>,
    i64: idem::sqlx::Key<B>,
{
    type Output = Outcome<InvoiceStatus>;
    type Error = EventError;

    async fn handle(
        &self,
        conn: &mut B::Connection,
        _event_id: &EventId,
    ) -> Result<Outcome<InvoiceStatus>, EventError> {
        // The transition and the payment under a savepoint of the inbox's
        // transaction: they commit with the marker, or not at all.
        let outcome = InvoiceStatus::pay()
            .apply_with_on(conn, self.invoice_id, &self.payment)
            .await
            .map_err(|error| match error {
                HandlerError::Handler(e) => EventError::Database(e),
                HandlerError::Idem(e) => EventError::Idem(e),
            })?;
        match outcome {
            Outcome::Applied { .. } | Outcome::AlreadyApplied { .. } => Ok(outcome),
            Outcome::Rejected { .. } | Outcome::NotFound => Err(EventError::Refused(outcome)),
        }
    }
}
