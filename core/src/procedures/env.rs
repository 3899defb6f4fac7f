//! What the region procedures reach besides their persistent data (volatile), and the
//! helpers they share.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{ApiError, MaintainTask, SubmitOutcome, TaskStatus};
use crate::confignode::clients::DataNodeClients;
use crate::confignode::fence::EpochHealer;
use crate::confignode::inflight::InflightCreates;
use crate::model::{DataNodeId, DataNodeLocation, MaintainQueueId, ProcedureId, TaskId};
use crate::plan::{ConfigPlan, DropQueuedCreates};
use crate::procedure::{BackoffPolicy, ChildOutcome, ProcedureContext, ProcedureError, Step};
use crate::state::{ProcedureStatus, QueuedCreate};

/// Tunables of the region procedures.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Longest single long-poll of a task result (awaited without holding a worker).
    pub poll_wait: Duration,
    /// Backoff after a failed deletion and while a DataNode is unreachable.
    pub retry: BackoffPolicy,
    /// How long a replica create that finds its DataNode unreachable (or times out) is
    /// retried within the creating step before that replica counts as failed.
    pub create_retry_window: Duration,
    /// Data region groups may serve with one replica when a majority is not reached.
    pub data_quorum_at_least_one: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            poll_wait: Duration::from_secs(5),
            retry: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                max_attempts: None,
            },
            create_retry_window: Duration::from_secs(10),
            data_quorum_at_least_one: false,
        }
    }
}

/// The environment region procedures expect in their [`ProcedureContext`].
#[derive(Clone)]
pub struct RegionEnv {
    /// Clients of DataNodes.
    pub clients: Arc<dyn DataNodeClients>,
    /// Creates in flight from the region cleaner (removals wait them out).
    pub inflight: Arc<InflightCreates>,
    /// Where a DataNode's `StaleLeader` answer is reported, so the leader heals the fence.
    pub healer: Arc<EpochHealer>,
    /// Tunables.
    pub config: LifecycleConfig,
    /// What the last long-poll of each followed task saw (see [`RegionEnv::drive`]).
    pub observed: TaskObservations,
}

/// The answers long-polls of followed tasks returned, until a step of the procedure that
/// follows the task takes them (volatile: a new leader or a restart starts empty).
///
/// Using one instead of asking again is sound because a task's status only moves forward:
/// a terminal answer stays true of that task id forever (an id never runs twice), and any
/// other answer only makes the step submit (idempotent) or follow again.
#[derive(Debug, Clone, Default)]
pub struct TaskObservations(Arc<Mutex<BTreeMap<(String, TaskId), Observation>>>);

/// One long-poll's answer: a status, or the error the DataNode (or the network) gave.
type Observation = Result<TaskStatus, ApiError>;

impl TaskObservations {
    /// At most this many answers wait to be taken (one per task being followed). An answer
    /// whose step never came for it (the procedure moved on another way) would stay; when
    /// they fill the map it is emptied, and the steps that lost theirs submit again.
    const MAX: usize = 1 << 16;

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, TaskId), Observation>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, address: &str, task: TaskId, status: Observation) {
        let mut seen = self.lock();
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        seen.insert((address.to_string(), task), status);
    }

    fn take(&self, address: &str, task: TaskId) -> Option<Observation> {
        self.lock().remove(&(address.to_string(), task))
    }

    /// Answers waiting to be taken.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no answer waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where a DataNode task stands, as one step of the procedure that owns it sees it.
#[derive(Debug)]
pub(crate) enum TaskProgress {
    /// Finished successfully on the DataNode.
    Succeeded,
    /// Finished and failed there, with the DataNode's reason.
    Failed(String),
    /// Accepted and not finished: the step returns this `Step::Await`.
    Running(Step),
    /// The DataNode refused the submission (the id names another task, or was acked).
    Rejected(String),
}

impl std::fmt::Debug for RegionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionEnv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RegionEnv {
    /// The region environment of a step.
    pub fn of(ctx: &ProcedureContext) -> Result<&RegionEnv, ProcedureError> {
        ctx.env::<RegionEnv>()
    }

