//! [`RemoveRegionGroupProcedure`]: delete every replica of a region group through DataNode
//! tasks followed to a terminal status, then drop the group from the partition table.
//!
//! Per replica: persist a task id, submit it, long-poll its result. `Success` moves on;
//! `NotExist` resubmits the *same* id (the DataNode dedups it); `Fail` backs off, persists a
//! *new* id and resubmits (the failed task is terminal, so two deletions of one replica never
//! run at once); an unreachable DataNode keeps the step waiting, visibly. No quorum is needed:
//! every replica is deleted, whatever the others do.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, MaintainTask, MaintainTaskKind, SubmitOutcome, TaskStatus};
use crate::coded_enum;
use crate::model::{DataNodeId, DatabaseName, RegionId, TaskId};
use crate::plan::{
    ConfigPlan, PollSpecificRegionMaintainTask, RemoveRegionGroup, RemoveRegionLocation,
};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{LockKey, LockMode, LockResource, Rejection};

use super::REMOVE_REGION_GROUP;
use super::env::{RegionEnv, task_id_for};

coded_enum! {
    /// States of [`RemoveRegionGroupProcedure`].
    pub enum RemoveRegionGroupState {
        /// Fix the replica set: published replicas, queued create targets and extra replicas.
        CollectReplicas = 1,
        /// Drop the group's queued creates and wait out creates in flight.
        DropQueuedCreates = 2,
        /// Delete replicas one by one through DataNode tasks.
        DeleteReplicas = 3,
        /// Drop the group (or the deleted locations) from the partition table.
        DropMetadata = 4,
    }
}

coded_enum! {
    /// What a removal removes.
    pub enum RemovalScope {
        /// The whole group: every replica, then the group itself.
        Group = 1,
        /// Only the `extra` replicas (a legacy per-replica deletion); the group's metadata
        /// loses just those locations.
        Replicas = 2,
    }
}

/// Persistent data of [`RemoveRegionGroupProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveRegionGroupData {
    /// Current state.
    pub state: RemoveRegionGroupState,
    /// The owning database.
    pub database: DatabaseName,
    /// The group.
    pub region: RegionId,
    /// What to remove.
    pub scope: RemovalScope,
    /// Replicas to delete besides the published ones (e.g. of a group never published).
    pub extra: Vec<DataNodeId>,
    /// Replicas to delete, fixed by `CollectReplicas`, in order.
    pub replicas: Vec<DataNodeId>,
    /// Index into `replicas` of the replica being deleted.
    pub next: usize,
    /// The current replica's task id, persisted before it is submitted.
    pub task: Option<TaskId>,
    /// Task ids handed out so far (the next id's sequence number).
    pub task_seq: u32,
    /// Failed deletions of the current replica (backoff).
    pub failures: u32,
    /// Consecutive unreachable attempts of the current replica (backoff).
    #[serde(default)]
    pub unreachable: u32,
    /// When the current task id was assigned, on the leader's clock (for the completion log;
    /// approximate after a leader change, whose clock has another origin).
    #[serde(default)]
    pub task_since_ms: u64,
}

/// Removes one region group's replicas and metadata. See the module docs.
#[derive(Debug, Clone)]
pub struct RemoveRegionGroupProcedure {
    data: RemoveRegionGroupData,
}

impl RemoveRegionGroupProcedure {
    /// Removes the whole group `region` of `database`; `extra` names replicas that may exist
    /// without being published (a group torn down before publication).
    pub fn group(database: DatabaseName, region: RegionId, extra: Vec<DataNodeId>) -> Self {
        Self::new(database, region, RemovalScope::Group, extra)
    }

    /// Deletes only the `replicas` of `region` (legacy per-replica deletions).
    pub fn replicas(database: DatabaseName, region: RegionId, replicas: Vec<DataNodeId>) -> Self {
        Self::new(database, region, RemovalScope::Replicas, replicas)
    }

