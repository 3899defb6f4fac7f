//! Value types stored in [`super::ClusterState`].

use serde::{Deserialize, Serialize};

use crate::coded_enum;
use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, ProcedureId, RegionId,
    RegionReplicaSet,
};

coded_enum! {
    /// A DataNode's status as the ConfigNode sees it.
    pub enum DataNodeStatus {
        /// Heartbeating; eligible for new replicas.
        Running = 1,
        /// Missed heartbeats; not chosen for new replicas.
        Unknown = 2,
        /// Being decommissioned; not chosen for new replicas.
        Removing = 3,
    }
}

/// A registered DataNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DataNodeInfo {
    pub location: DataNodeLocation,
    pub status: DataNodeStatus,
}

/// A database and whether it is being deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DatabaseEntry {
    pub schema: DatabaseSchema,
    /// Set by pre-delete: new region groups and writes are refused.
    pub deleting: bool,
    /// The procedure that created it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<ProcedureId>,
}

/// A database's published region groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// Groups by region id.
    pub groups: std::collections::BTreeMap<RegionId, RegionReplicaSet>,
}

coded_enum! {
    /// What an offered region-maintain task does (the kind stored in plan bodies and old
    /// snapshots).
    pub enum RegionMaintainKind {
        /// Create a missing replica: becomes a [`QueuedCreate`].
        Create = 1,
        /// Legacy: delete a replica by synchronous RPC. Only read from old logs and v1
        /// snapshots, and turned into a [`LegacyDeletion`]; never executed as such.
        LegacyDelete = 2,
    }
}

/// A missing replica the leader's region cleaner creates: queued when a group was
/// published with a quorum but without every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct QueuedCreate {
    pub database: DatabaseName,
    /// The region group, with every planned replica (the new replica's peers).
    pub group: RegionReplicaSet,
    /// The DataNode to create on, by id: its address is resolved when it is dialled, so a
    /// DataNode that re-registered at a new address still gets its replica.
    pub target: DataNodeId,
}

/// A replica deletion inherited from the legacy delete-by-queue path, not yet owned by a
/// procedure: a leader turns each into a removal procedure; never dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct LegacyDeletion {
    pub database: DatabaseName,
    /// The region group, with its replica set when the deletion was queued.
    pub group: RegionReplicaSet,
    /// The DataNode whose replica is to be deleted.
    pub target: DataNodeId,
}

/// Every DataNode that may hold a replica of one region group: each DataNode a create was
/// ever sent to (recorded *before* the create leaves), kept until a deletion there reached
/// `Success`. Removals delete on the whole footprint; "who may hold a replica" is never
/// re-derived from queues or replica sets another step may have changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionFootprint {
    /// The database the group belongs (or was to belong) to.
    pub database: DatabaseName,
    /// DataNodes that may hold a replica, each with the creation generation it joined the
    /// footprint under. Creates sent to it carry that generation; the deletion that takes it
    /// out fences the region on that DataNode up to it, so a create delivered late (after the
    /// deletion) is refused instead of bringing the replica back.
    pub data_nodes: std::collections::BTreeMap<DataNodeId, u64>,
}

coded_enum! {
    /// Shared or exclusive hold of a lock key.
    pub enum LockMode {
        /// Many holders at once.
        Shared = 1,
        /// One holder; excludes shared holders too.
        Exclusive = 2,
    }
}

/// A resource a procedure locks for its life. Keys are taken in their `Ord` order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockResource {
    /// A database (and everything in it).
    Database(DatabaseName),
    /// One region group.
    RegionGroup(RegionId),
    /// One DataNode.
    DataNode(DataNodeId),
    /// A free-form key (tests, cluster-wide singletons).
    Named(String),
}

/// A resource and how it is held.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct LockKey {
    pub resource: LockResource,
    pub mode: LockMode,
}

coded_enum! {
    /// A procedure's durable status.
    pub enum ProcedureStatus {
        /// Ready to run its next step.
        Runnable = 1,
        /// Sleeping until `wake_at_ms`; holds no worker.
        Waiting = 2,
        /// Waiting for its children to finish.
        Suspended = 3,
        /// Running its rollback steps.
        RollingBack = 4,
        /// Finished with success.
        Succeeded = 10,
        /// Finished with a non-retryable error and no rollback.
        Failed = 11,
        /// Finished after a rollback completed.
        RolledBack = 12,
    }
}

impl ProcedureStatus {
    /// Whether the procedure will never run again.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            ProcedureStatus::Succeeded | ProcedureStatus::Failed | ProcedureStatus::RolledBack
        )
    }
}

/// A procedure about to be recorded (its id is allocated on apply).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewProcedure {
    /// Stable code of the procedure type.
    pub type_code: u32,
    /// Human-readable type name, for status output.
    pub type_name: String,
    /// Stable code of its first state.
    pub state_code: u32,
    /// Name of its first state.
    pub state_name: String,
    /// The procedure's persistent data (CBOR, owned by the procedure type).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Locks it holds for its life.
    pub lock_keys: Vec<LockKey>,
    /// Submission time, milliseconds on the proposer's clock.
    pub submitted_at_ms: u64,
}

/// A procedure's durable record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct ProcedureRecord {
    pub id: ProcedureId,
    /// Stable code of the procedure type.
    pub type_code: u32,
    pub type_name: String,
    /// The parent that spawned it, if any.
    pub parent: Option<ProcedureId>,
    /// Children it spawned, in spawn order.
    pub children: Vec<ProcedureId>,
    pub status: ProcedureStatus,
    /// Stable code of its current state.
    pub state_code: u32,
    /// Name of its current state.
    pub state_name: String,
    /// The procedure's persistent data (CBOR, owned by the procedure type).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Locks it holds for its life.
    pub lock_keys: Vec<LockKey>,
    /// The client request key it was submitted with.
    pub request_key: Option<String>,
    /// Submission time (ms).
    pub submitted_at_ms: u64,
    /// Time of the last recorded transition (ms).
    pub updated_at_ms: u64,
    /// When a `Waiting` procedure wakes (ms).
    pub wake_at_ms: Option<u64>,
    /// Step attempts since the last successful transition.
    pub attempts: u32,
    /// The last error a step returned.
    pub last_error: Option<String>,
    /// What it is waiting for, in words (shown by the status API).
    pub waiting_for: Option<String>,
    /// Output of a succeeded procedure (CBOR, owned by the procedure type).
    pub output: Option<serde_bytes::ByteBuf>,
    /// How many updates have been applied to this record (set by apply, starting at 0);
    /// [`crate::plan::UpdateProcedure::expect_version`] compares against it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
}

// Records written before versions existed re-encode byte-identically.
fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl ProcedureRecord {
    /// The record a [`NewProcedure`] becomes under `id`.
    pub fn from_new(id: ProcedureId, new: NewProcedure, parent: Option<ProcedureId>) -> Self {
        Self {
            id,
            type_code: new.type_code,
            type_name: new.type_name,
            parent,
            children: Vec::new(),
            status: ProcedureStatus::Runnable,
            state_code: new.state_code,
            state_name: new.state_name,
            data: new.data,
            lock_keys: new.lock_keys,
            request_key: None,
            submitted_at_ms: new.submitted_at_ms,
            updated_at_ms: new.submitted_at_ms,
            wake_at_ms: None,
            attempts: 0,
            last_error: None,
            waiting_for: None,
            output: None,
            version: 0,
        }
    }
}
