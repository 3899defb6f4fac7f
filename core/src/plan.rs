//! Every change to ConfigNode metadata, as one enum with stable numeric codes.
//!
//! The table in [`config_plans!`] below is the only place codes are assigned. A code never
//! changes meaning once released; a retired variant stays decodable and applies as a no-op so
//! an old log still replays. Codes are grouped in blocks: 1xx DataNodes, 2xx databases,
//! 3xx regions and the region-maintain queue, 4xx procedures.
//!
//! Encoding: `code: u16 BE | crc32c(code ‖ body): u32 BE | body: CBOR`. The checksum makes a
//! bit flip anywhere a typed [`PlanDecodeError`] rather than a different, valid plan.

use serde::{Deserialize, Serialize};

use crate::cbor;

use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, MaintainQueueId, ProcedureId,
    RegionId, RegionKind, RegionReplicaSet,
};
use crate::state::{DataNodeStatus, NewProcedure, ProcedureRecord, RegionMaintainKind};

/// Bytes before the CBOR body: the code and the checksum.
pub const PLAN_HEADER_LEN: usize = 6;

/// Why bytes could not be decoded into a [`ConfigPlan`]. Never retryable: the bytes are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum PlanDecodeError {
    /// Fewer bytes than the header.
    #[error("plan truncated: {len} bytes, header needs {PLAN_HEADER_LEN}")]
    Truncated { len: usize },
    /// The checksum does not match: the bytes were damaged.
    #[error("plan checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes as read.
        computed: u32,
    },
    /// A code this build does not know (written by a newer version, or garbage).
    #[error("unknown plan code {0}")]
    UnknownCode(u16),
    /// The body does not decode as the code's body type.
    #[error("plan code {code} has a malformed body: {message}")]
    MalformedBody { code: u16, message: String },
}

/// Why a plan could not be encoded (only possible if a body refuses to serialize).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plan code {code} failed to encode: {message}")]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct PlanEncodeError {
    pub code: u16,
    pub message: String,
}

macro_rules! config_plans {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal => $body:ty, )*) => {
        /// One change to ConfigNode metadata. See the module docs for the code table rules.
        #[derive(Debug, Clone, PartialEq, Eq)]
        // A plan is built once per commit and encoded straight away; boxing the procedure
        // record would add an allocation to every step commit and save nothing.
        #[allow(clippy::large_enum_variant)]
        pub enum ConfigPlan {
            $( $(#[$doc])* $variant($body), )*
        }

        /// The stable numeric code of each [`ConfigPlan`] variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum PlanCode {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl PlanCode {
            /// Every code, in table order.
            pub const ALL: &'static [PlanCode] = &[$(PlanCode::$variant,)*];

            /// The code for `value`, if this build knows it.
            pub fn from_u16(value: u16) -> Option<PlanCode> {
                match value {
                    $( $code => Some(PlanCode::$variant), )*
                    _ => None,
                }
            }
        }

        impl ConfigPlan {
            /// This plan's stable code.
            pub fn code(&self) -> PlanCode {
                match self {
                    $( ConfigPlan::$variant(_) => PlanCode::$variant, )*
                }
            }

            fn encode_body(&self) -> Result<Vec<u8>, String> {
                let mut out = Vec::new();
                match self {
                    $( ConfigPlan::$variant(body) => ciborium::into_writer(body, &mut out), )*
                }
                .map_err(|e| e.to_string())?;
                Ok(out)
            }

            pub(crate) fn decode_body(code: PlanCode, body: &[u8]) -> Result<ConfigPlan, String> {
                match code {
                    $( PlanCode::$variant => {
                        Ok(ConfigPlan::$variant(cbor::decode_exact(body).map_err(body_error)?))
                    } )*
                }
            }

            /// [`ConfigPlan::decode_body`] through ciborium alone (the fast path's reference).
            #[cfg(test)]
            pub(crate) fn decode_body_ciborium(
                code: PlanCode,
                body: &[u8],
            ) -> Result<ConfigPlan, String> {
                match code {
                    $( PlanCode::$variant => {
                        Ok(ConfigPlan::$variant(cbor::decode_ciborium(body).map_err(body_error)?))
                    } )*
                }
            }

            /// [`ConfigPlan::decode_body`]'s fast path alone (`None`: it leaves the body to
            /// ciborium).
            #[cfg(test)]
            pub(crate) fn decode_body_fast(code: PlanCode, body: &[u8]) -> Option<ConfigPlan> {
                match code {
                    $( PlanCode::$variant => cbor::decode_fast(body).ok().map(ConfigPlan::$variant), )*
                }
            }
        }
    };
}

