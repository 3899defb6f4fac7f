//! [`RemoveDataNodeProcedure`]: decommission a DataNode.
//!
//! `MarkRemoving` (refuse up front what cannot succeed; then status `Removing`: placement
//! chooses it no more) → [forced only] `Abandon` (the node is gone for good: each replica it
//! may hold leaves its group's footprint and replica set through `AbandonReplica`, recorded
//! as abandoned — with the deletions that were waiting for it — never as deleted) →
//! `MoveReplicas` (rounds of at most [`MIGRATION_BATCH`] children: a planned
//! [`MigrateRegionProcedure`] per replica it serves, a replicas-scope removal for a replica
//! it may hold without serving, a repair migration per group an abandonment left below its
//! RF; targets chosen by placement across the round; repeated until nothing is left) →
//! `Unregister` (refused by the state machine while the node may still hold a replica).
//!
//! Removing the last replica of a group is refused unless its database is being deleted.
//! A failed round fails the removal with the child's reason; the node stays `Removing`
//! (visibly) and running the removal again resumes it.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::coded_enum;
use crate::model::{DataNodeId, DatabaseName, ProcedureId, RegionId};
use crate::placement::place_replacements;
use crate::plan::{AbandonReplica, ConfigPlan, UnregisterDataNode, UpdateDataNodeStatus};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{ClusterState, DataNodeStatus, LockKey, LockMode, LockResource, Rejection};

use super::env::{RegionEnv, first_failed_child};
use super::migrate_region::{owed_replicas, replication_factor};
use super::{
    MigrateRegionProcedure, REMOVE_DATA_NODE, REMOVE_REGION_GROUP, RemoveRegionGroupProcedure,
};

/// Children spawned per round (bounds one log entry and the work in flight).
pub const MIGRATION_BATCH: usize = 64;

coded_enum! {
    /// States of [`RemoveDataNodeProcedure`].
    pub enum RemoveDataNodeState {
        /// Check, then mark the node `Removing`.
        MarkRemoving = 1,
        /// Forced: abandon every replica the node may hold.
        Abandon = 2,
        /// Spawn migrations, removals and repairs until nothing is left.
        MoveReplicas = 3,
        /// Unregister the node.
        Unregister = 4,
    }
}

/// Persistent data of [`RemoveDataNodeProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveDataNodeData {
    /// Current state.
    pub state: RemoveDataNodeState,
    /// The DataNode.
    pub node: DataNodeId,
    /// Gone for good: abandon its replicas instead of moving them.
    pub force: bool,
    /// Rounds of children spawned.
    pub rounds: u32,
    /// Planned moves spawned.
    pub moved: u32,
    /// Repairs (re-replications) spawned.
    pub repaired: u32,
    /// Replica removals spawned (replicas it might hold without serving).
    pub removed: u32,
    /// Groups whose replica on the node was abandoned.
    pub abandoned: Vec<RegionId>,
    /// The groups of the last round (a round that changes nothing is not repeated).
    pub last_round: Vec<RegionId>,
}

/// What a finished removal reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveDataNodeOutput {
    /// The DataNode.
    pub node: DataNodeId,
    /// Whether it was forced.
    pub force: bool,
    /// Planned moves.
    pub moved: u32,
    /// Repairs.
    pub repaired: u32,
    /// Replica removals.
    pub removed: u32,
    /// Groups whose replica on it was abandoned.
    pub abandoned: Vec<RegionId>,
}

/// One child a round spawns.
enum Work {
    Move(DatabaseName, RegionId),
    Remove(DatabaseName, RegionId),
    Repair(DatabaseName, RegionId),
}

impl Work {
    fn region(&self) -> RegionId {
        match self {
            Work::Move(_, r) | Work::Remove(_, r) | Work::Repair(_, r) => *r,
        }
    }
}

/// Decommissions a DataNode. See the module docs.
#[derive(Debug, Clone)]
pub struct RemoveDataNodeProcedure {
    data: RemoveDataNodeData,
}

