//! [`RemoveRegionGroupProcedure`]: delete every replica of a region group through DataNode
//! tasks followed to a terminal status, then drop the group from the partition table.
//!
//! What is deleted is the group's **footprint** — every DataNode a create was ever sent to,
//! recorded before the create left (see [`crate::state::RegionFootprint`]) — not its
//! published replica set: a create whose reply was lost still made a replica. The footprint
//! is re-read at every step, so nothing that may hold a replica is missed. In `Replicas`
//! scope (a legacy per-replica deletion) only the named DataNodes are deleted on.
//!
//! Per DataNode: persist a task id, submit it, follow its result ([`RegionEnv::drive`]).
//! `Success` commits `ReplicaDeleted` (the node leaves the footprint, the published set and
//! the queue) in the same entry as the node recorded deleted ([`ProcedureContext::stage`]),
//! the ack still owed ([`PendingAck`]) and the next DataNode's task id — one commit per
//! replica; only after that entry is durable is the task acked (by the next step), so a crash
//! can never make the DataNode forget a result the procedure still needs (which would run the
//! task id twice). `NotExist` resubmits the *same* id; `Fail` backs off and persists a *new* id;
//! transient errors keep the step waiting, visibly; `StaleLeader` stops this leader's
//! session; any other error aborts with the DataNode's answer. No quorum is needed.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{MaintainTask, MaintainTaskKind};
use crate::coded_enum;
use crate::model::{DataNodeId, DatabaseName, RegionId, TaskId};
use crate::plan::{ConfigPlan, DropRegionGroup, ReplicaDeleted};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{LockKey, LockMode, LockResource, Rejection};

use super::REMOVE_REGION_GROUP;
use super::env::{CallFailure, RegionEnv, TaskProgress, drop_queued_creates, task_id_for};

coded_enum! {
    /// States of [`RemoveRegionGroupProcedure`].
    pub enum RemoveRegionGroupState {
        /// Retired first state of records written before the footprint; runs as
        /// `DropQueuedCreates`.
        CollectReplicas = 1,
        /// Drop the group's queued creates and wait out creates in flight.
        DropQueuedCreates = 2,
        /// Delete replicas one DataNode at a time through DataNode tasks.
        DeleteReplicas = 3,
        /// Drop the group from the partition table (refused while a replica may remain).
        DropMetadata = 4,
    }
}

coded_enum! {
    /// What a removal removes.
    pub enum RemovalScope {
        /// The whole group: every DataNode of its footprint, then the group itself.
        Group = 1,
        /// Only the `targets` replicas (a legacy per-replica deletion); the group loses just
        /// those locations.
        Replicas = 2,
    }
}

fn is_zero(value: &usize) -> bool {
    *value == 0
}

fn is_zero_u64(value: &u64) -> bool {
    *value == 0
}

/// A finished deletion task to ack, once the entry recording its success is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct PendingAck {
    pub node: DataNodeId,
    pub task: TaskId,
}

