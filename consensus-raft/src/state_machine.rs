//! [`StateMachine`]: openraft's state machine over core's [`ClusterState`], and the Raft
//! snapshot format.
//!
//! Besides the `ClusterState` (read by the ConfigNode through `Consensus::state()`), the
//! state machine keeps Raft's own replicated facts: the last applied log id, the membership
//! and the **epoch floor** (epoch = term + floor; see [`crate::RaftConsensus`]). A plan or a
//! floor raise applies only if the epoch it was proposed under is the epoch in force when it
//! applies, which every replica computes the same way from the entry's term and the floor.
//!
//! Snapshot file (`SnapshotStore` bytes, also what travels to a follower):
//! `magic "SHOALRSN" | version u16 BE (=1) | meta_len u32 BE | crc32c(meta ‖ state) u32 BE |
//! meta (CBOR SnapshotHeader) | state (core snapshot codec bytes)`. The core snapshot's
//! `last_index` is the `LogStore` index (Raft index + 1), so both layers name it alike.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use futures_lite::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use serde::{Deserialize, Serialize};
use shoal_core::consensus::{ConsensusError, StateCell};
use shoal_core::plan::ConfigPlan;
use shoal_core::snapshot::{self, Snapshot as CoreSnapshot};
use shoal_core::state::ClusterState;
use shoal_core::storage::{SnapshotStore, StorageError};

use crate::failure::FailureCell;
use crate::meta::StoredLogId;
use crate::types::{
    Entry, LogId, RaftRequest, RaftResponse, ShoalRaft, SnapshotMeta, StoredMembership,
    StoredMembershipOf, epoch_of,
};

/// First bytes of a Raft snapshot.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"SHOALRSN";
const SNAPSHOT_VERSION: u16 = 1;
const SNAPSHOT_HEADER_LEN: usize = 8 + 2 + 4 + 4;

/// A Raft snapshot in memory: openraft's metadata and the file bytes.
pub type RaftSnapshot = openraft::Snapshot<
    openraft::vote::leader_id_std::CommittedLeaderId<u64>,
    crate::types::NodeId,
    openraft::BasicNode,
    Vec<u8>,
>;

/// The Raft metadata a snapshot carries next to the state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The last entry the state includes.
    pub last_log_id: Option<StoredLogId>,
    /// The entry that set the membership in force.
    pub membership_log_id: Option<StoredLogId>,
    /// That membership.
    pub membership: StoredMembership,
    /// The epoch floor.
    pub floor: u64,
}

/// A decoded Raft snapshot.
#[derive(Debug, Clone)]
pub struct DecodedSnapshot {
    /// Raft metadata.
    pub header: SnapshotHeader,
    /// The cluster state.
    pub state: ClusterState,
}

fn corrupt(reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        file: "raft snapshot".into(),
        offset: 0,
        reason: reason.into(),
    }
}

/// Encodes a Raft snapshot.
pub fn encode_snapshot(
    header: &SnapshotHeader,
    state: &ClusterState,
) -> Result<Vec<u8>, StorageError> {
    let core = CoreSnapshot {
        last_index: header.last_log_id.map_or(0, |id| id.index + 1),
        last_term: header.last_log_id.map_or(0, |id| id.term),
        state: state.clone(),
    };
    let state_bytes = snapshot::encode(&core).map_err(|e| corrupt(e.to_string()))?;
    let mut meta = Vec::new();
    ciborium::into_writer(header, &mut meta).map_err(|e| corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(SNAPSHOT_HEADER_LEN + meta.len() + state_bytes.len());
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&meta), &state_bytes);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(&state_bytes);
    Ok(out)
}

