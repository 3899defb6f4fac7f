//! [`FailureCell`]: the first fatal failure of a node's consensus, and a way to wait for it.

use std::sync::{Arc, Mutex};

use event_listener::Event;
use shoal_core::consensus::ConsensusError;
use shoal_core::storage::StorageError;

#[derive(Debug, Default)]
struct Inner {
    failure: Mutex<Option<ConsensusError>>,
    event: Event,
}

/// Set once, by whichever part of the node fails first (log, snapshots, openraft's core);
/// clones share it.
#[derive(Debug, Clone, Default)]
pub struct FailureCell {
    inner: Arc<Inner>,
}

impl FailureCell {
    /// The recorded failure, if any.
    pub fn get(&self) -> Option<ConsensusError> {
        self.inner
            .failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records `error` unless a failure is already recorded. The stored error is always fatal
    /// ([`ConsensusError::is_fatal`]): a retryable storage error that stopped Raft is stored as
    /// [`StorageError::Unavailable`], since the node cannot go on without a restart.
    pub fn record(&self, error: ConsensusError) {
        let error = if error.is_fatal() {
            error
        } else {
            ConsensusError::Storage(StorageError::Unavailable(format!(
                "raft stopped after: {error}"
            )))
        };
        let first = {
            let mut failure = self.inner.failure.lock().unwrap_or_else(|p| p.into_inner());
            let first = failure.is_none();
            if first {
                *failure = Some(error.clone());
            }
            first
        };
        if first {
            tracing::error!(%error, "raft consensus failed; this node stops until restarted");
            self.inner.event.notify(usize::MAX);
        }
    }

    /// Resolves with the failure once one is recorded.
    pub async fn wait(&self) -> ConsensusError {
        loop {
            if let Some(failure) = self.get() {
                return failure;
            }
            let listener = self.inner.event.listen();
            if let Some(failure) = self.get() {
                return failure;
            }
            listener.await;
        }
    }
}
