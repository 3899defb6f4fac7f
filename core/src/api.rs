//! What crosses the wire between nodes, as async traits with typed errors.
//!
//! Transports (`shoal-transport-inproc`, `shoal-transport-capnp`) implement these traits for
//! remote nodes; the node logic implements them locally.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionId,
    RegionReplicaSet, ReplicationFactor, TaskId,
};
use crate::state::DataNodeInfo;

/// Why a call between nodes failed. Decides retry vs abort in one place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum ApiError {
    /// No reply within the call's deadline: the call may or may not have run.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The peer could not be reached (connection refused, node down, partition), or the
    /// connection broke during the call. A refused connection means the call did not run; a
    /// broken one means it may have: callers must treat the outcome as unknown (task ids and
    /// idempotent calls make a retry safe either way).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The caller's leader epoch is lower than one the peer has seen.
    #[error("stale leader: request epoch {request}, peer has seen {seen}")]
    StaleLeader {
        /// The epoch the request carried.
        request: Epoch,
        /// The highest epoch the peer has seen.
        seen: Epoch,
    },
    /// The peer refused the request for a reason that will not change by retrying.
    #[error("refused: {0}")]
    Refused(String),
    /// The peer tried and failed; `retryable` says whether trying again may help.
    #[error("remote failure: {message}")]
    Remote {
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
    /// The request or reply could not be decoded.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The peer is a ConfigNode that does not lead its group; the call did not run there.
    /// `leader` is the address of the one it believes leads (`None` during an election):
    /// callers send the same call there.
    #[error("not the leader{}", leader_suffix(.leader))]
    NotLeader {
        /// The leader's address, if known.
        leader: Option<String>,
    },
}

fn leader_suffix(leader: &Option<String>) -> String {
    match leader {
        Some(address) => format!(" (the leader is at {address})"),
        None => " (no leader known yet)".to_string(),
    }
}

impl ApiError {
    /// Whether a retry of the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Timeout(_) | ApiError::Unreachable(_) | ApiError::NotLeader { .. } => true,
            ApiError::Remote { retryable, .. } => *retryable,
            ApiError::StaleLeader { .. } | ApiError::Refused(_) | ApiError::Malformed(_) => false,
        }
    }
}

/// Create one region replica on a DataNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct CreateRegionRequest {
    pub region: RegionId,
    pub database: DatabaseName,
    /// Every replica's DataNode (the group's consensus peers).
    pub peers: Vec<DataNodeId>,
    /// The creation generation the target DataNode joined the group's footprint under. A
    /// DataNode refuses a create at or below the generation a deletion of the region there
    /// covered: the create was sent before that deletion and arrived after it. 0: none
    /// (callers that predate generations; refused once any deletion fenced the region).
    #[serde(default)]
    pub generation: u64,
}

/// A long DataNode operation, run as a task keyed by [`TaskId`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum MaintainTaskKind {
    /// Remove the local consensus peer of `region`, then delete the region's data. Missing
    /// region: success.
    DeleteRegionPeer {
        region: RegionId,
        /// The highest creation generation this deletion covers: from its acceptance on,
        /// the DataNode refuses creates of `region` at or below it.
        generation: u64,
    },
    /// Copy `region`'s data from the replica on `source` into the local replica (which must
    /// exist), pulled in checksummed chunks ([`DataNodeApi::read_region`]). Resumable: a
    /// copy that finds bytes already copied checks them against the source's digest of the
    /// same prefix and carries on after them (or starts over if they differ). The local data
    /// is made durable before `Success`. The ConfigNode verifies the whole copy by digest
    /// before publishing it.
    CopyRegion {
        /// The region.
        region: RegionId,
        /// The DataNode to copy from, at the address it had when the task id was persisted.
        source: DataNodeLocation,
    },
}

impl MaintainTaskKind {
    /// The region the task operates on (one maintain operation per region at a time).
    pub fn region(&self) -> RegionId {
        match self {
            MaintainTaskKind::DeleteRegionPeer { region, .. }
            | MaintainTaskKind::CopyRegion { region, .. } => *region,
        }
    }

