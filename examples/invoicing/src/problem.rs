//! Errors as `application/problem+json` (RFC 9457), and the extractors
//! that turn axum's rejections (malformed JSON, missing fields, ids that
//! are not numbers) into them.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::invoice::{Invalid, InvoiceStatus};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An API error; each becomes one problem+json response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes.
    #[error("{0}")]
    Body(String, StatusCode),
    /// No route matches the path, or the route does not take the method.
    #[error("{1}")]
    Route(StatusCode, &'static str),
    /// A path parameter is not what the route takes.
    #[error("{0}")]
    Path(String),
    /// A field is out of range or unknown.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// No invoice has this id.
    #[error("there is no invoice {0}")]
    NotFound(i64),
    /// The transition is not allowed from the invoice's state.
    #[error("cannot {transition} invoice {id}: it is {current}")]
    Conflict {
        /// The invoice.
        id: i64,
        /// The transition asked for.
        transition: &'static str,
        /// The invoice's state, which does not allow it.
        current: InvoiceStatus,
    },
    /// The amount paid is not the amount due.
    #[error("invoice {id} is for {due} cents, the payment is for {paid} cents")]
    AmountMismatch {
        /// The invoice.
        id: i64,
        /// The invoice's amount.
        due: i64,
        /// The amount sent.
        paid: i64,
    },
    /// The idempotency key created another invoice before (its key record
    /// is gone, the invoice is not).
    #[error(
        "this Idempotency-Key created a different invoice before: use a new key for a new invoice"
    )]
    KeyReused,
    /// The database or idem failed; the details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Wraps any failure of the storage layer.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        ApiError::Internal(error.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Body(_, status) | ApiError::Route(status, _) => *status,
            ApiError::Path(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) | ApiError::AmountMismatch { .. } | ApiError::KeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Body(..) => "Invalid request body",
            ApiError::Route(..) => "Unknown route",
            ApiError::Path(_) => "Invalid path parameter",
            ApiError::Invalid(_) => "Invalid field",
            ApiError::NotFound(_) => "Invoice not found",
            ApiError::Conflict { .. } => "Transition not allowed",
            ApiError::AmountMismatch { .. } => "Amount does not match the invoice",
            ApiError::KeyReused => "Idempotency key reused",
            ApiError::Internal(_) => "Internal error",
        }
    }
}

/// The problem+json body.
#[derive(Debug, Serialize)]
struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_state: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(message) => {
                tracing::error!(%message, "request failed");
                "the server failed to handle the request; it is logged, try again later".to_owned()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: "about:blank",
            title: self.title(),
            status: status.as_u16(),
            detail,
            field: match &self {
                ApiError::Invalid(invalid) => Some(invalid.field),
                _ => None,
            },
            current_state: match &self {
                ApiError::Conflict { current, .. } => Some(idem::State::as_str(*current)),
                _ => None,
            },
        };
        let mut response = (status, axum::Json(problem)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

/// `axum::Json` whose rejection is a problem+json response.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Json(value)),
            Err(rejection) => Err(body_error(rejection)),
        }
    }
}

fn body_error(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let detail = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "send the body as JSON with `Content-Type: application/json`".to_owned()
        }
        _ => rejection.body_text(),
    };
    ApiError::Body(detail, status)
}

/// `axum::extract::Path` whose rejection is a problem+json response.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(path_error(rejection)),
        }
    }
}

fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::Path(format!(
        "{}; invoice ids are positive integers",
        rejection.body_text()
    ))
}