    /// Where `node` is registered now (addresses are resolved at dial time).
    pub(crate) fn location(ctx: &ProcedureContext, node: DataNodeId) -> Option<DataNodeLocation> {
        ctx.state()
            .read(|s| s.data_nodes.get(&node).map(|n| n.location.clone()))
    }

    /// Moves the task `task` on the DataNode at `location` on by one step, in as few calls
    /// as the protocol allows: when the long-poll that woke this step saw the task terminal,
    /// that answer is the result (no call); otherwise the task is submitted — idempotent: an
    /// id already accepted, running or finished, is accepted again and runs nothing — and
    /// followed. A task thus costs a submission, a long-poll and the ack; a step re-run
    /// after a restart or a lost reply costs one submission more. The task id must be
    /// persisted before the first call (the caller's job).
    pub(crate) async fn drive(
        &self,
        epoch: crate::model::Epoch,
        location: &DataNodeLocation,
        task: MaintainTask,
        waiting_for: String,
    ) -> Result<TaskProgress, ApiError> {
        match self.observed.take(&location.address, task.task_id) {
            Some(Ok(TaskStatus::Success)) => return Ok(TaskProgress::Succeeded),
            Some(Ok(TaskStatus::Fail(reason))) => return Ok(TaskProgress::Failed(reason)),
            // The poll failed: the caller decides (wait and retry, abort, or stop) exactly
            // as for a failed submission — never a loop of submit and failed poll.
            Some(Err(error)) => return Err(error),
            Some(Ok(TaskStatus::Processing)) => {
                return Ok(TaskProgress::Running(self.follow(
                    location,
                    task.task_id,
                    waiting_for,
                )));
            }
            // Unknown there (evicted unacked, or never received): submit again.
            Some(Ok(TaskStatus::NotExist)) | None => {}
        }
        let task_id = task.task_id;
        match self
            .clients
            .client(location)
            .submit_task(epoch, task)
            .await?
        {
            SubmitOutcome::Accepted => Ok(TaskProgress::Running(self.follow(
                location,
                task_id,
                waiting_for,
            ))),
            SubmitOutcome::Rejected(reason) => Ok(TaskProgress::Rejected(reason)),
        }
    }

    /// While `task_id` runs on the DataNode at `location`, the step awaits a long-poll of it
    /// without holding a worker (`Step::Await`) and re-runs when the poll returns: completion
    /// is seen within the poll's round trip, and the poll's answer is kept for that re-run
    /// ([`RegionEnv::drive`]).
    pub(crate) fn follow(
        &self,
        location: &DataNodeLocation,
        task_id: TaskId,
        waiting_for: String,
    ) -> Step {
        let client = self.clients.client(location);
        let wait = self.config.poll_wait;
        let (observed, address) = (self.observed.clone(), location.address.clone());
        Step::Await {
            until: Box::pin(async move {
                let answer = client.task_result(task_id, Some(wait)).await;
                observed.put(&address, task_id, answer);
            }),
            waiting_for,
        }
    }

    /// Acks `task`'s result on `node`, wherever it is registered now (nowhere: nothing to
    /// ack). Best effort: an unacked result is bounded and expires on the DataNode; only a
    /// `StaleLeader` answer matters (this leader is fenced).
    pub(crate) async fn ack(
        &self,
        ctx: &ProcedureContext,
        node: DataNodeId,
        task: TaskId,
    ) -> Result<(), ProcedureError> {
        match Self::location(ctx, node) {
            Some(location) => self.ack_at(ctx, &location, node, task).await,
            None => Ok(()),
        }
    }

    /// [`RegionEnv::ack`] at a known `location`.
    pub(crate) async fn ack_at(
        &self,
        ctx: &ProcedureContext,
        location: &DataNodeLocation,
        node: DataNodeId,
        task: TaskId,
    ) -> Result<(), ProcedureError> {
        match self
            .clients
            .client(location)
            .ack_task(ctx.epoch(), task)
            .await
        {
            Err(e) => self.stale_leader(node, &e).map_or(Ok(()), Err),
            Ok(()) => Ok(()),
        }
    }

