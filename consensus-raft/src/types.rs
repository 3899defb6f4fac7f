//! The Raft type configuration and the on-disk form of Shoal's Raft log entries.
//!
//! Entry layout (the payload of one `LogStore` record, whose own header carries the term and a
//! checksum): `format u8 (=1) | kind u8 | term u64 BE | index u64 BE | body`. Kind codes are
//! stable: Blank = 1, Membership = 2 (CBOR [`StoredMembership`]), Plan = 3 (`epoch u64 BE |
//! encoded ConfigPlan`), RaiseEpochFloor = 4 (`epoch u64 BE | above u64 BE`). The encoding is
//! Shoal's own rather than openraft's serde derives, so an openraft upgrade cannot change what
//! is on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use openraft::entry::RaftEntry;
use openraft::vote::leader_id_std::CommittedLeaderId;
use openraft::{BasicNode, EntryPayload, Membership};
use serde::{Deserialize, Serialize};
use shoal_core::state::ApplyResult;

use crate::rt::SmolRuntime;

/// A ConfigNode's id in the Raft group.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Shoal's Raft types. Standard Raft leader ids (one leader per term, `leader_id_std`):
    /// the epoch is derived from the term, so two leaders must never share one.
    pub ShoalRaft:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Term = u64,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>,
        Vote = openraft::impls::Vote<Self::LeaderId>,
        AsyncRuntime = SmolRuntime,
);

/// A log entry of Shoal's group.
pub type Entry =
    openraft::Entry<CommittedLeaderId<u64>, EntryPayload<RaftRequest, NodeId, BasicNode>>;
/// A log id.
pub type LogId = openraft::LogId<CommittedLeaderId<u64>>;
/// A vote.
pub type Vote = openraft::impls::Vote<openraft::impls::leader_id_std::LeaderId<u64, NodeId>>;
/// A membership with the log id that set it.
pub type StoredMembershipOf = openraft::StoredMembership<CommittedLeaderId<u64>, NodeId, BasicNode>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId<u64>, NodeId, BasicNode>;

/// What Shoal writes into the Raft log besides openraft's own entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftRequest {
    /// An encoded `ConfigPlan`, applied only if `epoch` is the epoch in force when the entry
    /// applies (its term plus the floor): the fence that keeps a deposed leader's or an
    /// outdated epoch's plan from changing metadata.
    Plan {
        /// The proposer's epoch.
        epoch: u64,
        /// `ConfigPlan::encode` bytes.
        plan: Vec<u8>,
    },
    /// Raises the epoch floor so the epoch in force exceeds `above` (a DataNode's fence),
    /// fenced by `epoch` like a plan.
    RaiseEpochFloor {
        /// The proposer's epoch.
        epoch: u64,
        /// The epoch the new one must exceed.
        above: u64,
    },
}

impl fmt::Display for RaftRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RaftRequest::Plan { epoch, plan } => write!(f, "plan({} bytes)@{epoch}", plan.len()),
            RaftRequest::RaiseEpochFloor { epoch, above } => {
                write!(f, "raise-epoch-floor(above {above})@{epoch}")
            }
        }
    }
}

/// What applying an entry produced, handed back to its proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RaftResponse {
    /// A plan was applied to the `ClusterState` with this result.
    Applied(ApplyResult),
    /// The floor was raised; this is the epoch in force now.
    EpochRaised {
        /// The new epoch.
        epoch: u64,
    },
    /// The entry's epoch was not the one in force when it applied: nothing changed.
    StaleEpoch {
        /// The proposer's epoch.
        proposed: u64,
        /// The epoch in force.
        current: u64,
    },
    /// A blank or membership entry.
    Internal,
}

/// The epoch of a leader of `term` under `floor`.
pub fn epoch_of(term: u64, floor: u64) -> u64 {
    term.saturating_add(floor)
}

/// Why stored entry bytes could not be decoded (damage, or a newer format).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable Raft log entry: {0}")]
pub struct EntryDecodeError(pub String);

const ENTRY_FORMAT: u8 = 1;
const KIND_BLANK: u8 = 1;
const KIND_MEMBERSHIP: u8 = 2;
const KIND_PLAN: u8 = 3;
const KIND_RAISE_FLOOR: u8 = 4;
const ENTRY_HEADER: usize = 2 + 8 + 8;

/// A membership as stored: the joint configuration and each node's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMembership {
    /// One voter set, or two during a joint change.
    pub configs: Vec<BTreeSet<NodeId>>,
    /// Every member's (voter or learner) address.
    pub nodes: BTreeMap<NodeId, String>,
}

impl StoredMembership {
    /// The stored form of `membership`.
    pub fn from_membership(membership: &Membership<NodeId, BasicNode>) -> Self {
        Self {
            configs: membership.get_joint_config().clone(),
            nodes: membership
                .nodes()
                .map(|(id, node)| (*id, node.addr.clone()))
                .collect(),
        }
    }

    /// Back to openraft's membership.
    pub fn to_membership(&self) -> Result<Membership<NodeId, BasicNode>, EntryDecodeError> {
        let nodes: BTreeMap<NodeId, BasicNode> = self
            .nodes
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.clone())))
            .collect();
        Membership::new(self.configs.clone(), nodes)
            .map_err(|e| EntryDecodeError(format!("membership: {e}")))
    }
}

