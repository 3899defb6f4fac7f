//! The consensus seam: how the ConfigNode commits [`ConfigPlan`]s and learns whether it leads.
//!
//! [`Consensus::propose`] resolves only once the plan is durably committed *and* applied to
//! the local [`ClusterState`]. Leadership carries an [`Epoch`] that strictly increases with
//! every leader change (the Raft term when a replicated implementation lands); a proposal made
//! under an old epoch is refused, so a deposed leader cannot change metadata.
//!
//! [`LocalConsensus`] is the single-node implementation over any [`crate::storage::LogStore`].

mod local;
mod replay;
mod watch;

pub use local::LocalConsensus;
#[cfg(any(test, feature = "testing"))]
pub use replay::adversarial_history;
pub use replay::{ReplayDecoder, SequentialDecoder, decode_entries};
pub use watch::{Leadership, LeadershipWatch};

use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::model::Epoch;
use crate::plan::{ConfigPlan, PlanDecodeError, PlanEncodeError};
use crate::snapshot::SnapshotError;
use crate::state::{ApplyResult, ClusterState};
use crate::storage::StorageError;

/// Why a proposal (or a leadership change) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusError {
    /// This node does not lead.
    #[error("not the leader")]
    NotLeader,
    /// The proposer's epoch is not the one in force.
    #[error("stale epoch {proposed}, current {current}")]
    StaleEpoch {
        /// The epoch the proposer believed in.
        proposed: Epoch,
        /// The epoch in force.
        current: Epoch,
    },
    /// The log or snapshot store failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The plan could not be encoded.
    #[error(transparent)]
    Encode(#[from] PlanEncodeError),
    /// A committed entry does not decode: the log is damaged. Never skipped.
    #[error("log entry {index} is undecodable: {source}")]
    CorruptEntry {
        /// Its index.
        index: u64,
        /// Why.
        source: PlanDecodeError,
    },
    /// A stored snapshot does not decode.
    #[error("snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// The proposal's fate is unknown (a timeout, a lost reply from the log or the group):
    /// it may have been committed and applied, or not. Steps are idempotent, so the caller
    /// retries; a procedure transition's compare-and-set makes the retry safe.
    #[error("commit outcome unknown: {0}")]
    OutcomeUnknown(String),
}

impl ConsensusError {
    /// Whether the same proposal may succeed if tried again under the same epoch.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsensusError::Storage(e) => e.is_retryable(),
            ConsensusError::OutcomeUnknown(_) => true,
            _ => false,
        }
    }

    /// Whether this node's consensus cannot go on without a restart: its log or snapshots
    /// failed in a way that poisons them (a failed fsync, damage). The node steps down and
    /// its process should exit so a supervisor restarts it and recovery runs.
    pub fn is_fatal(&self) -> bool {
        match self {
            ConsensusError::Storage(e) => {
                !e.is_retryable() && !matches!(e, StorageError::Fenced { .. })
            }
            ConsensusError::CorruptEntry { .. } | ConsensusError::Snapshot(_) => true,
            _ => false,
        }
    }

    /// Whether the error means this node has lost (or never had) leadership.
    pub fn is_leadership_loss(&self) -> bool {
        matches!(
            self,
            ConsensusError::NotLeader
                | ConsensusError::StaleEpoch { .. }
                | ConsensusError::Storage(StorageError::Fenced { .. })
        )
    }
}

/// The applied state, shared between the consensus implementation and readers.
#[derive(Debug, Default)]
pub struct StateCell {
    state: RwLock<ClusterState>,
    /// Bumped after every write, whoever proposed it: a record that landed through a commit
    /// its proposer saw fail is noticed too.
    version: std::sync::atomic::AtomicU64,
    changed: event_listener::Event,
}

impl StateCell {
    /// Runs `f` on the current applied state.
    pub fn read<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        let guard = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// A copy of the current applied state.
    pub fn snapshot(&self) -> ClusterState {
        self.read(ClusterState::clone)
    }

    /// Runs `f` with the applied state for writing. Only a [`Consensus`] implementation
    /// calls this, and only to apply committed entries in log order (or to install a
    /// snapshot): every other reader goes through [`StateCell::read`].
    pub fn write<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        let result = {
            let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        };
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.changed.notify(usize::MAX);
        result
    }

    /// How many writes the state has seen (compare with [`StateCell::changed_since`]).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resolves once the state has been written since `version` was read.
    pub async fn changed_since(&self, version: u64) {
        loop {
            if self.version() != version {
                return;
            }
            let listener = self.changed.listen();
            if self.version() != version {
                return;
            }
            listener.await;
        }
    }
}

/// The ConfigNode's way to commit plans and follow leadership.
#[async_trait]
pub trait Consensus: Send + Sync + 'static {
    /// Commits `plan` as the leader of `epoch` and applies it. Resolves with the apply result
    /// once the plan is durable and applied; fails if this node no longer leads at `epoch`.
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError>;
    /// The applied state.
    fn state(&self) -> Arc<StateCell>;
    /// Leadership changes of this node.
    fn leadership(&self) -> LeadershipWatch;
    /// Raises this leader's epoch above `seen`, an epoch a DataNode reports having seen (it
    /// would refuse every request of the current epoch otherwise). Resolves with the new
    /// epoch once this node leads under it; in-flight proposals of the old epoch fail as
    /// after any leader change. Fails with a leadership-loss error if this node no longer
    /// leads (a deposed leader must not take leadership back).
    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError>;
    /// Resolves with the error once this node's consensus has failed for good (see
    /// [`ConsensusError::is_fatal`]): it has stepped down and will not lead again until the
    /// process restarts. Never resolves on a healthy node.
    async fn failed(&self) -> ConsensusError;
}