config_plans! {
    // ---- 1xx: DataNodes ----
    /// Register a DataNode (or re-register a known one at a new address).
    RegisterDataNode = 100 => RegisterDataNode,
    /// Change a DataNode's status (running, unreachable, removing).
    UpdateDataNodeStatus = 101 => UpdateDataNodeStatus,
    /// Unregister a DataNode; refused while it may still hold a replica (footprint, queued
    /// create, pending legacy deletion).
    UnregisterDataNode = 102 => UnregisterDataNode,

    // ---- 2xx: databases ----
    /// Create a database.
    CreateDatabase = 200 => CreateDatabase,
    /// Mark a database deleting (`deleting = true`) or undo that mark. Named
    /// `PreDeleteDatabase` before; the code is unchanged.
    SetDatabaseDeleting = 201 => SetDatabaseDeleting,
    /// Drop a database's schema and partition table; refused while region groups remain.
    DeleteDatabase = 202 => DeleteDatabase,

    // ---- 3xx: regions and the region-maintain queue ----
    /// Publish created region groups into a database's partition table.
    CreateRegionGroups = 300 => CreateRegionGroups,
    /// Retired (never proposed anew): drop a group and forget its footprint, as releases
    /// before the replica footprint did. Old logs replay it as written; new removals use
    /// [`ConfigPlan::DropRegionGroup`], which refuses while a replica may remain.
    RemoveRegionGroup = 301 => RemoveRegionGroup,
    /// Record that a DataNode now holds a replica of a region group.
    AddRegionLocation = 302 => AddRegionLocation,
    /// Retired: leader hints are carried by heartbeats now. Decodes and applies as a no-op.
    RetiredRegionLeaderHint = 303 => RetiredRegionLeaderHint,
    /// Record that a DataNode no longer holds a replica of a region group.
    RemoveRegionLocation = 304 => RemoveRegionLocation,
    /// Reserve a block of region ids before their replicas are created.
    ReserveRegionIds = 305 => ReserveRegionIds,
    /// Add DataNodes to region groups' footprints, before creates are sent to them.
    RecordReplicaFootprints = 306 => RecordReplicaFootprints,
    /// A deletion on a DataNode reached `Success`: it leaves the group's footprint, its
    /// published replica set and its queued creates.
    ReplicaDeleted = 307 => ReplicaDeleted,
    /// Drop a region group from its database's partition table; refused while its
    /// footprint is not empty.
    DropRegionGroup = 308 => DropRegionGroup,
    /// A DataNode gone for good: its replica of a group leaves the footprint, the published
    /// replica set and the queued creates *without* a deletion, and is recorded as
    /// abandoned (never as deleted).
    AbandonReplica = 309 => AbandonReplica,
    /// Queue creates of missing replicas for the region cleaner (legacy logs also hold
    /// deletes, which become pending legacy deletions).
    OfferRegionMaintainTasks = 310 => OfferRegionMaintainTasks,
    /// Retired (never proposed anew): remove the oldest region-maintain task, as the
    /// pre-procedure queue drainer did. Replays pop the oldest of the create queue and the
    /// pending legacy deletions together, which is the one queue it popped when written.
    PollRegionMaintainTask = 311 => PollRegionMaintainTask,
    /// Drop queued creates (a removal stops the cleaner from creating what it deletes).
    /// Named `PollSpecificRegionMaintainTask` before; the code is unchanged.
    DropQueuedCreates = 312 => DropQueuedCreates,
    /// Forget a pending legacy deletion once a procedure owns it.
    ResolveLegacyDeletion = 313 => ResolveLegacyDeletion,

    // ---- 4xx: procedures ----
    /// Durably record a new procedure; allocates its id.
    SubmitProcedure = 400 => SubmitProcedure,
    /// Record a procedure's transition, and atomically any children it spawns.
    UpdateProcedure = 401 => UpdateProcedure,
    /// Delete finished procedure records (retention).
    DeleteProcedures = 402 => DeleteProcedures,
    /// Record a procedure's transition together with one metadata change of its step: both
    /// apply or neither does.
    TransitionWithEffect = 403 => TransitionWithEffect,
}

/// Body of [`ConfigPlan::RegisterDataNode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegisterDataNode {
    /// The id the node already holds, if it registered before.
    pub known_id: Option<DataNodeId>,
    pub address: String,
}

/// Body of [`ConfigPlan::UpdateDataNodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct UpdateDataNodeStatus {
    pub id: DataNodeId,
    pub status: DataNodeStatus,
    /// Applies only while the node's status is still this one (a compare-and-set), else
    /// changes nothing. The heartbeat monitor sets it to the status it read before its
    /// round: a removal that marked the node `Removing` meanwhile is never overwritten by a
    /// late `Unknown` or `Running`. Absent (entries written before it): unconditional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_from: Option<DataNodeStatus>,
}

/// Body of [`ConfigPlan::UnregisterDataNode`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnregisterDataNode {
    /// The node.
    pub id: DataNodeId,
}

