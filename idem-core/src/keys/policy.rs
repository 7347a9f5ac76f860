/// Decides which results of a run are final — stored and replayed to every
/// retry — and which release the key so the client may try again.
///
/// The default stores every status below 500 except 408 (Request Timeout)
/// and 429 (Too Many Requests), which say "try again later", so a decline
/// (402, 422, ...) is replayed while an outage or a rate limit is never
/// cached (caching them would refuse a valid retry forever).
///
/// ```
/// use idem_core::keys::ResponsePolicy;
///
/// let policy = ResponsePolicy::default();
/// assert!(policy.is_final(201));
/// assert!(policy.is_final(402));
/// assert!(!policy.is_final(429));
/// assert!(!policy.is_final(503));
///
/// // Store only successes.
/// let strict = ResponsePolicy::new(|status| (200..300).contains(&status));
/// assert!(!strict.is_final(402));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ResponsePolicy {
    is_final: fn(u16) -> bool,
}

impl ResponsePolicy {
    /// A policy that stores the statuses for which `is_final` is true.
    pub const fn new(is_final: fn(u16) -> bool) -> Self {
        ResponsePolicy { is_final }
    }

    /// Whether a result with this status is stored (true) or releases the
    /// key (false).
    pub fn is_final(&self, status: u16) -> bool {
        (self.is_final)(status)
    }
}

fn default_is_final(status: u16) -> bool {
    status < 500 && status != 408 && status != 429
}

impl Default for ResponsePolicy {
    fn default() -> Self {
        ResponsePolicy::new(default_is_final)
    }
}