/// Why removing `node` cannot succeed now, if it cannot: it holds the last replica of a
/// group whose database is not being deleted (forced), or (planned) some group it serves has
/// no running DataNode outside it to move to.
pub fn removal_refusal(state: &ClusterState, node: DataNodeId, force: bool) -> Option<String> {
    if !state.data_nodes.contains_key(&node) {
        return Some(format!("unknown DataNode {node}"));
    }
    let mut requests = Vec::new();
    for (database, group) in state.region_groups() {
        if !group.replicas.contains(&node) {
            continue;
        }
        let deleting = state.databases.get(database).is_none_or(|d| d.deleting);
        if group.replicas == [node] && !deleting && force {
            return Some(format!(
                "{node} holds the last replica of {} (database {database}); refusing to \
                 remove it unless the database is being deleted",
                group.region
            ));
        }
        if !force && !deleting {
            requests.push((group.region, vec![node]));
        }
    }
    let placed = place_replacements(state, &requests);
    if let Some(((region, _), _)) = requests.iter().zip(&placed).find(|(_, p)| p.is_none()) {
        return Some(format!(
            "no running DataNode outside the group of {region} can take the replica on {node}; \
             add a DataNode, or use --force if {node} is gone for good"
        ));
    }
    None
}

impl RemoveDataNodeProcedure {
    /// Removes `node`; `force` for a node gone for good.
    pub fn new(node: DataNodeId, force: bool) -> Self {
        Self {
            data: RemoveDataNodeData {
                state: RemoveDataNodeState::MarkRemoving,
                node,
                force,
                rounds: 0,
                moved: 0,
                repaired: 0,
                removed: 0,
                abandoned: Vec::new(),
                last_round: Vec::new(),
            },
        }
    }

    /// The persistent data.
    pub fn data(&self) -> &RemoveDataNodeData {
        &self.data
    }

    /// Done: the node is not registered (a re-run after it was unregistered). Abort: the
    /// removal cannot succeed (see [`removal_refusal`]).
    async fn mark_removing(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let node = self.data.node;
        let status = ctx
            .state()
            .read(|s| s.data_nodes.get(&node).map(|n| n.status));
        let Some(status) = status else {
            return Err(ProcedureError::Abort(format!("unknown DataNode {node}")));
        };
        if status != DataNodeStatus::Removing
            && let Some(reason) = ctx
                .state()
                .read(|s| removal_refusal(s, node, self.data.force))
        {
            return Err(ProcedureError::Abort(reason));
        }
        let mark = UpdateDataNodeStatus {
            only_from: None,
            id: node,
            status: DataNodeStatus::Removing,
        };
        ctx.propose(ConfigPlan::UpdateDataNodeStatus(mark))
            .await??;
        tracing::info!(procedure = %ctx.procedure_id(), data_node = %node,
            force = self.data.force, "DataNode marked removing");
        self.data.state = if self.data.force {
            RemoveDataNodeState::Abandon
        } else {
            RemoveDataNodeState::MoveReplicas
        };
        Ok(Step::Continue)
    }

    /// Retry: commit failures. Abort: the node holds the last replica of a group whose
    /// database is not being deleted.
    async fn abandon(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let node = self.data.node;
        let regions: Vec<(RegionId, Vec<ProcedureId>)> = ctx.state().read(|s| {
            s.footprints
                .iter()
                .filter(|(_, f)| f.data_nodes.contains_key(&node))
                .map(|(region, _)| (*region, deletions_of(s, *region)))
                .collect()
        });
        for (region, deletions) in regions {
            let plan = AbandonReplica {
                region,
                data_node: node,
                by: ctx.procedure_id(),
                deletions,
            };
            match ctx.propose(ConfigPlan::AbandonReplica(plan)).await? {
                Ok(_) => {}
                Err(rejection @ Rejection::LastReplica { .. }) => {
                    return Err(ProcedureError::Abort(format!(
                        "refusing to remove {node}: {rejection}"
                    )));
                }
                Err(rejection) => return Err(rejection.into()),
            }
            tracing::warn!(procedure = %ctx.procedure_id(), %region, data_node = %node,
                "replica abandoned: its DataNode is removed for good");
            if !self.data.abandoned.contains(&region) {
                self.data.abandoned.push(region);
            }
        }
        self.data.state = RemoveDataNodeState::MoveReplicas;
        Ok(Step::Continue)
    }

