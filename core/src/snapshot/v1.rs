//! Snapshot format v1: before region deletion moved to procedures, the region-maintain queue
//! also held *delete* tasks, executed by synchronous RPC (the ghost-task hazard). Loading v1
//! keeps every such task as a pending legacy deletion so a procedure finishes it.
//! Its tasks have v2's shape (target by location).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{DataNodeId, DatabaseName, ProcedureId, TaskId};
use crate::state::{
    DataNodeInfo, DatabaseEntry, PartitionTable, ProcedureRecord, RegionMaintainKind,
};

use super::v2::{ClusterStateV2, RegionMaintainTaskV2 as RegionMaintainTask, SnapshotV2};

/// The v1 snapshot body. Frozen: never change these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct SnapshotV1 {
    /// Index of the last log entry the state includes.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    pub state: ClusterStateV1,
}

/// The v1 state: no pending-legacy-deletion table; the queue mixes creates and deletes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct ClusterStateV1 {
    pub next_data_node_id: u32,
    pub next_region_id: u32,
    pub next_procedure_id: u64,
    pub next_task_id: u64,
    pub data_nodes: BTreeMap<DataNodeId, DataNodeInfo>,
    pub databases: BTreeMap<DatabaseName, DatabaseEntry>,
    pub partition_tables: BTreeMap<DatabaseName, PartitionTable>,
    /// Create *and* delete tasks.
    pub region_maintain_queue: BTreeMap<TaskId, RegionMaintainTask>,
    pub procedures: BTreeMap<ProcedureId, ProcedureRecord>,
    pub procedure_request_keys: BTreeMap<String, ProcedureId>,
}

impl SnapshotV1 {
    /// Converts to the v2 shape, moving legacy delete tasks to pending legacy deletions
    /// (then [`SnapshotV2::upgrade`] brings it to the current shape).
    pub fn upgrade(self) -> SnapshotV2 {
        let v1 = self.state;
        let mut queue = BTreeMap::new();
        let mut pending = BTreeMap::new();
        for (id, task) in v1.region_maintain_queue {
            match task.kind {
                RegionMaintainKind::Create => {
                    queue.insert(id, task);
                }
                RegionMaintainKind::LegacyDelete => {
                    tracing::warn!(
                        task = %id, region = %task.region.region, data_node = %task.target.id,
                        "v1 snapshot: legacy delete task kept as a pending legacy deletion"
                    );
                    pending.insert(id, task);
                }
            }
        }
        SnapshotV2 {
            last_index: self.last_index,
            last_term: self.last_term,
            state: ClusterStateV2 {
                next_data_node_id: v1.next_data_node_id,
                next_region_id: v1.next_region_id,
                next_procedure_id: v1.next_procedure_id,
                next_task_id: v1.next_task_id,
                data_nodes: v1.data_nodes,
                databases: v1.databases,
                partition_tables: v1.partition_tables,
                region_maintain_queue: queue,
                pending_legacy_deletions: pending,
                procedures: v1.procedures,
                procedure_request_keys: v1.procedure_request_keys,
                region_reservations: BTreeMap::new(),
            },
        }
    }
}
