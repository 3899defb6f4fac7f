//! The background runner of maintain tasks: waits for the region's turn, executes the task
//! against the region store, journals the outcome, then publishes it.

use std::sync::Arc;
use std::time::Duration;

use super::Inner;
use super::guard::RegionTicket;
use super::journal::JournalRecord;
use crate::api::{MaintainTaskKind, TaskStatus};
use crate::model::TaskId;
use crate::storage::{RegionStore, StorageError};

/// First pause before retrying a failed journal write of a result.
const FIRST_FINISH_RETRY: Duration = Duration::from_millis(50);

/// Runs `task_id` in the background once `ticket`'s turn comes. Halting the DataNode stops
/// it at its next await point.
pub(crate) fn spawn_task(
    inner: &Arc<Inner>,
    task_id: TaskId,
    kind: MaintainTaskKind,
    ticket: RegionTicket,
) {
    let name = format!("maintain-{task_id}");
    let inner = inner.clone();
    inner.rt.spawner.clone().spawn(
        &name,
        Box::pin(async move {
            let work = run_task(&inner, task_id, kind, ticket);
            futures_lite::future::or(work, inner.wait_halt()).await;
        }),
    );
}

async fn run_task(inner: &Inner, task_id: TaskId, kind: MaintainTaskKind, ticket: RegionTicket) {
    ticket.turn().await;
    let started = inner.rt.clock.now_ms();
    let status = execute(inner.store.as_ref(), &kind).await;
    let duration_ms = inner.rt.clock.now_ms().saturating_sub(started);
    record_finish(inner, task_id, &kind, status, duration_ms).await;
    // The region is released only after the outcome is durable and visible.
    drop(ticket);
}

/// Executes one task. Every failure is a `Fail` and stops the task; nothing falls through.
async fn execute(store: &dyn RegionStore, kind: &MaintainTaskKind) -> TaskStatus {
    match kind {
        MaintainTaskKind::DeleteRegionPeer { region } => {
            // Remove the local consensus peer first (the replica leaves its group: its stored
            // membership becomes empty), so the group stops counting on it before its data
            // goes. A missing region has no peer to remove: carry on to the (no-op) delete.
            match store.set_peers(*region, &[]).await {
                Ok(()) | Err(StorageError::RegionNotFound(_)) => {}
                Err(error) => {
                    return TaskStatus::Fail(format!("removing local peer of {region}: {error}"));
                }
            }
            match store.delete(*region).await {
                Ok(_) => TaskStatus::Success,
                Err(_) if crate::mutations::active(crate::mutations::Mutation::FailAsSuccess) => {
                    TaskStatus::Success
                }
                Err(error) => TaskStatus::Fail(format!("deleting data of {region}: {error}")),
            }
        }
    }
}

/// Journals the terminal `status`, retrying with backoff until it is durable, then makes it
/// visible. A result is never reported before it is durable: a restart in between resumes
/// the task instead of forgetting its outcome.
async fn record_finish(
    inner: &Inner,
    task_id: TaskId,
    kind: &MaintainTaskKind,
    status: TaskStatus,
    duration_ms: u64,
) {
    let record = JournalRecord::finished(task_id, &status, duration_ms);
    let mut backoff = FIRST_FINISH_RETRY;
    loop {
        let mut writer = inner.writer.lock().await;
        match writer.append(&record).await {
            Ok(()) => {
                inner
                    .table()
                    .finish(task_id, status.clone(), inner.rt.clock.now_ms());
                inner.task_changed.notify(usize::MAX);
                let (outcome, reason) = match &status {
                    TaskStatus::Fail(reason) => ("fail", reason.as_str()),
                    _ => ("success", ""),
                };
                tracing::info!(
                    data_node = %inner.id_label(),
                    task_id = %task_id,
                    region = %kind.region(),
                    kind = kind.name(),
                    outcome,
                    reason,
                    duration_ms,
                    "maintain task finished"
                );
                inner.enforce_retention(&mut writer).await;
                return;
            }
            Err(error) => {
                drop(writer);
                tracing::warn!(task_id = %task_id, %error, retry_in = ?backoff,
                    "could not journal a task result; retrying");
                inner.rt.clock.sleep(backoff).await;
                backoff = (backoff * 2).min(inner.config.max_finish_retry_backoff);
            }
        }
    }
}