    fn new(
        database: DatabaseName,
        region: RegionId,
        scope: RemovalScope,
        extra: Vec<DataNodeId>,
    ) -> Self {
        Self {
            data: RemoveRegionGroupData {
                state: RemoveRegionGroupState::CollectReplicas,
                database,
                region,
                scope,
                extra,
                replicas: Vec::new(),
                next: 0,
                task: None,
                task_seq: 0,
                failures: 0,
                unreachable: 0,
                task_since_ms: 0,
            },
        }
    }

    /// The persistent data (for tests and status).
    pub fn data(&self) -> &RemoveRegionGroupData {
        &self.data
    }

    fn collect_replicas(&mut self, ctx: &ProcedureContext) {
        let region = self.data.region;
        let mut replicas = self.data.extra.clone();
        if self.data.scope == RemovalScope::Group {
            ctx.state().read(|s| {
                if let Some(group) = s.region_group(region) {
                    replicas.extend(group.replicas.iter().copied());
                }
                for task in s.region_maintain_queue.values() {
                    if task.region.region == region {
                        replicas.extend(task.region.replicas.iter().copied());
                        replicas.push(task.target.id);
                    }
                }
            });
        }
        replicas.sort();
        replicas.dedup();
        self.data.replicas = replicas;
        self.data.state = RemoveRegionGroupState::DropQueuedCreates;
    }

    /// Retry: commit failures. Abort: none.
    async fn drop_queued_creates(
        &mut self,
        ctx: &ProcedureContext,
    ) -> Result<Step, ProcedureError> {
        let region = self.data.region;
        let queued: Vec<TaskId> = ctx.state().read(|s| {
            s.region_maintain_queue
                .iter()
                .filter(|(_, t)| t.region.region == region)
                .map(|(id, _)| *id)
                .collect()
        });
        if !queued.is_empty() {
            let poll = PollSpecificRegionMaintainTask { task_ids: queued };
            ctx.propose(ConfigPlan::PollSpecificRegionMaintainTask(poll))
                .await??;
        }
        // The drop is committed: the cleaner starts no new create of this region. Wait out
        // the ones already in flight so none lands after the deletions below.
        let env = RegionEnv::of(ctx)?;
        futures_lite::future::or(env.inflight.wait_idle(region), ctx.stopped()).await;
        self.data.state = RemoveRegionGroupState::DeleteReplicas;
        Ok(Step::Continue)
    }

