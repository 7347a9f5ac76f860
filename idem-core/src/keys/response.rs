use serde::{Deserialize, Serialize};

/// The response a completed request left behind, replayed to every retry
/// with the same key: status, headers and body bytes, exactly.
///
/// ```
/// use idem_core::keys::StoredResponse;
///
/// let response = StoredResponse::new(201, b"{\"id\":7}".to_vec())
///     .with_header("content-type", "application/json")
///     .with_header("location", "/invoices/7");
/// assert_eq!(response.header("Location"), Some(&b"/invoices/7"[..]));
/// let json = serde_json::to_string(&response).unwrap();
/// assert_eq!(serde_json::from_str::<StoredResponse>(&json).unwrap(), response);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status code (or any status the operation defines).
    pub status: u16,
    /// Header names (lower case) and values as bytes, in order; a name may
    /// repeat.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl StoredResponse {
    /// A response with a status and a body and no headers.
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        StoredResponse {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (the name is stored in lower case).
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}
