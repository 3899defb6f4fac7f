//! Seeding a new group with the state of a single-node ConfigNode: the upgrade from
//! `LocalConsensus` to a replicated group.
//!
//! [`seed_group`] writes, into a node's *empty* Raft stores, what `initialize` would have
//! written plus the old state: a Raft snapshot at log id `(term 0, index 0)` — where openraft
//! puts a new group's first membership entry — holding the first membership, the old
//! `ClusterState`, and an epoch floor equal to the old node's last epoch; and a purge point at
//! that log id, so the log starts after it. Started over these stores the node is an
//! initialized member whose first leadership has an epoch above every epoch the old node
//! used (epoch = term + floor, term >= 1), so no DataNode fence needs healing. The other first
//! members must start empty and uninitialized: they vote for the seeded node (its log is
//! longer than their empty one) and receive the state as a snapshot.

use std::collections::BTreeMap;

use shoal_core::state::ClusterState;

use crate::config::RaftStores;
use crate::error::RaftConsensusError;
use crate::meta::{RaftMeta, StoredLogId};
use crate::state_machine::{SnapshotHeader, encode_snapshot};
use crate::types::{NodeId, StoredMembership};

/// The log id of a new group's first membership (openraft's `initialize` writes it there).
const FIRST: StoredLogId = StoredLogId { term: 0, index: 0 };

/// Seeds `stores` (which must be empty: no vote, no entry, no snapshot) as the first member
/// of a group of `members` (id → address) holding `state`, with the epoch floor `floor` (the
/// old node's last epoch). See the module docs.
pub async fn seed_group(
    stores: &RaftStores,
    members: &BTreeMap<NodeId, String>,
    state: &ClusterState,
    floor: u64,
) -> Result<(), RaftConsensusError> {
    if members.is_empty() {
        return Err(RaftConsensusError::Invalid(
            "a group needs at least one member".into(),
        ));
    }
    let empty = stores.meta.load().await?.is_none()
        && stores.log.last_index() == 0
        && stores.snapshots.load_latest().await?.is_none();
    if !empty {
        return Err(RaftConsensusError::AlreadyInitialized);
    }
    let header = SnapshotHeader {
        last_log_id: Some(FIRST),
        membership_log_id: Some(FIRST),
        membership: StoredMembership {
            configs: vec![members.keys().copied().collect()],
            nodes: members.clone(),
        },
        floor,
    };
    let bytes = encode_snapshot(&header, state)?;
    // Not atomic across the two stores: a caller that may crash in between seeds into a
    // fresh directory and renames it into place once this returned (as `shoal` does).
    stores.snapshots.save(FIRST.index + 1, bytes).await?;
    let meta = RaftMeta {
        vote: None,
        purged: Some(FIRST),
        committed: Some(FIRST),
    };
    stores.meta.save(meta.encode()?).await?;
    Ok(())
}