/// Decodes a Raft snapshot; any damage is [`StorageError::Corrupt`].
pub fn decode_snapshot(bytes: &[u8]) -> Result<DecodedSnapshot, StorageError> {
    if bytes.len() < SNAPSHOT_HEADER_LEN || &bytes[..8] != SNAPSHOT_MAGIC {
        return Err(corrupt("not a raft snapshot (magic or length)"));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != SNAPSHOT_VERSION {
        return Err(corrupt(format!(
            "unsupported raft snapshot version {version}"
        )));
    }
    let meta_len = u32::from_be_bytes([bytes[10], bytes[11], bytes[12], bytes[13]]) as usize;
    let stored = u32::from_be_bytes([bytes[14], bytes[15], bytes[16], bytes[17]]);
    let rest = &bytes[SNAPSHOT_HEADER_LEN..];
    if crc32c::crc32c(rest) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    if rest.len() < meta_len {
        return Err(corrupt("truncated header"));
    }
    let (mut meta, state_bytes) = rest.split_at(meta_len);
    let header: SnapshotHeader =
        ciborium::from_reader(&mut meta).map_err(|e| corrupt(format!("header: {e}")))?;
    if !meta.is_empty() {
        return Err(corrupt("trailing bytes in header"));
    }
    let core = snapshot::decode(state_bytes).map_err(|e| corrupt(e.to_string()))?;
    if core.last_index != header.last_log_id.map_or(0, |id| id.index + 1) {
        return Err(corrupt("header and state disagree on the last index"));
    }
    Ok(DecodedSnapshot {
        header,
        state: core.state,
    })
}

/// A snapshot with openraft's metadata read from its own header (what a receiver rebuilds
/// from the bytes alone); any damage is [`StorageError::Corrupt`].
pub fn snapshot_from_bytes(bytes: Vec<u8>) -> Result<RaftSnapshot, StorageError> {
    let decoded = decode_snapshot(&bytes)?;
    let membership = decoded
        .header
        .membership
        .to_membership()
        .map_err(|e| corrupt(e.to_string()))?;
    let meta = SnapshotMeta {
        last_log_id: decoded.header.last_log_id.map(StoredLogId::to_log_id),
        last_membership: StoredMembershipOf::new(
            decoded.header.membership_log_id.map(StoredLogId::to_log_id),
            membership,
        ),
    };
    Ok(RaftSnapshot {
        meta,
        snapshot: bytes,
    })
}

/// The `LogStore` index a snapshot file covers (for `FsSnapshotStore::open_with_format`).
pub fn snapshot_store_index(bytes: &[u8]) -> Result<u64, String> {
    decode_snapshot(bytes)
        .map(|s| s.header.last_log_id.map_or(0, |id| id.index + 1))
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembershipOf,
    floor: u64,
}

/// What the state machine and its readers share.
pub struct SmShared {
    state: Arc<StateCell>,
    applied: Mutex<Applied>,
    snapshots: Arc<dyn SnapshotStore>,
    current: Mutex<Option<(SnapshotMeta, Vec<u8>)>>,
    failure: FailureCell,
}

impl SmShared {
    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The epoch floor as applied here.
    pub fn floor(&self) -> u64 {
        self.applied().floor
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.applied().last_applied
    }

    fn fail(&self, error: ConsensusError) -> io::Error {
        self.failure.record(error.clone());
        io::Error::other(error)
    }

    fn apply_entry(&self, entry: &Entry) -> Result<RaftResponse, io::Error> {
        let log_id = entry.log_id;
        let term = log_id.leader_id.term;
        let response = match &entry.payload {
            EntryPayload::Blank => RaftResponse::Internal,
            EntryPayload::Membership(m) => {
                self.applied().membership = StoredMembershipOf::new(Some(log_id), m.clone());
                RaftResponse::Internal
            }
            EntryPayload::Normal(RaftRequest::Plan { epoch, plan }) => {
                let current = epoch_of(term, self.floor());
                if *epoch != current {
                    RaftResponse::StaleEpoch {
                        proposed: *epoch,
                        current,
                    }
                } else {
                    // A committed entry that does not decode is damage: stop, never skip it.
                    let plan = ConfigPlan::decode(plan).map_err(|source| {
                        self.fail(ConsensusError::CorruptEntry {
                            index: log_id.index + 1,
                            source,
                        })
                    })?;
                    RaftResponse::Applied(self.state.write(|s| s.apply(&plan)))
                }
            }
            EntryPayload::Normal(RaftRequest::RaiseEpochFloor { epoch, above }) => {
                let mut applied = self.applied();
                let current = epoch_of(term, applied.floor);
                if *epoch != current {
                    RaftResponse::StaleEpoch {
                        proposed: *epoch,
                        current,
                    }
                } else {
                    if *above >= current {
                        applied.floor = above.saturating_add(1).saturating_sub(term);
                    }
                    RaftResponse::EpochRaised {
                        epoch: epoch_of(term, applied.floor),
                    }
                }
            }
        };
        self.applied().last_applied = Some(log_id);
        Ok(response)
    }

    fn header(applied: &Applied) -> SnapshotHeader {
        SnapshotHeader {
            last_log_id: applied.last_applied.as_ref().map(StoredLogId::from_log_id),
            membership_log_id: applied
                .membership
                .log_id()
                .as_ref()
                .map(StoredLogId::from_log_id),
            membership: StoredMembership::from_membership(applied.membership.membership()),
            floor: applied.floor,
        }
    }
}

/// openraft's state machine over core's `ClusterState`.
pub struct StateMachine {
    shared: Arc<SmShared>,
}

impl StateMachine {
    /// An empty state machine writing into `state`, with `snapshots` for durable snapshots.
    /// `stored` is the newest stored snapshot, which openraft installs at start-up.
    pub fn new(
        state: Arc<StateCell>,
        snapshots: Arc<dyn SnapshotStore>,
        stored: Option<Vec<u8>>,
        failure: FailureCell,
    ) -> Result<Self, StorageError> {
        let current = match stored {
            Some(bytes) => {
                let snapshot = snapshot_from_bytes(bytes)?;
                Some((snapshot.meta, snapshot.snapshot))
            }
            None => None,
        };
        Ok(Self {
            shared: Arc::new(SmShared {
                state,
                applied: Mutex::new(Applied {
                    last_applied: None,
                    membership: StoredMembershipOf::default(),
                    floor: 0,
                }),
                snapshots,
                current: Mutex::new(current),
                failure,
            }),
        })
    }

    /// The shared part, for the consensus (floor, last applied).
    pub fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

/// Builds a snapshot of the state captured when the builder was made.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
    header: SnapshotHeader,
    membership: StoredMembershipOf,
    state: ClusterState,
}

impl RaftSnapshotBuilder<ShoalRaft> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<RaftSnapshot, io::Error> {
        let shared = &self.shared;
        let bytes = encode_snapshot(&self.header, &self.state)
            .map_err(|e| shared.fail(ConsensusError::Storage(e)))?;
        let store_index = self.header.last_log_id.map_or(0, |id| id.index + 1);
        shared
            .snapshots
            .save(store_index, bytes.clone())
            .await
            .map_err(|e| shared.fail(ConsensusError::Storage(e)))?;
        let meta = SnapshotMeta {
            last_log_id: self.header.last_log_id.map(StoredLogId::to_log_id),
            last_membership: self.membership.clone(),
        };
        *shared.current.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((meta.clone(), bytes.clone()));
        tracing::info!(store_index, bytes = bytes.len(), "raft snapshot saved");
        Ok(RaftSnapshot {
            meta,
            snapshot: bytes,
        })
    }
}

