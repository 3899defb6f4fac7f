//! [`RemoveOrphanRegionProcedure`]: delete a replica that a DataNode holds but that no
//! group's footprint and no unfinished procedure accounts for (found by the leader's orphan
//! reconciler after a grace period).
//!
//! `Check` (under the group's lock: a node back in the footprint — a create in flight, a
//! migration target — is no orphan, and is left alone) → `DeleteReplica` (a
//! `DeleteRegionPeer` task, its id and fence generation persisted before it is submitted —
//! the generation is the newest handed out, so any create sent before this deletion is
//! refused should it arrive late — followed to a terminal status; `Success` is persisted
//! before the task is acked) → done, logged with region, DataNode and bytes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{MaintainTask, MaintainTaskKind};
use crate::coded_enum;
use crate::model::{DataNodeId, RegionId, TaskId};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{LockKey, LockMode, LockResource};

use super::REMOVE_ORPHAN_REGION;
use super::env::{CallFailure, RegionEnv, TaskProgress, task_id_for};

/// Failed deletions before the procedure gives up (the orphan stays listed).
pub const MAX_ORPHAN_DELETE_FAILURES: u32 = 5;

coded_enum! {
    /// States of [`RemoveOrphanRegionProcedure`].
    pub enum RemoveOrphanRegionState {
        /// Re-check, under the group's lock, that the replica is still an orphan.
        Check = 1,
        /// Delete it through a DataNode task.
        DeleteReplica = 2,
    }
}

/// Persistent data of [`RemoveOrphanRegionProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveOrphanRegionData {
    /// Current state.
    pub state: RemoveOrphanRegionState,
    /// The DataNode holding it.
    pub node: DataNodeId,
    /// The region.
    pub region: RegionId,
    /// Bytes it held when reported.
    pub bytes: u64,
    /// The deletion task, persisted before it is submitted.
    pub task: Option<TaskId>,
    /// The creation generation the deletion fences (persisted with the task id).
    pub generation: u64,
    /// Task ids handed out so far.
    pub task_seq: u32,
    /// Failed deletions so far.
    pub failures: u32,
    /// Consecutive transient failures reaching the DataNode.
    pub unreachable: u32,
    /// The deletion reached `Success` (the task is acked next).
    pub deleted: bool,
}

/// Deletes one orphan replica. See the module docs.
#[derive(Debug, Clone)]
pub struct RemoveOrphanRegionProcedure {
    data: RemoveOrphanRegionData,
}

impl RemoveOrphanRegionProcedure {
    /// Deletes the replica of `region` on `node` (reported holding `bytes`).
    pub fn new(node: DataNodeId, region: RegionId, bytes: u64) -> Self {
        Self {
            data: RemoveOrphanRegionData {
                state: RemoveOrphanRegionState::Check,
                node,
                region,
                bytes,
                task: None,
                generation: 0,
                task_seq: 0,
                failures: 0,
                unreachable: 0,
                deleted: false,
            },
        }
    }

    /// The persistent data.
    pub fn data(&self) -> &RemoveOrphanRegionData {
        &self.data
    }

    /// Done: the replica is accounted for after all (in a footprint) or its DataNode is
    /// gone.
    fn check(&mut self, ctx: &ProcedureContext) -> Step {
        let (node, region) = (self.data.node, self.data.region);
        let why_not = ctx.state().read(|s| {
            if !s.data_nodes.contains_key(&node) {
                Some(format!("{node} is no longer registered"))
            } else if s.footprint(region).contains(&node) {
                Some(format!("{node} is in the footprint of {region} now"))
            } else {
                None
            }
        });
        if let Some(reason) = why_not {
            tracing::info!(procedure = %ctx.procedure_id(), %region, data_node = %node,
                "orphan left alone: {reason}");
            return Step::Done(Vec::new());
        }
        self.data.state = RemoveOrphanRegionState::DeleteReplica;
        Step::Continue
    }

