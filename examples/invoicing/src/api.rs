//! The HTTP API: routes, handlers and how each outcome of a transition
//! becomes a status code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State as AxumState};
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::Router;
use idem::http::{ClaimedKey, Drain, IdempotencyLayer};
use idem::inbox::Delivery;
use idem::keys::Scope;
use idem::prelude::*;
use serde::Serialize;

use crate::invoice::{
    Event, HistoryEntry, Invoice, InvoiceStatus, NewInvoice, PayRequest, Payment,
};
use crate::problem::{ApiError, Json, Path};
use crate::store::{
    Created, EventError, Keys, PayFromEvent, PaymentSource, RecordPayment, Repository, StoreError,
};

/// The header naming the client: the idempotency scope.
pub const CLIENT_ID: HeaderName = HeaderName::from_static("x-client-id");

/// The client when a request has no `X-Client-Id`.
pub const ANONYMOUS: &str = "anonymous";

/// The header that says what a transition call did to the row:
/// `applied` (this call moved it) or `already_applied` (a duplicate).
pub const TRANSITION_OUTCOME: HeaderName = HeaderName::from_static("transition-outcome");

/// How long a request holds its idempotency key (handlers take
/// milliseconds).
pub const KEY_LEASE: Duration = Duration::from_secs(10);

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The storage.
    pub repo: Arc<dyn Repository>,
    /// The idempotency keys.
    pub keys: Keys,
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        ApiError::internal(error)
    }
}

/// The idempotency scope's operation: one for the whole API.
const OPERATION: &str = "invoicing";

/// The longest `X-Client-Id`, in bytes: what `invoices.client_id` holds
/// on every backend (`VARBINARY(512)` on MySQL/MariaDB, `TEXT` elsewhere),
/// and more than any client a [`Scope`] takes (client and operation
/// together are at most [`Scope::MAX_LEN`] bytes).
pub const MAX_CLIENT_ID_LEN: usize = 512;

/// The idempotency scope of a request: its client (`X-Client-Id`, or
/// `anonymous`), for the whole API, so a key reused on another endpoint is
/// a reused key (422). Refused (400): a client id that is not visible
/// ASCII, longer than a scope takes, or sent more than once (the server
/// would have to pick one of them: a client could pick another's).
fn scope(parts: &Parts) -> Option<Scope> {
    let mut values = parts.headers.get_all(CLIENT_ID).iter();
    let client = match (values.next(), values.next()) {
        (None, _) => ANONYMOUS,
        (Some(_), Some(_)) => return None,
        (Some(value), None) => match value.to_str().ok()? {
            "" => ANONYMOUS,
            client if client.len() > MAX_CLIENT_ID_LEN => return None,
            client => client,
        },
    };
    Scope::new(client, OPERATION).ok()
}

/// The service's routes, and the handle that waits for the idempotent
/// requests still running on the layer's tasks (see [`Drain`]).
pub fn router(app: App) -> (Router, Drain) {
    // Every handler here is idempotent on its own (the state guard, the
    // unique request key), so a lease taken over while the first run is
    // still going cannot pay or create twice: a short lease only shortens
    // how long retries wait after a run died before storing its response.
    let keys = IdempotencyLayer::new(app.keys.clone(), scope).lease(KEY_LEASE);
    let drain = keys.drain();
    // The transitions are idempotent by state already: a key is optional
    // there and, when sent, adds replays and reuse checks.
    let optional = keys.clone().require_key(false);
    let router = Router::new()
        .route("/diagram", get(diagram))
        .route("/invoices", post(create_invoice).layer(keys))
        .route("/invoices/{id}", get(get_invoice))
        .route("/invoices/{id}/issue", post(issue).layer(optional.clone()))
        .route("/invoices/{id}/pay", post(pay).layer(optional.clone()))
        .route("/invoices/{id}/void", post(void).layer(optional.clone()))
        .route("/invoices/{id}/refund", post(refund).layer(optional))
        .route("/invoices/{id}/history", get(history))
        .route("/invoices/{id}/payments", get(payments))
        .route("/events", post(event))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::from_fn(log_request))
        .with_state(app);
    (router, drain)
}

