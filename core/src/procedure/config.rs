//! [`ExecutorConfig`] and [`RetentionPolicy`]: how an executor runs and what it keeps.

use std::time::Duration;

use super::BackoffPolicy;

/// How long finished procedures stay queryable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Finished root procedures kept at most (oldest pruned first).
    pub max_finished: usize,
    /// Finished root procedures older than this are pruned (age counted from when this
    /// leader first saw them finished).
    pub max_age: Duration,
    /// How often the age bound is checked; `None` checks only when a procedure finishes.
    pub check_every: Option<Duration>,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self {
            max_finished: 1_000,
            max_age: Duration::from_secs(24 * 3600),
            check_every: Some(Duration::from_secs(60)),
        }
    }
}

/// Executor tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Workers running steps concurrently. Waiting procedures hold none.
    pub workers: usize,
    /// Retry policy for retryable step errors.
    pub backoff: BackoffPolicy,
    /// Retention of finished procedures.
    pub retention: RetentionPolicy,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            workers: 8,
            backoff: BackoffPolicy::default(),
            retention: RetentionPolicy::default(),
        }
    }
}