    /// Retry: DataNode unreachable, timeout, failed deletion (new task id). Abort: the
    /// DataNode refuses the task id (it names another task).
    async fn delete_replicas(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let Some(node) = self.data.replicas.get(self.data.next).copied() else {
            self.data.state = RemoveRegionGroupState::DropMetadata;
            return Ok(Step::Continue);
        };
        let Some(task_id) = self.data.task else {
            // Persist the task id before submitting: a crash in between must resubmit the
            // same id, never start a second deletion under a new one.
            self.data.task = Some(task_id_for(ctx.procedure_id(), self.data.task_seq));
            self.data.task_seq += 1;
            self.data.task_since_ms = ctx.runtime().clock.now_ms();
            return Ok(Step::Continue);
        };
        let env = RegionEnv::of(ctx)?;
        let Some(location) = ctx
            .state()
            .read(|s| s.data_nodes.get(&node).map(|n| n.location.clone()))
        else {
            return Ok(Step::Wait {
                after: env.config.retry.max,
                waiting_for: format!("DataNode {node} is not registered"),
            });
        };
        let client = env.clients.client(&location);
        let clock = ctx.runtime().clock.clone();
        // While the task runs, the step awaits a long-poll without a worker (`Step::Await`)
        // and re-runs when it returns: completion is seen within the poll's round trip.
        let follow = |what: String| {
            let client = client.clone();
            let wait = env.config.poll_wait;
            Step::Await {
                until: Box::pin(async move {
                    let _ = client.task_result(task_id, Some(wait)).await;
                }),
                waiting_for: what,
            }
        };
        let running = format!(
            "deletion of {} on {node} (task {task_id})",
            self.data.region
        );
        match client.task_result(task_id, None).await {
            Ok(TaskStatus::Success) => {
                tracing::info!(
                    procedure = %ctx.procedure_id(), region = %self.data.region,
                    data_node = %node, task = %task_id, outcome = "success",
                    duration_ms = clock.now_ms().saturating_sub(self.data.task_since_ms),
                    "replica deleted"
                );
                // Best effort: an unacked result is bounded and expires on the DataNode.
                let _ = client.ack_task(ctx.epoch(), task_id).await;
                self.data.next += 1;
                self.data.task = None;
                self.data.failures = 0;
                self.data.unreachable = 0;
                Ok(Step::Continue)
            }
            Ok(TaskStatus::Fail(reason)) => {
                tracing::warn!(
                    procedure = %ctx.procedure_id(), region = %self.data.region,
                    data_node = %node, task = %task_id, outcome = "fail",
                    duration_ms = clock.now_ms().saturating_sub(self.data.task_since_ms),
                    "replica deletion failed: {reason}"
                );
                let _ = client.ack_task(ctx.epoch(), task_id).await;
                self.data.failures += 1;
                // A deliberate re-run uses a new id, persisted by the next step first.
                self.data.task = None;
                let after = env
                    .config
                    .retry
                    .delay(self.data.failures, ctx.runtime().rng.as_ref());
                Ok(Step::Wait {
                    after,
                    waiting_for: format!(
                        "retry of failed deletion of {} on {node}: {reason}",
                        self.data.region
                    ),
                })
            }
            Ok(TaskStatus::NotExist) => {
                let task = MaintainTask {
                    task_id,
                    kind: MaintainTaskKind::DeleteRegionPeer {
                        region: self.data.region,
                    },
                };
                match client.submit_task(ctx.epoch(), task).await {
                    Ok(SubmitOutcome::Accepted) => Ok(follow(running)),
                    Ok(SubmitOutcome::Rejected(reason)) => Err(ProcedureError::Abort(format!(
                        "{node} refused deletion task {task_id}: {reason}"
                    ))),
                    Err(e) => Ok(self.unreachable(ctx, env, node, e)),
                }
            }
            Ok(TaskStatus::Processing) => Ok(follow(running)),
            Err(e) => Ok(self.unreachable(ctx, env, node, e)),
        }
    }

    fn unreachable(
        &mut self,
        ctx: &ProcedureContext,
        env: &RegionEnv,
        node: DataNodeId,
        error: ApiError,
    ) -> Step {
        self.data.unreachable = self.data.unreachable.saturating_add(1);
        Step::Wait {
            after: env
                .config
                .retry
                .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
            waiting_for: format!(
                "DataNode {node} for deletion of {}: {error}",
                self.data.region
            ),
        }
    }

    /// Retry: commit failures. Abort: none (missing metadata is already the goal).
    async fn drop_metadata(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let region = self.data.region;
        match self.data.scope {
            RemovalScope::Group => {
                let plan = RemoveRegionGroup {
                    database: self.data.database.clone(),
                    region,
                };
                ctx.propose(ConfigPlan::RemoveRegionGroup(plan)).await??;
            }
            RemovalScope::Replicas => {
                for node in self.data.replicas.clone() {
                    let plan = RemoveRegionLocation {
                        region,
                        data_node: node,
                    };
                    match ctx.propose(ConfigPlan::RemoveRegionLocation(plan)).await? {
                        Ok(_) | Err(Rejection::UnknownRegion(_)) => {}
                        Err(rejection) => return Err(rejection.into()),
                    }
                }
            }
        }
        tracing::info!(
            procedure = %ctx.procedure_id(), %region, replicas = self.data.replicas.len(),
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
            RemoveRegionGroupState::CollectReplicas => {
                self.collect_replicas(ctx);
                Ok(Step::Continue)
            }
            RemoveRegionGroupState::DropQueuedCreates => self.drop_queued_creates(ctx).await,
            RemoveRegionGroupState::DeleteReplicas => self.delete_replicas(ctx).await,
            RemoveRegionGroupState::DropMetadata => self.drop_metadata(ctx).await,
        }
    }
}

impl ProcedureType for RemoveRegionGroupProcedure {
    const TYPE_CODE: u32 = REMOVE_REGION_GROUP;
    const TYPE_NAME: &'static str = "RemoveRegionGroup";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}
