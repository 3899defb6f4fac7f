//! The consensus seam: how the ConfigNode commits [`ConfigPlan`]s and learns whether it leads.
//!
//! [`Consensus::propose`] resolves only once the plan is durably committed *and* applied to
//! the local [`ClusterState`]. Leadership carries an [`Epoch`] that strictly increases with
//! every leader change (the Raft term when a replicated implementation lands); a proposal made
//! under an old epoch is refused, so a deposed leader cannot change metadata.
//!
//! [`LocalConsensus`] is the single-node implementation over any [`crate::storage::LogStore`].

mod local;
mod watch;

pub use local::LocalConsensus;
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
}

impl ConsensusError {
    /// Whether the same proposal may succeed if tried again under the same epoch.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConsensusError::Storage(e) => e.is_retryable(),
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

    pub(crate) fn write<R>(&self, f: impl FnOnce(&mut ClusterState) -> R) -> R {
        let mut guard = self.state.write().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
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
}