    /// Retry: the DataNode unreachable; a failed deletion (new id, after backoff). Stop: a
    /// newer epoch. Abort: the DataNode refuses the task; too many failed deletions.
    async fn delete_replica(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let (node, region) = (self.data.node, self.data.region);
        let Some(location) = RegionEnv::location(ctx, node) else {
            return Ok(Step::Done(Vec::new()));
        };
        if let Some(task) = self.data.task
            && self.data.deleted
        {
            // Ack after persist: the success is durable.
            env.ack_at(ctx, &location, node, task).await?;
            return Ok(Step::Done(Vec::new()));
        }
        let Some(task_id) = self.data.task else {
            if ctx.state().read(|s| s.footprint(region).contains(&node)) {
                return Ok(Step::Done(Vec::new()));
            }
            // Persist the id and the fence before submitting: a resubmission sends the same.
            self.data.task = Some(task_id_for(ctx.procedure_id(), self.data.task_seq)?);
            self.data.task_seq += 1;
            self.data.generation = ctx.state().read(|s| s.last_generation);
            return Ok(Step::Continue);
        };
        let task = MaintainTask {
            task_id,
            kind: MaintainTaskKind::DeleteRegionPeer {
                region,
                generation: self.data.generation,
            },
        };
        let waiting_for = orphan_waiting_for(region, task_id);
        match env.drive(ctx.epoch(), &location, task, waiting_for).await {
            Ok(TaskProgress::Succeeded) => {
                tracing::warn!(procedure = %ctx.procedure_id(), %region, data_node = %node,
                    bytes = self.data.bytes, task = %task_id, "orphan replica deleted");
                self.data.deleted = true;
                Ok(Step::Continue)
            }
            Ok(TaskProgress::Failed(reason)) => {
                self.data.failures += 1;
                if self.data.failures >= MAX_ORPHAN_DELETE_FAILURES {
                    return Err(ProcedureError::Abort(format!(
                        "deleting orphan {region} on {node} failed {} times: {reason}",
                        self.data.failures
                    )));
                }
                self.data.task = None;
                Ok(Step::Wait {
                    after: env
                        .config
                        .retry
                        .delay(self.data.failures, ctx.runtime().rng.as_ref()),
                    waiting_for: format!("retry of the deletion of orphan {region}: {reason}"),
                })
            }
            Ok(TaskProgress::Running(step)) => Ok(step),
            Ok(TaskProgress::Rejected(reason)) => Err(ProcedureError::Abort(format!(
                "{node} refused deletion task {task_id}: {reason}"
            ))),
            Err(e) => self.call_failed(ctx, env, "a deletion task", e),
        }
    }

    fn call_failed(
        &mut self,
        ctx: &ProcedureContext,
        env: &RegionEnv,
        what: &str,
        error: crate::api::ApiError,
    ) -> Result<Step, ProcedureError> {
        match CallFailure::of(env, self.data.node, what, error) {
            CallFailure::Stop(e) | CallFailure::Abort(e) => Err(e),
            CallFailure::Retry(error) => {
                self.data.unreachable = self.data.unreachable.saturating_add(1);
                Ok(Step::Wait {
                    after: env
                        .config
                        .retry
                        .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                    waiting_for: format!(
                        "DataNode {} for the deletion of orphan {}: {error}",
                        self.data.node, self.data.region
                    ),
                })
            }
        }
    }
}

/// What a step following the deletion of an orphan says it waits for.
fn orphan_waiting_for(region: RegionId, task_id: TaskId) -> String {
    format!("deletion of orphan {region} (task {task_id})")
}

#[async_trait]
impl Procedure for RemoveOrphanRegionProcedure {
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
            RemoveOrphanRegionState::Check => Ok(self.check(ctx)),
            RemoveOrphanRegionState::DeleteReplica => self.delete_replica(ctx).await,
        }
    }
}

impl ProcedureType for RemoveOrphanRegionProcedure {
    const TYPE_CODE: u32 = REMOVE_ORPHAN_REGION;
    const TYPE_NAME: &'static str = "RemoveOrphanRegion";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

#[cfg(test)]
#[path = "remove_orphan_region/tests.rs"]
mod tests;