fn u64_at(bytes: &[u8], at: usize) -> Result<u64, EntryDecodeError> {
    bytes
        .get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| EntryDecodeError(format!("truncated at byte {at}")))
}

/// Encodes `entry` for the log.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENTRY_HEADER + 32);
    let kind = match &entry.payload {
        EntryPayload::Blank => KIND_BLANK,
        EntryPayload::Membership(_) => KIND_MEMBERSHIP,
        EntryPayload::Normal(RaftRequest::Plan { .. }) => KIND_PLAN,
        EntryPayload::Normal(RaftRequest::RaiseEpochFloor { .. }) => KIND_RAISE_FLOOR,
    };
    out.push(ENTRY_FORMAT);
    out.push(kind);
    out.extend_from_slice(&entry.log_id.leader_id.term.to_be_bytes());
    out.extend_from_slice(&entry.log_id.index.to_be_bytes());
    match &entry.payload {
        EntryPayload::Blank => {}
        EntryPayload::Membership(m) => {
            // Writing CBOR into a Vec cannot fail for these plain types.
            let _ = ciborium::into_writer(&StoredMembership::from_membership(m), &mut out);
        }
        EntryPayload::Normal(RaftRequest::Plan { epoch, plan }) => {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(plan);
        }
        EntryPayload::Normal(RaftRequest::RaiseEpochFloor { epoch, above }) => {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&above.to_be_bytes());
        }
    }
    out
}

/// Decodes an entry written by [`encode_entry`].
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, EntryDecodeError> {
    if bytes.len() < ENTRY_HEADER {
        return Err(EntryDecodeError(format!(
            "{} bytes, header needs {ENTRY_HEADER}",
            bytes.len()
        )));
    }
    if bytes[0] != ENTRY_FORMAT {
        return Err(EntryDecodeError(format!(
            "unknown entry format {}",
            bytes[0]
        )));
    }
    let term = u64_at(bytes, 2)?;
    let index = u64_at(bytes, 10)?;
    let body = &bytes[ENTRY_HEADER..];
    let payload = match bytes[1] {
        KIND_BLANK if body.is_empty() => EntryPayload::Blank,
        KIND_MEMBERSHIP => {
            let mut reader = body;
            let stored: StoredMembership = ciborium::from_reader(&mut reader)
                .map_err(|e| EntryDecodeError(format!("membership body: {e}")))?;
            if !reader.is_empty() {
                return Err(EntryDecodeError("trailing bytes after membership".into()));
            }
            EntryPayload::Membership(stored.to_membership()?)
        }
        KIND_PLAN => EntryPayload::Normal(RaftRequest::Plan {
            epoch: u64_at(body, 0)?,
            plan: body[8..].to_vec(),
        }),
        KIND_RAISE_FLOOR if body.len() == 16 => {
            EntryPayload::Normal(RaftRequest::RaiseEpochFloor {
                epoch: u64_at(body, 0)?,
                above: u64_at(body, 8)?,
            })
        }
        kind => {
            return Err(EntryDecodeError(format!(
                "unknown kind {kind} ({} body bytes)",
                body.len()
            )));
        }
    };
    Ok(Entry::new(
        LogId::new(CommittedLeaderId::new(term), index),
        payload,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term), index)
    }

    #[test]
    fn every_entry_kind_round_trips() {
        let membership = Membership::new(
            vec![BTreeSet::from([1, 2]), BTreeSet::from([1, 2, 3])],
            BTreeMap::from([
                (1, BasicNode::new("a:1")),
                (2, BasicNode::new("b:2")),
                (3, BasicNode::new("c:3")),
            ]),
        )
        .expect("membership");
        let entries = [
            Entry::new(log_id(1, 0), EntryPayload::Blank),
            Entry::new(log_id(2, 5), EntryPayload::Membership(membership)),
            Entry::new(
                log_id(3, 9),
                EntryPayload::Normal(RaftRequest::Plan {
                    epoch: 7,
                    plan: vec![1, 2, 3],
                }),
            ),
            Entry::new(
                log_id(4, 10),
                EntryPayload::Normal(RaftRequest::RaiseEpochFloor {
                    epoch: 4,
                    above: 1_000_000,
                }),
            ),
        ];
        for entry in entries {
            let bytes = encode_entry(&entry);
            assert_eq!(decode_entry(&bytes).expect("decode"), entry);
        }
    }

    #[test]
    fn damaged_entries_are_typed_errors() {
        let entry = Entry::new(
            log_id(1, 1),
            EntryPayload::Normal(RaftRequest::RaiseEpochFloor { epoch: 1, above: 2 }),
        );
        let bytes = encode_entry(&entry);
        for len in 0..bytes.len() {
            assert!(decode_entry(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut unknown = bytes.clone();
        unknown[1] = 99;
        assert!(decode_entry(&unknown).is_err());
        let mut newer = bytes;
        newer[0] = 2;
        assert!(decode_entry(&newer).is_err());
    }
}