/// Body of [`ConfigPlan::AbandonReplica`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbandonReplica {
    /// The group.
    pub region: RegionId,
    /// The DataNode gone for good.
    pub data_node: DataNodeId,
    /// The forced removal abandoning it.
    pub by: ProcedureId,
    /// Unfinished deletions that targeted the replica (they stop waiting for it and report
    /// it abandoned).
    pub deletions: Vec<ProcedureId>,
}

/// Body of [`ConfigPlan::CreateDatabase`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateDatabase {
    /// The schema to create.
    pub schema: DatabaseSchema,
    /// The procedure creating it: a re-apply by the same procedure (a step re-run after a
    /// crash) is `Unchanged` rather than `DatabaseExists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<ProcedureId>,
}

/// Body of [`ConfigPlan::SetDatabaseDeleting`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct SetDatabaseDeleting {
    pub name: DatabaseName,
    /// `true` marks it deleting; `false` undoes the mark (rollback).
    pub deleting: bool,
}

/// Body of [`ConfigPlan::DeleteDatabase`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DeleteDatabase {
    pub name: DatabaseName,
}

/// Body of [`ConfigPlan::CreateRegionGroups`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct CreateRegionGroups {
    pub database: DatabaseName,
    /// Groups to publish; their ids must have been reserved.
    pub groups: Vec<RegionReplicaSet>,
}

/// Body of [`ConfigPlan::RecordReplicaFootprints`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordReplicaFootprints {
    /// The database the groups belong to.
    pub database: DatabaseName,
    /// Per group, the DataNodes creates are about to be sent to.
    pub groups: Vec<RegionReplicaSet>,
}

/// Body of [`ConfigPlan::ReplicaDeleted`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct ReplicaDeleted {
    pub region: RegionId,
    /// The DataNode whose deletion reached `Success`.
    pub data_node: DataNodeId,
}

/// Body of [`ConfigPlan::DropRegionGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DropRegionGroup {
    pub database: DatabaseName,
    /// The group to drop.
    pub region: RegionId,
}

/// Body of [`ConfigPlan::RemoveRegionGroup`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RemoveRegionGroup {
    pub database: DatabaseName,
    /// The group to drop.
    pub region: RegionId,
}

/// Body of [`ConfigPlan::AddRegionLocation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct AddRegionLocation {
    pub region: RegionId,
    /// The DataNode now holding a replica.
    pub data_node: DataNodeId,
}

/// Body of [`ConfigPlan::RemoveRegionLocation`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RemoveRegionLocation {
    pub region: RegionId,
    /// The DataNode no longer holding a replica.
    pub data_node: DataNodeId,
}

/// Body of the retired [`ConfigPlan::RetiredRegionLeaderHint`]; kept so old logs decode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RetiredRegionLeaderHint {
    pub region: RegionId,
    /// The DataNode believed to lead it.
    pub leader: DataNodeId,
}

/// Body of [`ConfigPlan::ReserveRegionIds`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveRegionIds {
    /// Kind of every reserved id.
    pub kind: RegionKind,
    /// How many consecutive ids to reserve (at most [`crate::state::MAX_RESERVE`]).
    pub count: u32,
    /// The procedure reserving: a re-run of its step gets the same ids back instead of new
    /// ones (the reservation is remembered until the procedure record is deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_procedure: Option<ProcedureId>,
}

/// Body of [`ConfigPlan::OfferRegionMaintainTasks`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferRegionMaintainTasks {
    /// Tasks to queue; their [`MaintainQueueId`]s are allocated on apply.
    pub tasks: Vec<NewRegionMaintainTask>,
}

/// One task offered to the region-maintain queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct NewRegionMaintainTask {
    pub kind: RegionMaintainKind,
    pub database: DatabaseName,
    /// The region group, with its replica set at offer time.
    pub region: RegionReplicaSet,
    /// The DataNode to act on. Only its id is kept: the address is resolved at dial time
    /// (the location form is the body's frozen wire shape).
    pub target: DataNodeLocation,
}

/// Body of [`ConfigPlan::PollRegionMaintainTask`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollRegionMaintainTask {}

/// Body of [`ConfigPlan::DropQueuedCreates`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropQueuedCreates {
    /// Queued creates to drop; unknown ids are ignored (idempotent).
    #[serde(rename = "task_ids")]
    pub ids: Vec<MaintainQueueId>,
}

/// Body of [`ConfigPlan::ResolveLegacyDeletion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveLegacyDeletion {
    /// The pending legacy deletion, by its queue id.
    #[serde(rename = "task_id")]
    pub id: MaintainQueueId,
}

/// Body of [`ConfigPlan::SubmitProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitProcedure {
    /// The procedure to record.
    pub procedure: NewProcedure,
    /// A client's request key: a second submit with the same key returns the first id.
    pub request_key: Option<String>,
}