    /// The kind's name, for logs and status output.
    pub fn name(&self) -> &'static str {
        match self {
            MaintainTaskKind::DeleteRegionPeer { .. } => "DeleteRegionPeer",
            MaintainTaskKind::CopyRegion { .. } => "CopyRegion",
        }
    }
}

/// A chunk of a replica's data, as [`DataNodeApi::read_region`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionChunk {
    /// Where the chunk starts in the replica's data.
    pub offset: u64,
    /// The bytes (empty at or past the end).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// crc32c of `data`, computed by the sender: the receiver checks it before writing.
    pub crc32c: u32,
    /// The replica's whole length when the chunk was read.
    pub region_len: u64,
}

/// A checksum over a prefix of a replica's data ([`DataNodeApi::region_digest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionDigest {
    /// How many bytes the checksum covers (the prefix asked for, or less if the replica is
    /// shorter).
    pub len: u64,
    /// crc32c of those bytes.
    pub crc32c: u32,
    /// The replica's whole length.
    pub region_len: u64,
}

/// A task submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct MaintainTask {
    /// The id the owning procedure persisted before submitting.
    pub task_id: TaskId,
    pub kind: MaintainTaskKind,
}

/// The DataNode's answer to a submission it did not refuse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubmitOutcome {
    /// The task runs (or already ran: a resubmitted id runs nothing new).
    Accepted,
    /// The task cannot run, e.g. the same id was used for a different task.
    Rejected(String),
}

/// A task's status as the DataNode reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Accepted and not yet finished.
    Processing,
    /// Finished successfully.
    Success,
    /// Finished with a failure; the task stopped.
    Fail(String),
    /// The DataNode holds no such task (never submitted, or acked and forgotten). The
    /// coordinator resubmits; it is never taken as success.
    NotExist,
}

impl TaskStatus {
    /// Whether the status is final.
    pub fn is_terminal(&self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Fail(_))
    }
}

/// One region replica as a DataNode reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionReport {
    pub region: RegionId,
    /// Bytes of data held.
    pub bytes: u64,
}

/// A DataNode's heartbeat reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReport {
    /// The replicas it holds.
    pub regions: Vec<RegionReport>,
    /// Maintain tasks still running.
    pub running_tasks: Vec<TaskId>,
}

/// The DataNode's API as the ConfigNode (and load generators) call it.
#[async_trait]
pub trait DataNodeApi: Send + Sync + 'static {
    /// Creates a replica (synchronous, idempotent: same region and config is success).
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError>;
    /// Deletes a replica synchronously. Kept for compatibility; **unsafe for long deletions**:
    /// a caller that times out and retries may see success while the first call still runs.
    /// Use [`DataNodeApi::submit_task`] with [`MaintainTaskKind::DeleteRegionPeer`].
    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError>;
    /// Appends bytes to a replica (load generators and tests). Returns the new size.
    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError>;
    /// Submits a maintain task. A resubmitted id is accepted and runs nothing new.
    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError>;
    /// A task's status; with `wait`, returns as soon as the task is terminal or `wait` ends.
    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError>;
    /// The coordinator is done with a terminal task; the DataNode may forget it.
    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError>;
    /// Liveness and a region report.
    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError>;
    /// Up to `max_len` bytes of a replica's data from `offset`, with their checksum
    /// (read-only, idempotent: a retry of a lost call is harmless). Another DataNode's copy
    /// task pulls a region through it. `Refused`: the region does not exist here.
    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        let _ = (offset, max_len);
        Err(ApiError::Refused(format!(
            "this peer cannot read region {region}"
        )))
    }
    /// crc32c of the first `len` bytes of a replica's data (all of it with `None`);
    /// read-only and idempotent. `Refused`: the region does not exist here.
    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        let _ = len;
        Err(ApiError::Refused(format!(
            "this peer cannot checksum region {region}"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// ConfigNode API (admin commands and DataNode registration), added for the Cap'n Proto
// transport; the ConfigNode service implements it.
// ---------------------------------------------------------------------------------------

/// Create a database with its region groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateDatabaseRequest {
    /// The new database's name.
    pub name: DatabaseName,
    /// Replicas per schema region group.
    pub schema_replication_factor: ReplicationFactor,
    /// Replicas per data region group.
    pub data_replication_factor: ReplicationFactor,
    /// Data region groups to create.
    pub data_region_groups: u32,
    /// Schema region groups to create.
    pub schema_region_groups: u32,
}

/// A database as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseInfo {
    /// Name and replication factors.
    pub schema: DatabaseSchema,
    /// Being deleted: new region groups and writes are refused.
    pub deleting: bool,
    /// Published schema region groups.
    pub schema_region_groups: u32,
    /// Published data region groups.
    pub data_region_groups: u32,
}

/// A published region group and its database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionGroupInfo {
    pub database: DatabaseName,
    /// The group and its replicas' DataNodes.
    pub replica_set: RegionReplicaSet,
}