impl RaftStateMachine<ShoalRaft> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembershipOf), io::Error> {
        let applied = self.shared.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_lite::Stream<Item = Result<EntryResponder<ShoalRaft>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let response = self.shared.apply_entry(&entry)?;
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Captured here, on the state machine's task: later applies cannot tear the view.
        let applied = self.shared.applied().clone();
        SnapshotBuilder {
            shared: self.shared.clone(),
            header: SmShared::header(&applied),
            membership: applied.membership.clone(),
            state: self.shared.state.snapshot(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let shared = &self.shared;
        let decoded =
            decode_snapshot(&snapshot).map_err(|e| shared.fail(ConsensusError::Storage(e)))?;
        if decoded.header.last_log_id.map(StoredLogId::to_log_id) != meta.last_log_id {
            return Err(shared.fail(ConsensusError::Storage(corrupt(
                "snapshot bytes and metadata disagree on the last log id",
            ))));
        }
        let already_stored = shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|(_, bytes)| *bytes == snapshot);
        if !already_stored {
            let store_index = meta.last_log_id.map_or(0, |id| id.index + 1);
            shared
                .snapshots
                .save(store_index, snapshot.clone())
                .await
                .map_err(|e| shared.fail(ConsensusError::Storage(e)))?;
        }
        shared.state.write(|s| *s = decoded.state);
        *shared.applied() = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            floor: decoded.header.floor,
        };
        *shared.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), snapshot));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<RaftSnapshot>, io::Error> {
        Ok(self
            .shared
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(|(meta, snapshot)| RaftSnapshot { meta, snapshot }))
    }
}

#[cfg(test)]
mod tests;
