//! [`BackoffPolicy`]: exponential backoff with jitter for retryable step errors.

use std::time::Duration;

use crate::runtime::Rng;

/// How retryable step errors are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Largest delay (before jitter).
    pub max: Duration,
    /// Attempts after which a retryable error is treated as permanent; `None` retries
    /// forever (visibly: attempts and last error are recorded after every failure).
    pub max_attempts: Option<u32>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (1-based): `initial * 2^(attempt-1)` capped at
    /// `max`, then "equal jitter": half fixed, half uniformly random, so retries of many
    /// procedures failing together spread out.
    pub fn delay(&self, attempt: u32, rng: &dyn Rng) -> Duration {
        let shift = attempt.saturating_sub(1).min(32);
        let base = self
            .initial
            .saturating_mul(1u32 << shift.min(31))
            .min(self.max);
        let base_ms = base.as_millis() as u64;
        let half = base_ms / 2;
        let jitter = if half == 0 {
            0
        } else {
            rng.next_u64() % (half + 1)
        };
        Duration::from_millis(base_ms - half + jitter)
    }

    /// Whether a retryable failure at `attempt` (1-based) may still be retried.
    pub fn may_retry(&self, attempt: u32) -> bool {
        self.max_attempts.is_none_or(|max| attempt < max)
    }
}