    /// What is left to do for the node, in region order.
    fn work(&self, state: &ClusterState) -> Vec<Work> {
        let node = self.data.node;
        let mut work = Vec::new();
        let mut seen = BTreeSet::new();
        for (database, group) in state.region_groups() {
            let deleting = state.databases.get(database).is_none_or(|d| d.deleting);
            if group.replicas.contains(&node) {
                seen.insert(group.region);
                work.push(Work::Move(database.clone(), group.region));
            } else if !deleting
                // Abandoned by this removal or by an earlier one that failed before its
                // repairs were done (removing the node again resumes them; simulator).
                && (self.data.abandoned.contains(&group.region)
                    || state.is_abandoned(group.region, node))
                && state.databases.get(database).is_some_and(|d| {
                    owed_replicas(state, group) < replication_factor(&d.schema, group.region.kind)
                })
            {
                seen.insert(group.region);
                work.push(Work::Repair(database.clone(), group.region));
            }
        }
        for (region, footprint) in &state.footprints {
            if footprint.data_nodes.contains_key(&node) && !seen.contains(region) {
                work.push(Work::Remove(footprint.database.clone(), *region));
            }
        }
        work.sort_by_key(Work::region);
        work
    }

    /// Abort: a child of the last round failed; a group has no DataNode to move to; a round
    /// would repeat the last one.
    fn move_replicas(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(failed) = first_failed_child(ctx, "migration") {
            return Err(failed);
        }
        let node = self.data.node;
        let force = self.data.force;
        let me = ctx.procedure_id();
        let (work, footprint_left, busy) = ctx.state().read(|s| {
            let left = s
                .footprints
                .values()
                .any(|f| f.data_nodes.contains_key(&node));
            let (work, busy): (Vec<Work>, Vec<Work>) = self.work(s).into_iter().partition(|w| {
                // A replica the node may hold without serving is deleted in replicas scope;
                // while another procedure holds its group (a migration to this node) or is
                // creating it, it may yet become a serving one, which such a deletion would
                // take from the group below its RF (simulator). Planned once that finished.
                !matches!(w, Work::Remove(..)) || !in_flight(s, w.region(), node, me)
            });
            (work, left, busy)
        });
        if force && footprint_left {
            // A create placed before the node was marked may have added it since.
            self.data.state = RemoveDataNodeState::Abandon;
            return Ok(Step::Continue);
        }
        if work.is_empty() && !busy.is_empty() {
            let env = RegionEnv::of(ctx)?;
            let regions: Vec<RegionId> = busy.iter().map(Work::region).collect();
            return Ok(Step::Wait {
                after: env.config.poll_wait,
                waiting_for: format!(
                    "procedures on {regions:?} to finish before deleting their replicas on {node}"
                ),
            });
        }
        if work.is_empty() {
            self.data.state = RemoveDataNodeState::Unregister;
            return Ok(Step::Continue);
        }
        let batch: Vec<Work> = work.into_iter().take(MIGRATION_BATCH).collect();
        let regions: Vec<RegionId> = batch.iter().map(Work::region).collect();
        if !self.data.last_round.is_empty() && regions == self.data.last_round {
            return Err(ProcedureError::Abort(format!(
                "the replicas of {regions:?} on {node} did not move in the last round"
            )));
        }
        // Targets for the whole round at once, so it spreads over the running DataNodes.
        let requests: Vec<(RegionId, Vec<DataNodeId>)> = batch
            .iter()
            .filter(|w| !matches!(w, Work::Remove(..)))
            .map(|w| (w.region(), vec![node]))
            .collect();
        let mut targets = ctx
            .state()
            .read(|s| place_replacements(s, &requests))
            .into_iter();
        let mut children: Vec<Box<dyn Procedure>> = Vec::with_capacity(batch.len());
        for item in batch {
            match item {
                Work::Remove(database, region) => {
                    self.data.removed += 1;
                    children.push(Box::new(RemoveRegionGroupProcedure::replicas(
                        database,
                        region,
                        vec![node],
                    )));
                }
                Work::Move(database, region) => {
                    let Some(target) = targets.next().flatten() else {
                        return Err(ProcedureError::Abort(format!(
                            "no running DataNode outside the group of {region} can take the \
                             replica on {node}"
                        )));
                    };
                    self.data.moved += 1;
                    children.push(Box::new(MigrateRegionProcedure::new(
                        database,
                        region,
                        node,
                        Some(target),
                    )));
                }
                Work::Repair(database, region) => {
                    // No target now: the repair waits for one (placement at its Prepare).
                    let target = targets.next().flatten();
                    self.data.repaired += 1;
                    children.push(Box::new(MigrateRegionProcedure::repair(
                        database, region, node, target,
                    )));
                }
            }
        }
        self.data.rounds += 1;
        self.data.last_round = regions;
        tracing::info!(procedure = %ctx.procedure_id(), data_node = %node,
            round = self.data.rounds, children = children.len(), "removal round");
        Ok(Step::SpawnChildren(children))
    }

