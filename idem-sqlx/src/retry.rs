use std::time::Duration;

/// Bounded, jittered exponential backoff for transactions idem owns, used
/// when the database reports a transient conflict (serialization failure,
/// deadlock, busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// How many times a transaction runs at most (1 = no retry).
    pub max_attempts: u32,
    /// The delay before the first retry; doubled each time.
    pub base_delay: Duration,
    /// The longest delay between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// A policy that never retries.
    pub const fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            base_delay: Duration::ZERO,
            max_delay: Duration::ZERO,
        }
    }

    /// The delay before attempt `attempt + 1` (attempt counts from 1): a
    /// random duration up to the capped exponential delay ("full jitter").
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let cap = exp.min(self.max_delay);
        if cap.is_zero() {
            return cap;
        }
        let nanos = rand::random_range(0..=cap.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}
