//! Exponential backoff with jitter, through the runtime's RNG.

use std::time::Duration;

use crate::runtime::Rng;

/// Exponential backoff: `base * 2^(attempt-1)`, capped at `max`, with up to 50% jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// The delay before attempt `attempt + 1`, given `attempt` failures so far (>= 1).
    pub fn delay(&self, attempt: u32, rng: &dyn Rng) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        let raw_ms = raw.as_millis() as u64;
        // Jitter in [raw/2, raw]: spreads retries of many tasks without ever exceeding max.
        let jitter = if raw_ms < 2 {
            0
        } else {
            rng.next_u64() % (raw_ms / 2 + 1)
        };
        Duration::from_millis(raw_ms - jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::SeededRng;

    #[test]
    fn backoff_grows_and_is_capped() {
        let rng = SeededRng::new(1);
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        for attempt in 1..30 {
            let d = backoff.delay(attempt, &rng);
            let raw = (100u64 << (attempt - 1).min(20)).min(1_000);
            assert!(
                d.as_millis() as u64 <= raw && d.as_millis() as u64 >= raw / 2,
                "{d:?}"
            );
        }
    }
}