/// Persistent data of [`RemoveRegionGroupProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RemoveRegionGroupData {
    pub state: RemoveRegionGroupState,
    pub database: DatabaseName,
    pub region: RegionId,
    pub scope: RemovalScope,
    /// DataNodes to delete on besides the footprint (`Group` scope), or instead of it
    /// (`Replicas` scope).
    #[serde(alias = "extra")]
    pub targets: Vec<DataNodeId>,
    /// DataNodes whose deletion reached `Success` and was recorded (`ReplicaDeleted`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub deleted: BTreeSet<DataNodeId>,
    /// DataNodes removed for good while this removal had to delete there: their replicas
    /// were abandoned (see [`crate::state::AbandonedReplica`]), never reported deleted.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub abandoned: BTreeSet<DataNodeId>,
    /// The DataNode the current task deletes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_node: Option<DataNodeId>,
    /// The current task's id, persisted before it is submitted. (Records written before
    /// `ack`: once `task_node` is in `deleted`, it is the task still to be acked.)
    pub task: Option<TaskId>,
    /// A deletion recorded (its node is in `deleted`) whose task is still to be acked: the
    /// entry that records it also persists the next task id, and the ack goes out after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack: Option<PendingAck>,
    /// The creation generation the current task's deletion covers (the node's footprint
    /// generation when the task id was persisted; resubmissions send the same).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub task_generation: u64,
    /// Task ids handed out so far (the next id's sequence number).
    pub task_seq: u32,
    /// Failed deletions on the current DataNode (backoff).
    pub failures: u32,
    /// Consecutive transient failures reaching the current DataNode (backoff).
    #[serde(default)]
    pub unreachable: u32,
    /// When the current task id was assigned, on the leader's clock (for the completion log;
    /// approximate after a leader change, whose clock has another origin).
    #[serde(default)]
    pub task_since_ms: u64,
    /// Records written before the footprint: the replica set fixed up front. Read by
    /// `decode` (into `targets`/`deleted`), never written.
    #[serde(default, rename = "replicas", skip_serializing_if = "Vec::is_empty")]
    pub legacy_replicas: Vec<DataNodeId>,
    /// Records written before the footprint: the index in `legacy_replicas` being deleted.
    #[serde(default, rename = "next", skip_serializing_if = "is_zero")]
    pub legacy_next: usize,
}

/// Removes one region group's replicas and metadata. See the module docs.
#[derive(Debug, Clone)]
pub struct RemoveRegionGroupProcedure {
    data: RemoveRegionGroupData,
    /// The pending ack this instance already sent (volatile: a decoded record sends it
    /// again, which is harmless), so the steps between two commits send it once.
    acked: Option<PendingAck>,
}

impl RemoveRegionGroupProcedure {
    /// Removes the whole group `region` of `database`: every DataNode of its footprint.
    pub fn group(database: DatabaseName, region: RegionId) -> Self {
        Self::new(database, region, RemovalScope::Group, Vec::new())
    }

    /// Deletes only the replicas of `region` on `targets` (legacy per-replica deletions).
    pub fn replicas(database: DatabaseName, region: RegionId, targets: Vec<DataNodeId>) -> Self {
        Self::new(database, region, RemovalScope::Replicas, targets)
    }

    fn new(
        database: DatabaseName,
        region: RegionId,
        scope: RemovalScope,
        mut targets: Vec<DataNodeId>,
    ) -> Self {
        targets.sort();
        targets.dedup();
        Self {
            data: RemoveRegionGroupData {
                state: RemoveRegionGroupState::DropQueuedCreates,
                database,
                region,
                scope,
                targets,
                deleted: BTreeSet::new(),
                abandoned: BTreeSet::new(),
                task_node: None,
                task: None,
                ack: None,
                task_generation: 0,
                task_seq: 0,
                failures: 0,
                unreachable: 0,
                task_since_ms: 0,
                legacy_replicas: Vec::new(),
                legacy_next: 0,
            },
            acked: None,
        }
    }

    /// The persistent data (for tests and status).
    pub fn data(&self) -> &RemoveRegionGroupData {
        &self.data
    }

    /// DataNodes that may still hold a replica this removal must delete: targets not yet
    /// deleted and, for a whole group, its footprint as it is now. (`ReplicaDeleted` takes
    /// a node out of the footprint before the node is persisted as deleted, so a footprint
    /// node already in `deleted` was added again since, and is deleted again.)
    fn remaining(&self, ctx: &ProcedureContext) -> BTreeSet<DataNodeId> {
        let region = self.data.region;
        let mut nodes: BTreeSet<DataNodeId> = ctx.state().read(|s| {
            self.data
                .targets
                .iter()
                .copied()
                .filter(|n| !self.data.deleted.contains(n))
                // A target abandoned since (its DataNode removed for good) and not back in
                // the footprint has nothing this removal can delete.
                .filter(|n| !s.is_abandoned(region, *n) || s.footprint(region).contains(n))
                .collect()
        });
        if self.data.scope == RemovalScope::Group {
            if crate::mutations::active(crate::mutations::Mutation::Orphan) {
                // Mutation: the replica set as published and queued, not the footprint.
                let region = self.data.region;
                ctx.state().read(|s| {
                    if let Some(group) = s.region_group(region) {
                        nodes.extend(group.replicas.iter().copied());
                    }
                    for create in s.create_queue.values() {
                        if create.group.region == region {
                            nodes.insert(create.target);
                        }
                    }
                });
                nodes.retain(|n| !self.data.deleted.contains(n));
            } else {
                nodes.extend(ctx.state().read(|s| s.footprint(self.data.region)));
            }
        }
        nodes
    }