    /// Retry: commit failures. Back to moving: the state machine finds a replica left.
    async fn unregister(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(failed) = first_failed_child(ctx, "migration") {
            return Err(failed);
        }
        let node = self.data.node;
        let plan = UnregisterDataNode { id: node };
        match ctx.propose(ConfigPlan::UnregisterDataNode(plan)).await? {
            Ok(_) => {}
            Err(Rejection::ReplicasRemain { .. }) => {
                self.data.state = RemoveDataNodeState::MoveReplicas;
                return Ok(Step::Continue);
            }
            Err(rejection) => return Err(rejection.into()),
        }
        tracing::info!(procedure = %ctx.procedure_id(), data_node = %node,
            moved = self.data.moved, repaired = self.data.repaired,
            abandoned = self.data.abandoned.len(), "DataNode removed");
        let output = RemoveDataNodeOutput {
            node,
            force: self.data.force,
            moved: self.data.moved,
            repaired: self.data.repaired,
            removed: self.data.removed,
            abandoned: self.data.abandoned.clone(),
        };
        Ok(Step::Done(encode_data(&output)?))
    }
}

/// Whether `node`'s replica of `region` may still become a serving one: an unfinished
/// procedure other than `me` holds (or waits for) the group's lock or reserved its id (a
/// migration or creation in flight), or a queued create targets it (the group was published
/// without it and counts on it for its RF; deleting it would leave the group short).
fn in_flight(state: &ClusterState, region: RegionId, node: DataNodeId, me: ProcedureId) -> bool {
    if state
        .create_queue
        .values()
        .any(|c| c.group.region == region && c.target == node)
    {
        return true;
    }
    let unfinished = |id: &ProcedureId| {
        *id != me
            && state
                .procedures
                .get(id)
                .is_some_and(|p| !p.status.is_finished())
    };
    let reserved = state
        .region_reservations
        .iter()
        .any(|((owner, kind), (first, count))| {
            *kind == region.kind
                && region.id >= *first
                && region.id - *first < *count
                && unfinished(owner)
        });
    reserved
        || state.unfinished_procedures().any(|p| {
            p.id != me
                && p.lock_keys
                    .iter()
                    .any(|k| k.resource == LockResource::RegionGroup(region))
        })
}

/// Unfinished removals that may be deleting `region` (they hold its group lock).
fn deletions_of(state: &ClusterState, region: RegionId) -> Vec<ProcedureId> {
    state
        .unfinished_procedures()
        .filter(|p| p.type_code == REMOVE_REGION_GROUP)
        .filter(|p| {
            p.lock_keys
                .iter()
                .any(|k| k.resource == LockResource::RegionGroup(region))
        })
        .map(|p| p.id)
        .collect()
}

#[async_trait]
impl Procedure for RemoveDataNodeProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }

    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }

    fn state(&self) -> StateId {
        StateId {
            code: u32::from(self.data.state.code()),
            name: self.data.state.name(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }

    fn lock_keys(&self) -> Vec<LockKey> {
        vec![LockKey {
            resource: LockResource::DataNode(self.data.node),
            mode: LockMode::Exclusive,
        }]
    }

    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        match self.data.state {
            RemoveDataNodeState::MarkRemoving => self.mark_removing(ctx).await,
            RemoveDataNodeState::Abandon => self.abandon(ctx).await,
            RemoveDataNodeState::MoveReplicas => self.move_replicas(ctx),
            RemoveDataNodeState::Unregister => self.unregister(ctx).await,
        }
    }
}

impl ProcedureType for RemoveDataNodeProcedure {
    const TYPE_CODE: u32 = REMOVE_DATA_NODE;
    const TYPE_NAME: &'static str = "RemoveDataNode";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

#[cfg(test)]
#[path = "remove_data_node/tests.rs"]
mod tests;
