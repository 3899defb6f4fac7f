//! The ConfigNode group as admins see it: its members and leader ([`GroupStatus`]) and the
//! membership changes they may ask for ([`ConfigNodeGroupApi`]), with errors in core's wire
//! vocabulary ([`ApiError`]) so a transport can carry them unchanged.

use async_trait::async_trait;
use shoal_core::api::ApiError;
use shoal_core::consensus::Consensus;

use crate::consensus::RaftConsensus;
use crate::error::RaftConsensusError;
use crate::types::NodeId;

/// One member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its node id.
    pub id: NodeId,
    /// The address its peers and clients reach it at.
    pub address: String,
    /// A voter; `false`: a learner still being caught up before it becomes one.
    pub voter: bool,
}

/// The group as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The member that answered.
    pub node_id: NodeId,
    /// Every member (voters and learners), by id.
    pub members: Vec<GroupMember>,
    /// The leader's id, if this member knows one.
    pub leader: Option<NodeId>,
    /// This member's current Raft term.
    pub term: u64,
    /// The epoch of the leadership this member published last (its own, if it leads).
    pub epoch: u64,
    /// The Raft index of the last entry this member applied.
    pub applied: Option<u64>,
    /// A membership change is under way (joint configuration, or not committed yet).
    pub changing: bool,
}

impl GroupStatus {
    /// The leader's address, if known and a member.
    pub fn leader_address(&self) -> Option<&str> {
        let leader = self.leader?;
        self.members
            .iter()
            .find(|m| m.id == leader)
            .map(|m| m.address.as_str())
    }
}

/// Membership of a replicated ConfigNode group, as the admin CLI calls it (over the wire or
/// in process). Changes go one at a time through joint consensus and only on the leader;
/// elsewhere they answer [`ApiError::NotLeader`] naming it.
#[async_trait]
pub trait ConfigNodeGroupApi: Send + Sync + 'static {
    /// The group as the answering member sees it.
    async fn status(&self) -> Result<GroupStatus, ApiError>;
    /// Adds ConfigNode `id` at `address` as a voter (learner first, then joint consensus).
    /// Refused (`Refused`) when the new configuration would have no reachable majority.
    async fn add_member(&self, id: NodeId, address: String) -> Result<(), ApiError>;
    /// Removes voter `id` through joint consensus; refused when the remaining voters would
    /// have no reachable majority.
    async fn remove_member(&self, id: NodeId) -> Result<(), ApiError>;
}

/// The wire form of a group-management error: where the caller should go, what it may
/// retry, and what it must not.
pub fn group_api_error(error: RaftConsensusError) -> ApiError {
    match error {
        RaftConsensusError::NotLeader { leader } => ApiError::NotLeader {
            leader: leader.map(|l| l.addr).filter(|a| !a.is_empty()),
        },
        RaftConsensusError::WouldLoseQuorum { .. }
        | RaftConsensusError::AlreadyMember(_)
        | RaftConsensusError::NotMember(_)
        | RaftConsensusError::AlreadyInitialized => ApiError::Refused(error.to_string()),
        RaftConsensusError::Invalid(_) => ApiError::Refused(error.to_string()),
        RaftConsensusError::ChangeInProgress
        | RaftConsensusError::Timeout(_)
        | RaftConsensusError::Raft(_) => ApiError::Remote {
            message: error.to_string(),
            retryable: true,
        },
        RaftConsensusError::Storage(ref e) => ApiError::Remote {
            retryable: e.is_retryable(),
            message: error.to_string(),
        },
        RaftConsensusError::Stopped(_) => ApiError::Remote {
            message: error.to_string(),
            retryable: false,
        },
    }
}

impl RaftConsensus {
    /// The group as this member sees it.
    pub fn status(&self) -> GroupStatus {
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| GroupMember {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let changing = membership.get_joint_config().len() > 1
            || metrics.membership_config.log_id() != metrics.committed_membership_config.log_id();
        GroupStatus {
            node_id: self.id(),
            members,
            leader: metrics.current_leader,
            term: metrics.current_term,
            epoch: self.leadership().get().epoch.0,
            applied: self.applied_index(),
            changing,
        }
    }
}

#[async_trait]
impl ConfigNodeGroupApi for RaftConsensus {
    async fn status(&self) -> Result<GroupStatus, ApiError> {
        Ok(RaftConsensus::status(self))
    }

    async fn add_member(&self, id: NodeId, address: String) -> Result<(), ApiError> {
        RaftConsensus::add_member(self, id, address)
            .await
            .map_err(group_api_error)
    }

    async fn remove_member(&self, id: NodeId) -> Result<(), ApiError> {
        RaftConsensus::remove_member(self, id)
            .await
            .map_err(group_api_error)
    }
}
