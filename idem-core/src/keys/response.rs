use serde::{Deserialize, Serialize};

/// The response a completed request left behind, replayed to every retry
/// with the same key: status, headers, body bytes and trailers, exactly.
///
/// # Trailers
///
/// Trailer fields (sent after the body, as gRPC sends `grpc-status`) are
/// kept in [`headers`](Self::headers) too, each name prefixed with
/// [`TRAILER_PREFIX`] (`trailer:grpc-status`): a colon cannot appear in a
/// field name, so a trailer never clashes with a header, and every store
/// keeps trailers without a column of their own. [`with_trailer`](Self::with_trailer)
/// adds one, [`trailers`](Self::trailers) lists them;
/// [`header`](Self::header) never returns one.
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
///
/// let grpc = StoredResponse::new(200, b"\0\0\0\0\x02hi".to_vec())
///     .with_header("content-type", "application/grpc")
///     .with_trailer("grpc-status", "0");
/// assert_eq!(grpc.header("grpc-status"), None);
/// assert_eq!(grpc.trailers().collect::<Vec<_>>(), [("grpc-status", &b"0"[..])]);
/// assert_eq!(grpc.fields().count(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The HTTP status code (or any status the operation defines).
    pub status: u16,
    /// Header names (lower case) and values as bytes, in order; a name may
    /// repeat. Trailers follow the headers, named with [`TRAILER_PREFIX`].
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

/// The prefix of a trailer's name in [`StoredResponse::headers`].
pub const TRAILER_PREFIX: &str = "trailer:";

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

    /// Adds a trailer (the name is stored in lower case, after
    /// [`TRAILER_PREFIX`]).
    pub fn with_trailer(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((
            format!("{TRAILER_PREFIX}{}", name.to_ascii_lowercase()),
            value.as_ref().to_vec(),
        ));
        self
    }

    /// The first value of a header (not a trailer), by case-insensitive
    /// name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The headers, without the trailers, in order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers
            .iter()
            .filter(|(name, _)| !name.starts_with(TRAILER_PREFIX))
            .map(|(name, value)| (name.as_str(), value.as_slice()))
    }

    /// The trailers, names without their prefix, in order.
    pub fn trailers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().filter_map(|(name, value)| {
            name.strip_prefix(TRAILER_PREFIX)
                .map(|name| (name, value.as_slice()))
        })
    }
}
