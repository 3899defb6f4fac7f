//! [`Node`]: the parts of one group member that [`crate::RaftConsensus`] and its leadership
//! publisher both hold, and how a stopped openraft becomes a fatal consensus error.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use openraft::Raft;
use shoal_core::consensus::{ConsensusError, LeadershipWatch};
use shoal_core::storage::StorageError;

use crate::config::RaftConfig;
use crate::failure::FailureCell;
use crate::state_machine::{SmShared, StateMachine};
use crate::types::{NodeId, ShoalRaft};

/// Shared by the node and its leadership publisher.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) raft: Raft<ShoalRaft, StateMachine>,
    pub(crate) sm: Arc<SmShared>,
    pub(crate) watch: LeadershipWatch,
    pub(crate) failure: FailureCell,
    pub(crate) config: RaftConfig,
    /// Set by [`crate::RaftConsensus::shutdown`]: openraft's "stopped" answers from then on
    /// are the shutdown, not a failure.
    pub(crate) stopping: AtomicBool,
}

/// The fatal error a node records when openraft stopped under it with `message`.
pub(crate) fn fatal_error(message: impl std::fmt::Display) -> ConsensusError {
    ConsensusError::Storage(StorageError::Unavailable(format!(
        "raft stopped: {message}"
    )))
}