    /// Retry: commit failures. Abort: none.
    async fn drop_queued_creates(
        &mut self,
        ctx: &ProcedureContext,
    ) -> Result<Step, ProcedureError> {
        let (region, scope) = (self.data.region, self.data.scope);
        let targets = &self.data.targets;
        // A per-replica removal leaves the group's other missing replicas queued.
        drop_queued_creates(ctx, |create| {
            create.group.region == region
                && (scope == RemovalScope::Group || targets.contains(&create.target))
        })
        .await?;
        // The drop is committed: the cleaner starts no new create of this region. Wait out
        // the ones already in flight so none lands after the deletions below.
        let env = RegionEnv::of(ctx)?;
        futures_lite::future::or(env.inflight.wait_idle(region), ctx.stopped()).await;
        // Straight on: the first task id is persisted with this state change.
        self.data.state = RemoveRegionGroupState::DeleteReplicas;
        self.delete_replicas(ctx).await
    }

    /// Retry: DataNode unreachable, timeout, failed deletion (new task id). Stop: the
    /// DataNode has seen a newer epoch. Abort: the DataNode refuses the task or answers
    /// something no retry can change.
    async fn delete_replicas(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        self.send_pending_ack(ctx).await?;
        if let (Some(node), Some(task)) = (self.data.task_node, self.data.task)
            && self.data.deleted.contains(&node)
        {
            // A record written before `ack`.
            // Ack after persist: the deletion is durably recorded, so the DataNode may now
            // forget the result. Then straight on to the next DataNode (its task id is
            // persisted with this), or to dropping the metadata.
            env.ack(ctx, node, task).await?;
            self.data.task = None;
            self.data.task_node = None;
        }
        if let Some(node) = self.data.task_node
            && ctx.state().read(|s| {
                s.is_abandoned(self.data.region, node)
                    && !s.footprint(self.data.region).contains(&node)
            })
        {
            // The DataNode was removed for good while this deletion waited for it: nothing
            // can delete there any more. Recorded as abandoned, never as deleted.
            tracing::warn!(
                procedure = %ctx.procedure_id(), region = %self.data.region, data_node = %node,
                task = ?self.data.task, outcome = "abandoned",
                "replica deletion abandoned: the DataNode was removed for good"
            );
            self.data.abandoned.insert(node);
            self.data.task = None;
            self.data.task_node = None;
            self.data.unreachable = 0;
            return Ok(Step::Continue);
        }
        let node = match self.data.task_node {
            Some(node) => node,
            None => match self.remaining(ctx).into_iter().next() {
                Some(node) => node,
                None => {
                    self.data.state = RemoveRegionGroupState::DropMetadata;
                    return self.drop_metadata(ctx).await;
                }
            },
        };
        let Some(task_id) = self.data.task else {
            self.assign_task(ctx, node)?;
            return Ok(Step::Continue);
        };
        let Some(location) = RegionEnv::location(ctx, node) else {
            return Ok(Step::Wait {
                after: env.config.retry.max,
                waiting_for: format!("DataNode {node} is not registered"),
            });
        };
        let running = format!(
            "deletion of {} on {node} (task {task_id})",
            self.data.region
        );
        let task = MaintainTask {
            task_id,
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: self.data.region,
                generation: self.data.task_generation,
            },
        };
        match env.drive(ctx.epoch(), &location, task, running).await {
            Ok(TaskProgress::Succeeded) => self.succeeded(ctx, node, task_id).await,
            Ok(TaskProgress::Failed(reason)) => Ok(self.failed(ctx, env, node, task_id, reason)),
            Ok(TaskProgress::Running(step)) => Ok(step),
            Ok(TaskProgress::Rejected(reason)) => Err(ProcedureError::Abort(format!(
                "{node} refused deletion task {task_id}: {reason}"
            ))),
            Err(e) => self.call_failed(ctx, env, node, "a deletion task", e),
        }
    }

    /// Gives the deletion on `node` a new task id, persisted by the step's transition
    /// before anything is submitted: a crash in between resubmits the same id, never starts
    /// a second deletion under a new one.
    fn assign_task(
        &mut self,
        ctx: &ProcedureContext,
        node: DataNodeId,
    ) -> Result<(), ProcedureError> {
        self.data.task = Some(task_id_for(ctx.procedure_id(), self.data.task_seq)?);
        self.data.task_node = Some(node);
        // Every create ever sent to this node for this group carries at most the
        // generation it holds in the footprint now.
        self.data.task_generation = ctx
            .state()
            .read(|s| s.creation_generation(self.data.region, node))
            .unwrap_or(0);
        // Deleting on it (again, if it was added back to the footprint).
        self.data.deleted.remove(&node);
        self.data.task_seq += 1;
        self.data.task_since_ms = ctx.runtime().clock.now_ms();
        Ok(())
    }

    /// Acks the deletion recorded by the last commit, once per instance (a re-run from the
    /// record acks again: harmless). Cleared from the record by the next commit.
    async fn send_pending_ack(&mut self, ctx: &ProcedureContext) -> Result<(), ProcedureError> {
        if let Some(pending) = self.data.ack
            && self.acked != Some(pending)
        {
            RegionEnv::of(ctx)?
                .ack(ctx, pending.node, pending.task)
                .await?;
            self.acked = Some(pending);
        }
        Ok(())
    }

    async fn succeeded(
        &mut self,
        ctx: &ProcedureContext,
        node: DataNodeId,
        task_id: TaskId,
    ) -> Result<Step, ProcedureError> {
        if crate::mutations::active(crate::mutations::Mutation::AckEarly) {
            // Mutation: ack before the progress below is durable.
            let env = RegionEnv::of(ctx)?;
            env.ack(ctx, node, task_id).await?;
        }
        // Recorded in the same entry as `deleted` below: the node leaves the footprint
        // exactly when the procedure records it as deleted.
        let deleted = ReplicaDeleted {
            region: self.data.region,
            data_node: node,
        };
        ctx.stage(ConfigPlan::ReplicaDeleted(deleted))?;
        tracing::info!(
            procedure = %ctx.procedure_id(), region = %self.data.region,
            data_node = %node, task = %task_id, outcome = "success",
            duration_ms = ctx.runtime().clock.now_ms().saturating_sub(self.data.task_since_ms),
            "replica deleted"
        );
        // Acked after this is committed, by the next step; the next DataNode's task id is
        // persisted in the same entry, so a replica costs one commit.
        self.data.deleted.insert(node);
        self.data.ack = Some(PendingAck {
            node,
            task: task_id,
        });
        self.data.task = None;
        self.data.task_node = None;
        self.data.failures = 0;
        self.data.unreachable = 0;
        // `node` is still in the footprint until the staged `ReplicaDeleted` applies.
        let next = self.remaining(ctx).into_iter().find(|n| *n != node);
        match next {
            Some(next) => self.assign_task(ctx, next)?,
            None => self.data.state = RemoveRegionGroupState::DropMetadata,
        }
        Ok(Step::Continue)
    }

    fn failed(
        &mut self,
        ctx: &ProcedureContext,
        env: &RegionEnv,
        node: DataNodeId,
        task_id: TaskId,
        reason: String,
    ) -> Step {
        tracing::warn!(
            procedure = %ctx.procedure_id(), region = %self.data.region,
            data_node = %node, task = %task_id, outcome = "fail",
            duration_ms = ctx.runtime().clock.now_ms().saturating_sub(self.data.task_since_ms),
            "replica deletion failed: {reason}"
        );
        self.data.failures += 1;
        // A deliberate re-run uses a new id, persisted by the next step first. The failed
        // task is terminal, so two deletions of one replica never run at once. Its result is
        // left for the DataNode's retention bound: acking it now would be acking before the
        // new id is persisted.
        self.data.task = None;
        self.data.task_node = None;
        let after = env
            .config
            .retry
            .delay(self.data.failures, ctx.runtime().rng.as_ref());
        Step::Wait {
            after,
            waiting_for: format!(
                "retry of failed deletion of {} on {node}: {reason}",
                self.data.region
            ),
        }
    }

    fn call_failed(
        &mut self,
        ctx: &ProcedureContext,
        env: &RegionEnv,
        node: DataNodeId,
        what: &str,
        error: crate::api::ApiError,
    ) -> Result<Step, ProcedureError> {
        match CallFailure::of(env, node, what, error) {
            CallFailure::Stop(e) | CallFailure::Abort(e) => Err(e),
            CallFailure::Retry(error) => {
                self.data.unreachable = self.data.unreachable.saturating_add(1);
                Ok(Step::Wait {
                    after: env
                        .config
                        .retry
                        .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                    waiting_for: format!(
                        "DataNode {node} for deletion of {}: {error}",
                        self.data.region
                    ),
                })
            }
        }
    }

    /// Retry: commit failures. Abort: none (missing metadata is already the goal).
    async fn drop_metadata(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        self.send_pending_ack(ctx).await?;
        self.data.ack = None;
        let region = self.data.region;
        if self.data.scope == RemovalScope::Group {
            let plan = DropRegionGroup {
                database: self.data.database.clone(),
                region,
            };
            match ctx.propose(ConfigPlan::DropRegionGroup(plan)).await? {
                Ok(_) => {}
                Err(Rejection::ReplicasRemain { .. }) => {
                    // Something may hold a replica that this removal has not deleted yet.
                    self.data.state = RemoveRegionGroupState::DeleteReplicas;
                    return Ok(Step::Continue);
                }
                Err(rejection) => return Err(rejection.into()),
            }
        }
        tracing::info!(
            procedure = %ctx.procedure_id(), %region, replicas = self.data.deleted.len(),
            "region group removed"
        );
        Ok(Step::Done(Vec::new()))
    }
}