/// Logs each request at debug level (`RUST_LOG=invoicing=debug`).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    tracing::debug!(
        %method,
        %path,
        status = response.status().as_u16(),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    response
}

async fn unknown_route() -> ApiError {
    ApiError::Route(
        StatusCode::NOT_FOUND,
        "no such route; see the README for the endpoints",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::Route(
        StatusCode::METHOD_NOT_ALLOWED,
        "this route does not take this method; see the README for the endpoints",
    )
}

/// `GET /diagram`: the invoice state machine as a Mermaid diagram.
async fn diagram() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        InvoiceStatus::mermaid(),
    )
}

/// `POST /invoices`: behind the idempotency layer, which requires the key
/// and replays a completed request's response.
async fn create_invoice(
    AxumState(app): AxumState<App>,
    Extension(claimed): Extension<ClaimedKey>,
    Json(new): Json<NewInvoice>,
) -> Result<Response, ApiError> {
    new.validate()?;
    let created = app
        .repo
        .create_invoice(claimed.scope.client(), claimed.key.as_str(), &new)
        .await?;
    let invoice = match created {
        Created::New(invoice) => invoice,
        Created::Existing(invoice) if new.matches(&invoice) => invoice,
        Created::Existing(_) => return Err(ApiError::KeyReused),
    };
    let location = format!("/invoices/{}", invoice.id);
    let mut response = (StatusCode::CREATED, axum::Json(invoice)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn load(app: &App, id: i64) -> Result<Invoice, ApiError> {
    app.repo.invoice(id).await?.ok_or(ApiError::NotFound(id))
}

/// `GET /invoices/{id}`.
async fn get_invoice(
    AxumState(app): AxumState<App>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Invoice>, ApiError> {
    Ok(axum::Json(load(&app, id).await?))
}

/// The response to a transition call: the invoice after it, or the error
/// its outcome means.
async fn settled(
    app: &App,
    id: i64,
    transition: &'static Transition<InvoiceStatus>,
    outcome: Outcome<InvoiceStatus>,
) -> Result<Response, ApiError> {
    let tag = outcome_tag(id, transition, outcome)?;
    let invoice = load(app, id).await?;
    Ok((
        [(TRANSITION_OUTCOME, HeaderValue::from_static(tag))],
        axum::Json(invoice),
    )
        .into_response())
}

/// `applied` or `already_applied`, or the error the outcome means.
fn outcome_tag(
    id: i64,
    transition: &'static Transition<InvoiceStatus>,
    outcome: Outcome<InvoiceStatus>,
) -> Result<&'static str, ApiError> {
    match outcome {
        Outcome::Applied { .. } => Ok("applied"),
        Outcome::AlreadyApplied { .. } => Ok("already_applied"),
        Outcome::Rejected { current } => Err(ApiError::Conflict {
            id,
            transition: transition.name(),
            current,
        }),
        Outcome::NotFound => Err(ApiError::NotFound(id)),
    }
}

async fn transition(
    app: App,
    id: i64,
    transition: &'static Transition<InvoiceStatus>,
) -> Result<Response, ApiError> {
    let outcome = app.repo.apply(transition, id).await?;
    settled(&app, id, transition, outcome).await
}

/// `POST /invoices/{id}/issue`.
async fn issue(AxumState(app): AxumState<App>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    transition(app, id, InvoiceStatus::issue()).await
}

/// `POST /invoices/{id}/void`.
async fn void(AxumState(app): AxumState<App>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    transition(app, id, InvoiceStatus::void()).await
}

/// `POST /invoices/{id}/refund`.
async fn refund(AxumState(app): AxumState<App>, Path(id): Path<i64>) -> Result<Response, ApiError> {
    transition(app, id, InvoiceStatus::refund()).await
}

/// Checks a payment's amount against the invoice's.
async fn check_amount(app: &App, id: i64, amount_cents: i64) -> Result<(), ApiError> {
    let invoice = load(app, id).await?;
    if invoice.amount_cents != amount_cents {
        return Err(ApiError::AmountMismatch {
            id,
            due: invoice.amount_cents,
            paid: amount_cents,
        });
    }
    Ok(())
}

/// `POST /invoices/{id}/pay`: the payment row is written by the `pay`
/// transition's handler, in its transaction, only when this call moved the
/// invoice — so requests with different keys, or none, still pay once.
/// The payment's reference is the key the idempotency layer claimed (the
/// header unquoted, as the layer reads it), never the raw header.
async fn pay(
    AxumState(app): AxumState<App>,
    Path(id): Path<i64>,
    claimed: Option<Extension<ClaimedKey>>,
    Json(request): Json<PayRequest>,
) -> Result<Response, ApiError> {
    request.validate()?;
    check_amount(&app, id, request.amount_cents).await?;
    let payment = RecordPayment {
        amount_cents: request.amount_cents,
        source: PaymentSource::Api,
        reference: claimed.map(|Extension(claimed)| claimed.key.as_str().to_owned()),
    };
    let outcome = app.repo.pay(id, &payment).await?;
    settled(&app, id, InvoiceStatus::pay(), outcome).await
}

/// `GET /invoices/{id}/history`.
async fn history(
    AxumState(app): AxumState<App>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Vec<HistoryEntry>>, ApiError> {
    load(&app, id).await?;
    Ok(axum::Json(app.repo.history(id).await?))
}

/// `GET /invoices/{id}/payments`.
async fn payments(
    AxumState(app): AxumState<App>,
    Path(id): Path<i64>,
) -> Result<axum::Json<Vec<Payment>>, ApiError> {
    load(&app, id).await?;
    Ok(axum::Json(app.repo.payments(id).await?))
}

/// The body of `POST /events`' answer.
#[derive(Debug, Serialize)]
struct EventOutcome {
    /// `processed` (this delivery ran the consumer) or `duplicate`.
    outcome: &'static str,
    /// What `pay` did, when this delivery ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    transition: Option<&'static str>,
    /// The invoice after the delivery.
    invoice: Invoice,
}

/// `POST /events`.
async fn event(
    AxumState(app): AxumState<App>,
    Json(event): Json<Event>,
) -> Result<axum::Json<EventOutcome>, ApiError> {
    let event_id = event.validate()?;
    let id = event.invoice_id;
    check_amount(&app, id, event.amount_cents).await?;
    let pay = PayFromEvent {
        invoice_id: id,
        payment: RecordPayment {
            amount_cents: event.amount_cents,
            source: PaymentSource::Event,
            reference: Some(event_id.as_str().to_owned()),
        },
    };
    let delivery = app
        .repo
        .pay_from_event(&event_id, &pay)
        .await
        .map_err(|error| match error {
            EventError::Refused(Outcome::Rejected { current }) => ApiError::Conflict {
                id,
                transition: InvoiceStatus::pay().name(),
                current,
            },
            EventError::Refused(_) => ApiError::NotFound(id),
            other => ApiError::internal(other),
        })?;
    let (outcome, transition) = match delivery {
        Delivery::Processed(outcome) => (
            "processed",
            Some(outcome_tag(id, InvoiceStatus::pay(), outcome)?),
        ),
        Delivery::Duplicate => ("duplicate", None),
    };
    Ok(axum::Json(EventOutcome {
        outcome,
        transition,
        invoice: load(&app, id).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_a_scope_takes_fits_the_client_id_column() {
        let longest = (1..=Scope::MAX_LEN)
            .rev()
            .find(|len| Scope::new("c".repeat(*len), OPERATION).is_ok())
            .unwrap();
        assert!(longest <= MAX_CLIENT_ID_LEN, "{longest}");
    }
}
