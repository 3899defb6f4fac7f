//! [`DataNode`] as the [`DataNodeApi`] the ConfigNode calls.

use std::time::Duration;

use async_trait::async_trait;
use futures_lite::future;

use super::journal::{ForgetReason, JournalRecord, StoredTaskKind};
use super::tasks::{AckFound, Admission};
use super::{DataNode, runner};
use crate::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, RegionChunk,
    RegionDigest, RegionReport, SubmitOutcome, TaskStatus,
};
use crate::model::{Epoch, RegionId, TaskId};
use crate::storage::{RegionConfig, StorageError};

/// Maps a storage failure to what the caller sees. A conflicting or missing region is a
/// refusal (retrying the same call cannot help); anything else is a remote failure whose
/// retryability is the storage error's.
fn storage_error(error: StorageError) -> ApiError {
    match error {
        StorageError::RegionConflict { .. } | StorageError::RegionNotFound(_) => {
            ApiError::Refused(error.to_string())
        }
        other => ApiError::Remote {
            retryable: other.is_retryable(),
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl DataNodeApi for DataNode {
    /// Synchronous and idempotent. Waits for any maintain operation queued or running on
    /// the same region (e.g. a deletion), then creates it afresh. Abort (`Refused`): the
    /// region exists with a different configuration.
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        inner.admit(epoch).await?;
        let config = RegionConfig {
            region: request.region,
            database: request.database,
            peers: request.peers,
        };
        let _turn = inner.guards.lock(config.region).await;
        // Checked in the region's turn: a deletion accepted before this create, even one
        // still queued, fences it.
        if let Some(fenced) = inner.table().fenced(config.region)
            && request.generation <= fenced
        {
            tracing::warn!(data_node = %inner.id_label(), region = %config.region,
                generation = request.generation, fenced,
                "stale create refused: a later deletion covered it");
            return Err(ApiError::Refused(format!(
                "create of {} (generation {}) was sent before a deletion that covers \
                 generation {fenced}",
                config.region, request.generation
            )));
        }
        let outcome = inner.store.create(&config).await.map_err(storage_error)?;
        tracing::info!(data_node = %inner.id_label(), region = %config.region, ?outcome, "create region");
        Ok(())
    }

    /// Legacy synchronous deletion: **unsafe for long deletions** (a caller that times out
    /// and retries may see success while the first call still runs). Not serialised with
    /// maintain tasks: it is the design Shoal replaces, kept for old callers.
    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        inner.admit(epoch).await?;
        // Legacy semantics, kept on purpose: no region guard and no task id, and a region
        // that is no longer in the namespace counts as deleted. A retry arriving while an
        // earlier call is still removing the detached region's bytes answers success at
        // once: the ghost-task hazard (tests/tests/ghost_task.rs). Shoal's ConfigNode never
        // calls this; it deletes through `submit_task`.
        if inner
            .store
            .size(region)
            .await
            .map_err(storage_error)?
            .is_none()
        {
            tracing::info!(data_node = %inner.id_label(), region = %region,
                "legacy synchronous deletion: region not found, success");
            return Ok(());
        }
        let outcome = inner.store.delete(region).await.map_err(storage_error)?;
        tracing::info!(data_node = %inner.id_label(), region = %region, ?outcome,
            "legacy synchronous region deletion");
        Ok(())
    }

    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.inner.ensure_running()?;
        self.inner
            .store
            .append(region, &bytes)
            .await
            .map_err(storage_error)
    }

    /// Accepts a task once it is journaled; a resubmitted id is accepted and runs nothing.
    /// Abort: stale epoch, the id used for a different task (`Rejected`). Retry
    /// (`Unreachable`): the journal write failed and halted the node; the restarted node
    /// holds the task or not, and a resubmit of the same id settles it either way.
    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        let mut writer = inner.writer.lock().await;
        inner.admit_locked(&mut writer, epoch).await?;
        let admission = inner.table().admission(task.task_id, &task.kind);
        match admission {
            Admission::Duplicate => {
                // The first submission's record may still be on its way to the disk.
                let staged = writer.staged_so_far();
                drop(writer);
                inner.durable(&staged).await?;
                return Ok(SubmitOutcome::Accepted);
            }
            Admission::Acked => {
                return Ok(SubmitOutcome::Rejected(format!(
                    "{} finished and was acknowledged; a task id never runs twice",
                    task.task_id
                )));
            }
            Admission::Conflict(existing) => {
                return Ok(SubmitOutcome::Rejected(format!(
                    "{} was already used for {} of {}",
                    task.task_id,
                    existing.name(),
                    existing.region()
                )));
            }
            Admission::New => {}
        }
        // Journal before starting and before answering: an Accepted task survives a crash.
        let accepted = JournalRecord::TaskAccepted {
            task_id: task.task_id,
            kind: StoredTaskKind::from(&task.kind),
        };
        let pending = inner.stage(&mut writer, &accepted).await?;
        // Queue on the region now, so a create issued after Accepted runs after this task.
        let ticket = inner.guards.ticket(task.kind.region());
        // In the table at once (a resubmission is a duplicate, and status calls answer
        // Processing, which promises nothing); the runner starts it only once the record is
        // durable, and Accepted is answered only then.
        inner
            .table()
            .insert_running(task.task_id, task.kind.clone(), inner.rt.clock.now_ms());
        runner::spawn_task(
            inner,
            task.task_id,
            task.kind.clone(),
            ticket,
            Some(pending.clone()),
        );
        // Released before the disk wait: concurrent submissions share one flush.
        drop(writer);
        inner.durable(&pending).await?;
        tracing::info!(data_node = %inner.id_label(), task_id = %task.task_id,
            region = %task.kind.region(), kind = task.kind.name(), epoch = %epoch,
            "maintain task accepted");
        Ok(SubmitOutcome::Accepted)
    }

    /// Long-polls: returns as soon as the task is terminal (woken by the runner, not by
    /// polling), or `Processing` when `wait` ends on the clock. Unknown id: `NotExist`.
    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        let inner = &self.inner;
        let clock = &inner.rt.clock;
        let deadline = wait.map(|wait| clock.now_ms().saturating_add(wait.as_millis() as u64));
        loop {
            inner.ensure_running()?;
            // Listen before reading: a finish between the read and the wait must wake us.
            let listener = inner.task_changed.listen();
            let status = inner.table().status(task_id);
            if status != TaskStatus::Processing {
                return Ok(status);
            }
            let now = clock.now_ms();
            let Some(deadline) = deadline.filter(|deadline| *deadline > now) else {
                return Ok(status);
            };
            let timeout = clock.sleep(Duration::from_millis(deadline - now));
            future::or(listener, future::or(timeout, inner.wait_halt())).await;
        }
    }

    /// Forgets a terminal result (journaled). Unknown id: success (idempotent). Abort
    /// (`Refused`): the task is still running.
    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        let mut writer = inner.writer.lock().await;
        inner.admit_locked(&mut writer, epoch).await?;
        let found = inner.table().ack_target(task_id);
        match found {
            AckFound::Unknown => {
                // An ack of the same id may have just staged its record.
                let staged = writer.staged_so_far();
                drop(writer);
                inner.durable(&staged).await
            }
            AckFound::Running => Err(ApiError::Refused(format!(
                "{task_id} is still running; only a terminal task can be acked"
            ))),
            AckFound::Terminal => {
                let forgotten = JournalRecord::TaskForgotten {
                    task_id,
                    reason: ForgetReason::Acked,
                };
                let pending = inner.stage(&mut writer, &forgotten).await?;
                {
                    // Forgotten at once, so the table matches the journal's order: only the
                    // coordinator that acks can tell, and it is answered after the disk.
                    let mut table = inner.table();
                    table.remove(task_id);
                    // A duplicate of its submission arriving late must not run it again.
                    table.remember_acked(task_id, inner.rt.clock.now_ms());
                }
                // Released before the disk wait: concurrent acks share one flush.
                drop(writer);
                inner.durable(&pending).await?;
                let mut writer = inner.writer.lock().await;
                inner.enforce_retention(&mut writer).await;
                Ok(())
            }
        }
    }

    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        inner.admit(epoch).await?;
        let configs = inner.store.list().await.map_err(storage_error)?;
        let mut regions = Vec::with_capacity(configs.len());
        for config in configs {
            // A region deleted between list and size is simply no longer reported.
            if let Some(bytes) = inner
                .store
                .size(config.region)
                .await
                .map_err(storage_error)?
            {
                regions.push(RegionReport {
                    region: config.region,
                    bytes,
                });
            }
        }
        let mut running_tasks: Vec<TaskId> = inner
            .table()
            .running()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        running_tasks.sort();
        Ok(HeartbeatReport {
            regions,
            running_tasks,
        })
    }

    /// Read-only: answers from whatever the replica holds now. Abort (`Refused`): no such
    /// region here. Reads are not fenced by epoch: they change nothing.
    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        let inner = &self.inner;
        inner.ensure_running()?;
        let max_len = (max_len as usize).min(MAX_READ_BYTES);
        let region_len = inner
            .store
            .size(region)
            .await
            .map_err(storage_error)?
            .ok_or_else(|| storage_error(StorageError::RegionNotFound(region)))?;
        let data = inner
            .store
            .read_at(region, offset, max_len)
            .await
            .map_err(storage_error)?;
        Ok(RegionChunk {
            offset,
            crc32c: crc32c::crc32c(&data),
            region_len: region_len.max(offset + data.len() as u64),
            data,
        })
    }

    /// Read-only. Abort (`Refused`): no such region here.
    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.inner.ensure_running()?;
        super::copy::local_digest(self.inner.store.as_ref(), region, len)
            .await
            .map_err(storage_error)
    }
}

/// Largest chunk one `read_region` answers (a larger request gets this much).
pub const MAX_READ_BYTES: usize = 8 << 20;