#[async_trait]
impl Procedure for RemoveRegionGroupProcedure {
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
            resource: LockResource::RegionGroup(self.data.region),
            mode: LockMode::Exclusive,
        }]
    }

    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        match self.data.state {
            RemoveRegionGroupState::CollectReplicas | RemoveRegionGroupState::DropQueuedCreates => {
                self.drop_queued_creates(ctx).await
            }
            RemoveRegionGroupState::DeleteReplicas => self.delete_replicas(ctx).await,
            RemoveRegionGroupState::DropMetadata => self.drop_metadata(ctx).await,
        }
    }
}

impl ProcedureType for RemoveRegionGroupProcedure {
    const TYPE_CODE: u32 = REMOVE_REGION_GROUP;
    const TYPE_NAME: &'static str = "RemoveRegionGroup";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        let mut data: RemoveRegionGroupData = decode_data(data)?;
        // A record from before the footprint: its fixed replica set becomes explicit
        // targets; those before `next` were deleted; the task in flight is `next`'s.
        if !data.legacy_replicas.is_empty() {
            let next = data.legacy_next.min(data.legacy_replicas.len());
            data.deleted
                .extend(data.legacy_replicas[..next].iter().copied());
            if data.task.is_some() && data.task_node.is_none() {
                data.task_node = data.legacy_replicas.get(next).copied();
            }
            data.targets.append(&mut data.legacy_replicas);
            data.targets.sort();
            data.targets.dedup();
            data.legacy_next = 0;
        }
        Ok(Self { data, acked: None })
    }
}

#[cfg(test)]
mod tests;