/// A procedure's status as the admin API shows it: the same type the executor reports,
/// carried whole over the wire (its status is the typed [`crate::procedure::ProcedureView`]).
pub use crate::procedure::{ProcedureInfo, ProcedureView};

/// A replica a DataNode reports that no footprint and no unfinished procedure accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanInfo {
    /// The DataNode holding it.
    pub data_node: DataNodeId,
    /// The region.
    pub region: RegionId,
    /// Bytes it holds.
    pub bytes: u64,
    /// How long this leader has seen it as an orphan (ms, on its clock).
    pub orphan_for_ms: u64,
    /// The `RemoveOrphanRegion` procedure deleting it, once the grace period passed.
    pub removal: Option<ProcedureId>,
}

/// A DataNode's periodic report to the ConfigNode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DataNodeHeartbeat {
    pub id: DataNodeId,
    /// Its replicas and running tasks.
    pub report: HeartbeatReport,
}

/// The ConfigNode's API as admin clients and DataNodes call it.
#[async_trait]
pub trait ConfigNodeApi: Send + Sync + 'static {
    /// Starts creating a database and its region groups; returns the creating procedure's
    /// id to follow (with [`ConfigNodeApi::get_procedure`]).
    ///
    /// `request_key` is the client's id for this request, kept across its retries: a
    /// retried call with the same key returns the first call's procedure id instead of
    /// answering "database exists" (a lost reply is then harmless). `None`: no dedup.
    async fn create_database(
        &self,
        request: CreateDatabaseRequest,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError>;
    /// Starts deleting a database; returns the deletion procedure's id to follow.
    /// `request_key` works as for [`ConfigNodeApi::create_database`] (a retry does not
    /// answer "not found" for a database its first attempt is deleting).
    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError>;
    /// Every database, by name.
    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError>;
    /// Published region groups, of one database or (with `None`) of all.
    async fn list_region_groups(
        &self,
        database: Option<DatabaseName>,
    ) -> Result<Vec<RegionGroupInfo>, ApiError>;
    /// Every registered DataNode.
    async fn list_data_nodes(&self) -> Result<Vec<DataNodeInfo>, ApiError>;
    /// Every procedure the ConfigNode still records.
    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError>;
    /// One procedure's status; `None` if no such procedure is recorded.
    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError>;
    /// Registers a DataNode at `address` (or re-registers `known_id` after a restart);
    /// returns its id.
    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError>;
    /// A DataNode's heartbeat; returns the leader's current epoch.
    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError>;
    /// Starts moving the replica of `region` on `from` to `to` (`None`: placement chooses);
    /// returns the migration procedure's id. `request_key` as for
    /// [`ConfigNodeApi::create_database`].
    async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError>;
    /// Starts removing DataNode `id` (migrating its replicas away; with `force`, for a node
    /// gone for good: its replicas are abandoned and re-replicated elsewhere); returns the
    /// removal procedure's id.
    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError>;
    /// Replicas reported by DataNodes that no footprint and no unfinished procedure
    /// accounts for.
    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError>;
    /// The leader's epoch and the lengths of its maintain queues (`shoal status`).
    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError>;
}

/// What `shoal status` shows beyond the lists, from the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The leader's epoch.
    pub epoch: Epoch,
    /// Replica creates in the region-maintain queue.
    pub queued_creates: u64,
    /// Deletions of an older release awaiting the cleaner.
    pub legacy_deletions: u64,
}
