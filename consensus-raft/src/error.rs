//! [`RaftConsensusError`]: what group management (bootstrap, membership, snapshots) can
//! answer. Proposals answer core's `ConsensusError`.

use shoal_core::consensus::ConsensusError;
use shoal_core::storage::StorageError;

use crate::types::NodeId;

/// The leader as this node knows it: where a refused caller should go instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: NodeId,
    /// Its address as the membership records it (empty if unknown).
    pub addr: String,
}

/// Why a group-management call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RaftConsensusError {
    /// Only the leader changes membership; this node does not lead.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// Who leads, if known.
        leader: Option<LeaderHint>,
    },
    /// The change would leave the new configuration without a reachable majority.
    #[error(
        "membership change refused: only {reachable} of {voters} voters would be reachable, {needed} needed"
    )]
    WouldLoseQuorum {
        /// Voters in the configuration after the change.
        voters: usize,
        /// Of those, how many replicate from the leader now.
        reachable: usize,
        /// The majority the new configuration needs.
        needed: usize,
    },
    /// A membership change is still being committed; changes go one at a time.
    #[error("a membership change is already in progress")]
    ChangeInProgress,
    /// The node is already a voter.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a voter.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The group was already bootstrapped (this node has a log or a vote).
    #[error("the group is already initialized")]
    AlreadyInitialized,
    /// The request itself is unusable (an empty member list, a node without an address).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The call did not finish in time; it may still take effect.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Storage failed while opening or running.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// This node's Raft stopped (a fatal storage failure, or it was shut down).
    #[error("raft stopped: {0}")]
    Stopped(String),
    /// Any other refusal from openraft, with its message.
    #[error("raft: {0}")]
    Raft(String),
}

impl RaftConsensusError {
    /// Whether the same call may succeed later (against this node or the hinted leader).
    pub fn is_retryable(&self) -> bool {
        match self {
            RaftConsensusError::NotLeader { .. }
            | RaftConsensusError::WouldLoseQuorum { .. }
            | RaftConsensusError::ChangeInProgress
            | RaftConsensusError::Timeout(_)
            | RaftConsensusError::Raft(_) => true,
            RaftConsensusError::Storage(e) => e.is_retryable(),
            RaftConsensusError::AlreadyMember(_)
            | RaftConsensusError::NotMember(_)
            | RaftConsensusError::AlreadyInitialized
            | RaftConsensusError::Invalid(_)
            | RaftConsensusError::Stopped(_) => false,
        }
    }
}

impl From<ConsensusError> for RaftConsensusError {
    fn from(error: ConsensusError) -> Self {
        match error {
            ConsensusError::NotLeader | ConsensusError::StaleEpoch { .. } => {
                RaftConsensusError::NotLeader { leader: None }
            }
            ConsensusError::Storage(e) => RaftConsensusError::Storage(e),
            ConsensusError::OutcomeUnknown(m) => RaftConsensusError::Timeout(m),
            other => RaftConsensusError::Stopped(other.to_string()),
        }
    }
}