    /// Turns a `StaleLeader` answer into the error that stops this leader's session, after
    /// reporting it so the leader claims a higher epoch (or steps down if deposed).
    pub(crate) fn stale_leader(
        &self,
        node: DataNodeId,
        error: &ApiError,
    ) -> Option<ProcedureError> {
        match error {
            ApiError::StaleLeader { request, seen } => {
                self.healer.report(node, *request, *seen);
                Some(ProcedureError::StaleLeader {
                    peer: node.to_string(),
                    seen: *seen,
                })
            }
            _ => None,
        }
    }
}

/// How one DataNode call's failure decides a step: stop, wait and retry, or abort.
pub(crate) enum CallFailure {
    /// The leader is fenced or deposed: the step ends with this error (the session stops).
    Stop(ProcedureError),
    /// Transient (timeout, unreachable, a retryable remote failure): wait and retry.
    Retry(ApiError),
    /// No retry can change the answer (refused, malformed): abort with the reason.
    Abort(ProcedureError),
}

impl CallFailure {
    /// Classifies `error` from `node`; `what` names the call for the abort reason.
    pub(crate) fn of(env: &RegionEnv, node: DataNodeId, what: &str, error: ApiError) -> Self {
        if let Some(stop) = env.stale_leader(node, &error) {
            return CallFailure::Stop(stop);
        }
        if error.is_retryable() {
            return CallFailure::Retry(error);
        }
        CallFailure::Abort(ProcedureError::Abort(format!(
            "{node} answered {what} with: {error}"
        )))
    }
}

/// Largest sequence number [`task_id_for`] takes: 20 bits beside the procedure id.
pub const MAX_TASK_SEQ: u32 = (1 << 20) - 1;

/// The `seq`-th task id of procedure `id`: `id << 20 | seq`. Unique across the cluster
/// because procedure ids are; persisted by the procedure before the task is submitted.
/// Fails (never wraps) once `seq` or `id` no longer fit: a wrapped id would name an earlier
/// task of the same procedure, which the DataNode would answer from its old result.
pub fn task_id_for(id: ProcedureId, seq: u32) -> Result<TaskId, ProcedureError> {
    if seq > MAX_TASK_SEQ || id.0 >= 1 << 44 {
        return Err(ProcedureError::Abort(format!(
            "{id} ran out of task ids after {seq} tasks"
        )));
    }
    Ok(TaskId((id.0 << 20) | u64::from(seq)))
}

/// Drops the queued creates `keep` selects (the region cleaner must not create what a
/// removal deletes). Idempotent: a re-run finds nothing left to drop.
pub(crate) async fn drop_queued_creates(
    ctx: &ProcedureContext,
    select: impl Fn(&QueuedCreate) -> bool,
) -> Result<(), ProcedureError> {
    let queued: Vec<MaintainQueueId> = ctx.state().read(|s| {
        s.create_queue
            .iter()
            .filter(|(_, create)| select(create))
            .map(|(id, _)| *id)
            .collect()
    });
    if !queued.is_empty() {
        let drop = DropQueuedCreates { ids: queued };
        ctx.propose(ConfigPlan::DropQueuedCreates(drop)).await??;
    }
    Ok(())
}

/// The first child that did not succeed, as the abort reason of its parent.
pub(crate) fn first_failed_child(ctx: &ProcedureContext, what: &str) -> Option<ProcedureError> {
    ctx.children()
        .iter()
        .find(|c| c.status != ProcedureStatus::Succeeded)
        .map(|child: &ChildOutcome| {
            ProcedureError::Abort(format!(
                "{what} {} ended {}: {}",
                child.id,
                child.status,
                child.error.clone().unwrap_or_default()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_never_wrap() {
        let id = ProcedureId(3);
        assert_eq!(task_id_for(id, 0).unwrap(), TaskId(3 << 20));
        assert_eq!(
            task_id_for(id, MAX_TASK_SEQ).unwrap(),
            TaskId((3 << 20) | u64::from(MAX_TASK_SEQ))
        );
        assert!(task_id_for(id, MAX_TASK_SEQ + 1).is_err());
        assert!(task_id_for(ProcedureId(1 << 44), 0).is_err());
    }
}
