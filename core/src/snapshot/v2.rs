//! Snapshot format v2: procedures own deletion, but there is no replica footprint and queued
//! tasks name their DataNode by location. Loading v2 converts task targets to ids and
//! derives each group's footprint from what v2 knew could hold a replica: its published
//! replicas, queued create targets and pending legacy deletions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, MaintainQueueId, ProcedureId, RegionId, RegionKind,
    RegionReplicaSet, TaskId,
};
use crate::state::{
    ClusterState, DataNodeInfo, DatabaseEntry, LegacyDeletion, PartitionTable, ProcedureRecord,
    QueuedCreate, RegionFootprint, RegionMaintainKind,
};

use super::Snapshot;

/// The v2 snapshot body. Frozen: never change these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct SnapshotV2 {
    /// Index of the last log entry the state includes.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    pub state: ClusterStateV2,
}

/// A queued task as v2 stored it: the target by location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionMaintainTaskV2 {
    pub kind: RegionMaintainKind,
    pub database: DatabaseName,
    /// The region group, with its replica set at offer time.
    pub region: RegionReplicaSet,
    /// The DataNode to act on, with the address it had at offer time.
    pub target: DataNodeLocation,
}

/// The v2 state. Frozen: never change these fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct ClusterStateV2 {
    pub next_data_node_id: u32,
    pub next_region_id: u32,
    pub next_procedure_id: u64,
    pub next_task_id: u64,
    pub data_nodes: BTreeMap<DataNodeId, DataNodeInfo>,
    pub databases: BTreeMap<DatabaseName, DatabaseEntry>,
    pub partition_tables: BTreeMap<DatabaseName, PartitionTable>,
    pub region_maintain_queue: BTreeMap<TaskId, RegionMaintainTaskV2>,
    /// Deletions inherited from v1.
    pub pending_legacy_deletions: BTreeMap<TaskId, RegionMaintainTaskV2>,
    pub procedures: BTreeMap<ProcedureId, ProcedureRecord>,
    pub procedure_request_keys: BTreeMap<String, ProcedureId>,
    /// Per-procedure region-id reservations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub region_reservations: BTreeMap<(ProcedureId, RegionKind), (u32, u32)>,
}

fn queued_create((id, task): (TaskId, RegionMaintainTaskV2)) -> (MaintainQueueId, QueuedCreate) {
    let create = QueuedCreate {
        database: task.database,
        group: task.region,
        target: task.target.id,
    };
    (MaintainQueueId(id.0), create)
}

fn legacy_deletion(
    (id, task): (TaskId, RegionMaintainTaskV2),
) -> (MaintainQueueId, LegacyDeletion) {
    let deletion = LegacyDeletion {
        database: task.database,
        group: task.region,
        target: task.target.id,
    };
    (MaintainQueueId(id.0), deletion)
}

impl SnapshotV2 {
    /// Converts to the current shape (see the module docs).
    pub fn upgrade(self) -> Snapshot {
        let v2 = self.state;
        let mut footprints: BTreeMap<RegionId, RegionFootprint> = BTreeMap::new();
        let mut last_generation = 0;
        let mut note = |database: &DatabaseName, region: RegionId, node: DataNodeId| {
            let footprint = footprints.entry(region).or_insert_with(|| RegionFootprint {
                database: database.clone(),
                data_nodes: Default::default(),
            });
            footprint.data_nodes.entry(node).or_insert_with(|| {
                last_generation += 1;
                last_generation
            });
        };
        for (database, table) in &v2.partition_tables {
            for group in table.groups.values() {
                for node in &group.replicas {
                    note(database, group.region, *node);
                }
            }
        }
        for task in v2
            .region_maintain_queue
            .values()
            .chain(v2.pending_legacy_deletions.values())
        {
            note(&task.database, task.region.region, task.target.id);
        }
        Snapshot {
            last_index: self.last_index,
            last_term: self.last_term,
            state: ClusterState {
                next_data_node_id: v2.next_data_node_id,
                next_region_id: v2.next_region_id,
                next_procedure_id: v2.next_procedure_id,
                next_queue_id: v2.next_task_id,
                data_nodes: v2.data_nodes,
                databases: v2.databases,
                partition_tables: v2.partition_tables,
                create_queue: v2
                    .region_maintain_queue
                    .into_iter()
                    .map(queued_create)
                    .collect(),
                legacy_deletions: v2
                    .pending_legacy_deletions
                    .into_iter()
                    .map(legacy_deletion)
                    .collect(),
                procedures: v2.procedures,
                procedure_request_keys: v2.procedure_request_keys,
                region_reservations: v2.region_reservations,
                footprints,
                last_generation,
            },
        }
    }
}
