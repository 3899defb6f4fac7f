//! The background runner of maintain tasks: waits for the region's turn, executes the task
//! against the region store, journals the outcome, then publishes it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Inner;
use super::guard::RegionTicket;
use super::journal::{JournalRecord, Pending};
use crate::api::{MaintainTaskKind, TaskStatus};
use crate::metrics::{self, MetricEvent, Outcome};
use crate::model::TaskId;
use crate::storage::{RegionStore, StorageError};

/// Runs `task_id` in the background once `ticket`'s turn comes. Halting the DataNode stops
/// it at its next await point.
///
/// `accepted` is the task's acceptance record while it may not be durable yet: the task
/// starts only once it is (a task runs only if its acceptance survives a crash).
pub(crate) fn spawn_task(
    inner: &Arc<Inner>,
    task_id: TaskId,
    kind: MaintainTaskKind,
    ticket: RegionTicket,
    accepted: Option<Pending>,
) {
    let name = format!("maintain-{task_id}");
    let inner = inner.clone();
    inner.rt.spawner.clone().spawn(
        &name,
        Box::pin(async move {
            let work = async {
                if let Some(accepted) = accepted
                    && inner.durable(&accepted).await.is_err()
                {
                    return;
                }
                run_task(&inner, task_id, kind, ticket).await;
            };
            // The halt is polled first, so a halted node runs no further step of the task.
            futures_lite::future::or(inner.wait_halt(), work).await;
        }),
    );
}

async fn run_task(inner: &Inner, task_id: TaskId, kind: MaintainTaskKind, ticket: RegionTicket) {
    ticket.turn().await;
    let started = inner.rt.clock.now_ms();
    let status = execute(inner, &kind).await;
    let duration_ms = inner.rt.clock.now_ms().saturating_sub(started);
    record_finish(inner, task_id, &kind, status, duration_ms).await;
    // The region is released only after the outcome is durable and visible.
    drop(ticket);
}

/// Executes one task. Every failure is a `Fail` and stops the task; nothing falls through.
async fn execute(inner: &Inner, kind: &MaintainTaskKind) -> TaskStatus {
    let store: &dyn RegionStore = inner.store.as_ref();
    match kind {
        MaintainTaskKind::CopyRegion { region, source } => {
            super::copy::copy_region(inner, *region, source).await
        }
        MaintainTaskKind::DeleteRegionPeer { region, .. } => {
            // Remove the local consensus peer first (the replica leaves its group: its stored
            // membership becomes empty), so the group stops counting on it before its data
            // goes. A missing region has no peer to remove: carry on to the (no-op) delete.
            // A store whose delete detaches the membership atomically with the data needs no
            // separate (durable, fsynced) peer removal.
            if !store.delete_detaches_membership() {
                match store.set_peers(*region, &[]).await {
                    Ok(()) | Err(StorageError::RegionNotFound(_)) => {}
                    Err(error) => {
                        return TaskStatus::Fail(format!(
                            "removing local peer of {region}: {error}"
                        ));
                    }
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

/// Journals the terminal `status`, then makes it visible. A result is never reported before
/// it is durable: if the journal write fails the node halts without publishing it, and the
/// restarted node resumes the task (journaled as accepted, not finished) and runs it again;
/// every maintain kind is idempotent.
async fn record_finish(
    inner: &Inner,
    task_id: TaskId,
    kind: &MaintainTaskKind,
    status: TaskStatus,
    duration_ms: u64,
) {
    let record = JournalRecord::finished(task_id, &status, duration_ms);
    {
        let staged = {
            let mut writer = inner.writer.lock().await;
            let staged = inner.stage(&mut writer, &record).await;
            // Counted while the writer is held, so a compaction that takes the writer next
            // sees it and waits for the table to hold this status.
            staged.map(|pending| (pending, Finishing::new(inner)))
        };
        // The writer is released while the record becomes durable: concurrent tasks'
        // records share one flush.
        let Ok((pending, _finishing)) = staged else {
            return;
        };
        if inner.durable(&pending).await.is_err() {
            return;
        }
        inner
            .table()
            .finish(task_id, status.clone(), inner.rt.clock.now_ms());
        inner.task_changed.notify(usize::MAX);
    }
    let (outcome, reason) = match &status {
        TaskStatus::Fail(reason) => ("fail", reason.as_str()),
        _ => ("success", ""),
    };
    metrics::record(MetricEvent::Task {
        kind: kind.name(),
        outcome: if matches!(status, TaskStatus::Fail(_)) {
            Outcome::Failure
        } else {
            Outcome::Success
        },
        duration: std::time::Duration::from_millis(duration_ms),
    });
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
    let mut writer = inner.writer.lock().await;
    inner.enforce_retention(&mut writer).await;
}

/// A terminal status staged but not yet in the table (counted in `Inner::finishing`); the
/// count drops when this is dropped, whether the status went in or the task was stopped.
struct Finishing<'a>(&'a Inner);

impl<'a> Finishing<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.finishing.fetch_add(1, Ordering::SeqCst);
        Self(inner)
    }
}

impl Drop for Finishing<'_> {
    fn drop(&mut self) {
        self.0.finishing.fetch_sub(1, Ordering::SeqCst);
        self.0.finish_applied.notify(usize::MAX);
    }
}