/// Body of [`ConfigPlan::UpdateProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProcedure {
    /// The procedure's new record (replaces the stored one).
    pub record: ProcedureRecord,
    /// Children spawned by this transition, committed in the same entry.
    pub spawn: Vec<NewProcedure>,
    /// If set, the update applies only while the stored record's `version` equals it
    /// (compare-and-set): a transition retried after an unknown commit outcome can never be
    /// applied twice (and never spawns its children twice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_version: Option<u64>,
}

/// Body of [`ConfigPlan::TransitionWithEffect`]: a step's metadata change committed in the
/// same entry as the step's transition, so no crash, leader change or unknown commit outcome
/// can separate them (and a step needs one commit, not two).
///
/// Applied as: the update's checks (the record exists, is not finished, has the expected
/// version), then the effect (a rejected effect rejects the whole entry; a rejected plan
/// changes nothing), then the update. The effect may not be a procedure plan or a retired
/// one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionWithEffect {
    /// The procedure's transition.
    pub update: UpdateProcedure,
    /// The metadata change its step made, in [`ConfigPlan::encode`] form on the wire.
    #[serde(with = "nested_plan")]
    pub effect: Box<ConfigPlan>,
}

/// A plan nested in another plan's body: its own `code | crc32c | CBOR` bytes.
mod nested_plan {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::ConfigPlan;

    pub fn serialize<S: Serializer>(plan: &ConfigPlan, s: S) -> Result<S::Ok, S::Error> {
        let bytes = plan.encode().map_err(serde::ser::Error::custom)?;
        serde_bytes::serialize(&bytes, s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<ConfigPlan>, D::Error> {
        let bytes: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        ConfigPlan::decode(&bytes)
            .map(Box::new)
            .map_err(|e| serde::de::Error::custom(format!("nested plan: {e}")))
    }
}

impl ConfigPlan {
    /// Whether this plan records or deletes procedures (never a transition's effect).
    pub fn is_procedure_plan(&self) -> bool {
        matches!(
            self,
            ConfigPlan::SubmitProcedure(_)
                | ConfigPlan::UpdateProcedure(_)
                | ConfigPlan::DeleteProcedures(_)
                | ConfigPlan::TransitionWithEffect(_)
        )
    }
}

/// The message of a body that did not decode.
fn body_error(error: cbor::CborError) -> String {
    match error {
        cbor::CborError::Malformed(message) => message,
        cbor::CborError::TrailingBytes(n) => format!("{n} trailing bytes"),
    }
}

/// Body of [`ConfigPlan::DeleteProcedures`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteProcedures {
    /// Finished procedures to forget.
    pub ids: Vec<ProcedureId>,
}

impl ConfigPlan {
    /// Encodes as `code | crc32c | CBOR body`.
    pub fn encode(&self) -> Result<Vec<u8>, PlanEncodeError> {
        let code = self.code() as u16;
        let body = self
            .encode_body()
            .map_err(|message| PlanEncodeError { code, message })?;
        let mut out = Vec::with_capacity(PLAN_HEADER_LEN + body.len());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&checksum(code, &body).to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes bytes written by [`ConfigPlan::encode`] (by this or any older version).
    pub fn decode(bytes: &[u8]) -> Result<ConfigPlan, PlanDecodeError> {
        if bytes.len() < PLAN_HEADER_LEN {
            return Err(PlanDecodeError::Truncated { len: bytes.len() });
        }
        let raw_code = u16::from_be_bytes([bytes[0], bytes[1]]);
        let stored = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let body = &bytes[PLAN_HEADER_LEN..];
        let computed = checksum(raw_code, body);
        if stored != computed {
            return Err(PlanDecodeError::Checksum { stored, computed });
        }
        let code = PlanCode::from_u16(raw_code).ok_or(PlanDecodeError::UnknownCode(raw_code))?;
        ConfigPlan::decode_body(code, body).map_err(|message| PlanDecodeError::MalformedBody {
            code: raw_code,
            message,
        })
    }

    /// Whether this variant is retired: it still decodes and replays as written (or as a
    /// no-op), but no current code proposes it.
    pub fn is_retired(&self) -> bool {
        matches!(
            self,
            ConfigPlan::RetiredRegionLeaderHint(_)
                | ConfigPlan::RemoveRegionGroup(_)
                | ConfigPlan::PollRegionMaintainTask(_)
        )
    }
}

fn checksum(code: u16, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&code.to_be_bytes()), body)
}

#[cfg(any(test, feature = "testing"))]
impl ConfigPlan {
    /// Encodes `body` under an arbitrary code, with a valid checksum (tests of unknown codes).
    pub fn encode_raw(code: u16, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PLAN_HEADER_LEN + body.len());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&checksum(code, body).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
}

#[cfg(test)]
mod tests;
