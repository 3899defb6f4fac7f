//! The ConfigNode's replicated state and the deterministic `apply` of [`ConfigPlan`]s.
//!
//! Everything here iterates in a defined order (`BTreeMap`), and every id is allocated from
//! counters inside the state, so replaying a log from any snapshot yields an identical state.

mod apply;
mod types;

pub use apply::{Applied, ApplyResult, Rejection};
pub use types::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    DataNodeId, DatabaseName, MaintainQueueId, ProcedureId, RegionId, RegionKind, RegionReplicaSet,
};

/// Largest block of region ids one [`crate::plan::ReserveRegionIds`] may take.
pub const MAX_RESERVE: u32 = 65_536;

/// All ConfigNode metadata. Changed only by [`ClusterState::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Next DataNode id to allocate.
    pub next_data_node_id: u32,
    /// Next region id to allocate (shared by both kinds).
    pub next_region_id: u32,
    /// Next procedure id to allocate.
    pub next_procedure_id: u64,
    /// Next region-maintain queue id to allocate (queued creates and legacy deletions
    /// share the id space).
    pub next_queue_id: u64,
    /// Registered DataNodes.
    pub data_nodes: BTreeMap<DataNodeId, DataNodeInfo>,
    /// Databases by name.
    pub databases: BTreeMap<DatabaseName, DatabaseEntry>,
    /// Each database's published region groups.
    pub partition_tables: BTreeMap<DatabaseName, PartitionTable>,
    /// Missing replicas the region cleaner creates, oldest first.
    pub create_queue: BTreeMap<MaintainQueueId, QueuedCreate>,
    /// Deletions inherited from the legacy delete-by-queue path, not yet owned by a
    /// procedure. Never dropped silently: a leader turns each into a removal procedure.
    pub legacy_deletions: BTreeMap<MaintainQueueId, LegacyDeletion>,
    /// Procedure records, unfinished and retained finished ones.
    pub procedures: BTreeMap<ProcedureId, ProcedureRecord>,
    /// Client request keys of submitted procedures (submit deduplication).
    pub procedure_request_keys: BTreeMap<String, ProcedureId>,
    /// Region ids reserved by a procedure, by (procedure, kind): `(first, count)`. Makes a
    /// re-run reservation return the same ids; dropped with the procedure's record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub region_reservations: BTreeMap<(ProcedureId, RegionKind), (u32, u32)>,
    /// Per region group, every DataNode that may hold a replica (see [`RegionFootprint`]).
    /// A group's metadata and its database are dropped only once its footprint is empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub footprints: BTreeMap<RegionId, RegionFootprint>,
    /// The last creation generation handed out (a DataNode joining a footprint gets the
    /// next one; 0 is never handed out, it stands for "no generation" on the wire).
    #[serde(default)]
    pub last_generation: u64,
    /// Replicas abandoned on DataNodes removed for good, per group and node (see
    /// [`AbandonedReplica`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub abandoned_replicas: BTreeMap<RegionId, BTreeMap<DataNodeId, AbandonedReplica>>,
}

impl ClusterState {
    /// The database that owns `region`, if the group is published.
    pub fn database_of(&self, region: RegionId) -> Option<&DatabaseName> {
        self.partition_tables
            .iter()
            .find(|(_, table)| table.groups.contains_key(&region))
            .map(|(name, _)| name)
    }

    /// The published replica set of `region`.
    pub fn region_group(&self, region: RegionId) -> Option<&RegionReplicaSet> {
        self.partition_tables
            .values()
            .find_map(|table| table.groups.get(&region))
    }

    /// Every published region group, in region-id order within database order.
    pub fn region_groups(&self) -> impl Iterator<Item = (&DatabaseName, &RegionReplicaSet)> {
        self.partition_tables
            .iter()
            .flat_map(|(db, table)| table.groups.values().map(move |group| (db, group)))
    }

    /// How many published replicas each registered DataNode holds (placement load).
    pub fn replica_counts(&self) -> BTreeMap<DataNodeId, usize> {
        let mut counts: BTreeMap<DataNodeId, usize> =
            self.data_nodes.keys().map(|id| (*id, 0)).collect();
        for (_, group) in self.region_groups() {
            for node in &group.replicas {
                *counts.entry(*node).or_default() += 1;
            }
        }
        counts
    }

    /// The DataNodes that may hold a replica of `region` (empty when none may).
    pub fn footprint(&self, region: RegionId) -> Vec<DataNodeId> {
        self.footprints
            .get(&region)
            .map(|f| f.data_nodes.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The creation generation `node` joined `region`'s footprint under, if it is in it.
    pub fn creation_generation(&self, region: RegionId, node: DataNodeId) -> Option<u64> {
        self.footprints
            .get(&region)
            .and_then(|f| f.data_nodes.get(&node).copied())
    }

    /// Region groups of `database` some DataNode may still hold a replica of.
    pub fn footprints_of<'a>(
        &'a self,
        database: &'a DatabaseName,
    ) -> impl Iterator<Item = (RegionId, &'a RegionFootprint)> + 'a {
        self.footprints
            .iter()
            .filter(move |(_, f)| &f.database == database)
            .map(|(region, f)| (*region, f))
    }

    /// Whether the replica of `region` on `node` was abandoned (its DataNode removed for
    /// good).
    pub fn is_abandoned(&self, region: RegionId, node: DataNodeId) -> bool {
        self.abandoned_replicas
            .get(&region)
            .is_some_and(|nodes| nodes.contains_key(&node))
    }

    /// Procedures that have not finished, in id order.
    pub fn unfinished_procedures(&self) -> impl Iterator<Item = &ProcedureRecord> {
        self.procedures.values().filter(|p| !p.status.is_finished())
    }
}

#[cfg(test)]
mod tests;
