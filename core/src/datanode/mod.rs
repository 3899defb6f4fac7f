//! The DataNode's logic: region create/delete against a [`RegionStore`], and the async
//! maintain-task protocol (DESIGN.md, "The DataNode task protocol").
//!
//! - `service`: [`DataNode`] implementing [`crate::api::DataNodeApi`].
//! - `tasks`: the task-result map (dedup by id, terminal results until acked or evicted).
//! - `runner`: runs a maintain task in the background and records its outcome.
//! - `guard`: one maintain operation per region at a time, FIFO.
//! - [`journal`]: durable records (explicit numeric codes) and their replay at start-up.
//! - `fencing`: the highest leader epoch seen; lower epochs are refused.
//!
//! Durability order: a raised epoch is journaled before the request that carried it acts; a
//! task is journaled as accepted before it starts and before `Accepted` is returned; a
//! terminal status is visible to `task_result` only once its record is journaled.

mod fencing;
mod guard;
pub mod journal;
mod runner;
mod service;
mod tasks;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::Event;

use self::fencing::{EpochCheck, EpochFence};
use self::guard::RegionGuards;
use self::journal::{ForgetReason, JournalRecord, JournalWriter, ReplayError};
use self::tasks::TaskTable;
use crate::api::ApiError;
use crate::model::Epoch;
use crate::runtime::Runtime;
use crate::storage::{RegionStore, StorageError, TaskJournal};

/// Tunables of a DataNode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataNodeConfig {
    /// Unacked terminal results kept at most; beyond it the oldest is evicted first. A
    /// coordinator polling an evicted id sees `NotExist` and resubmits (under the same id,
    /// which then runs again; every maintain kind is idempotent).
    pub max_retained_results: usize,
    /// Unacked terminal results older than this are evicted (`None`: no age limit). Ages of
    /// results restored at start-up count from the start-up.
    pub result_retention: Option<Duration>,
    /// The journal is compacted once it holds more than this many records and at least
    /// twice as many as the live tasks need.
    pub compact_threshold: usize,
    /// Longest pause between attempts to journal a finished task's result.
    pub max_finish_retry_backoff: Duration,
}

impl Default for DataNodeConfig {
    fn default() -> Self {
        Self {
            max_retained_results: 10_000,
            result_retention: Some(Duration::from_secs(24 * 60 * 60)),
            compact_threshold: 1024,
            max_finish_retry_backoff: Duration::from_secs(5),
        }
    }
}

/// Why a DataNode could not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataNodeError {
    /// The journal or region store failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The journal holds a record that cannot be decoded or replayed. Never skipped: an
    /// operator must look at it.
    #[error("task journal: {0}")]
    Journal(#[from] ReplayError),
}

impl DataNodeError {
    /// Whether opening again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DataNodeError::Storage(error) => error.is_retryable(),
            DataNodeError::Journal(_) => false,
        }
    }
}

/// How many tasks the result map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCounts {
    /// Accepted and not yet terminal.
    pub running: usize,
    /// Terminal, not yet acked or evicted.
    pub terminal: usize,
}

/// A DataNode: regions plus the maintain-task protocol. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct DataNode {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DataNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataNode")
            .field("highest_epoch", &self.inner.fence.highest())
            .field("tasks", &self.task_counts())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    rt: Runtime,
    store: Arc<dyn RegionStore>,
    config: DataNodeConfig,
    fence: EpochFence,
    /// The task-result map. A std mutex, never held across an await.
    table: Mutex<TaskTable>,
    /// Serialises every journal write with the table change it records, so the journal
    /// order is the order the table saw, and a compaction never races an append.
    writer: async_lock::Mutex<JournalWriter>,
    guards: RegionGuards,
    /// Notified whenever a task turns terminal (long-polls wait on it).
    task_changed: Event,
    halted: AtomicBool,
    halt: Event,
    /// This node's id once the ConfigNode assigned it (for log lines).
    id: std::sync::OnceLock<crate::model::DataNodeId>,
}

impl DataNode {
    /// Opens a DataNode over `store` and `journal`: restores the highest epoch seen and
    /// every journaled result, then resumes each accepted-but-unfinished task in its
    /// original order. An undecodable journal record is an error, never skipped.
    pub async fn open(
        rt: Runtime,
        store: Arc<dyn RegionStore>,
        journal: Arc<dyn TaskJournal>,
        config: DataNodeConfig,
    ) -> Result<DataNode, DataNodeError> {
        let records = journal.load().await?;
        let replayed = journal::replay(&records, rt.clock.now_ms())?;
        let inner = Arc::new(Inner {
            rt,
            store,
            config,
            fence: EpochFence::new(replayed.highest_epoch),
            table: Mutex::new(replayed.table),
            writer: async_lock::Mutex::new(JournalWriter::new(journal, records.len())),
            guards: RegionGuards::default(),
            task_changed: Event::new(),
            halted: AtomicBool::new(false),
            halt: Event::new(),
            id: std::sync::OnceLock::new(),
        });
        {
            let mut writer = inner.writer.lock().await;
            inner.enforce_retention(&mut writer).await;
        }
        let unfinished = inner.table().running();
        for (task_id, kind) in unfinished {
            tracing::info!(task_id = %task_id, region = %kind.region(), kind = kind.name(),
                "resuming maintain task found unfinished at start-up");
            // Tickets are taken in acceptance order, so resumed tasks keep their queue order.
            let ticket = inner.guards.ticket(kind.region());
            runner::spawn_task(&inner, task_id, kind, ticket);
        }
        Ok(DataNode { inner })
    }

    /// Stops every background task at its next await point and refuses further calls,
    /// journaling nothing, as a crash would. A DataNode opened again over the same stores
    /// resumes what was unfinished. Tests use it to simulate a process kill.
    pub fn halt(&self) {
        self.inner.halted.store(true, Ordering::SeqCst);
        self.inner.halt.notify(usize::MAX);
        self.inner.task_changed.notify(usize::MAX);
    }

    /// Records the id the ConfigNode registered this node under; task log lines carry it
    /// from then on. Later calls are ignored (an id never changes).
    pub fn set_id(&self, id: crate::model::DataNodeId) {
        let _ = self.inner.id.set(id);
    }

    /// The id set by [`DataNode::set_id`], if any.
    pub fn id(&self) -> Option<crate::model::DataNodeId> {
        self.inner.id.get().copied()
    }

    /// The highest leader epoch this DataNode has seen.
    pub fn highest_epoch(&self) -> Epoch {
        self.inner.fence.highest()
    }

    /// How many tasks the result map holds.
    pub fn task_counts(&self) -> TaskCounts {
        let table = self.inner.table();
        TaskCounts {
            running: table.len() - table.terminal_len(),
            terminal: table.terminal_len(),
        }
    }
}

impl Inner {
    /// This node's id for log lines (`?` until registered).
    pub(crate) fn id_label(&self) -> String {
        self.id
            .get()
            .map_or_else(|| "?".to_string(), ToString::to_string)
    }

    fn table(&self) -> MutexGuard<'_, TaskTable> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_halted(&self) -> bool {
        self.halted.load(Ordering::SeqCst)
    }

    fn ensure_running(&self) -> Result<(), ApiError> {
        if self.is_halted() {
            return Err(ApiError::Unreachable("datanode halted".into()));
        }
        Ok(())
    }

    /// Resolves once [`DataNode::halt`] has been called.
    async fn wait_halt(&self) {
        loop {
            if self.is_halted() {
                return;
            }
            let listener = self.halt.listen();
            if self.is_halted() {
                return;
            }
            listener.await;
        }
    }

    /// Admits a request's `epoch`; a raise is journaled before the request acts.
    async fn admit(&self, epoch: Epoch) -> Result<(), ApiError> {
        match self.fence.check(epoch) {
            EpochCheck::Current => Ok(()),
            EpochCheck::Stale { seen } => Err(ApiError::StaleLeader {
                request: epoch,
                seen,
            }),
            EpochCheck::Newer => {
                let mut writer = self.writer.lock().await;
                self.admit_locked(&mut writer, epoch).await
            }
        }
    }

    /// [`Inner::admit`] for a caller already holding the journal writer, so the check and
    /// what the caller journals next are one step.
    async fn admit_locked(&self, writer: &mut JournalWriter, epoch: Epoch) -> Result<(), ApiError> {
        match self.fence.check(epoch) {
            EpochCheck::Current => Ok(()),
            EpochCheck::Stale { seen } => Err(ApiError::StaleLeader {
                request: epoch,
                seen,
            }),
            EpochCheck::Newer => {
                // Journal the raise first: after a restart a deposed leader must still be
                // refused.
                writer
                    .append(&JournalRecord::EpochSeen { epoch })
                    .await
                    .map_err(service::storage_error)?;
                self.fence.raise(epoch);
                tracing::info!(epoch = %epoch, "datanode saw a new leader epoch");
                Ok(())
            }
        }
    }

    /// Evicts terminal results beyond the retention bound, then compacts the journal if it
    /// has grown. Failures leave the journal as it was (still correct) and are logged.
    async fn enforce_retention(&self, writer: &mut JournalWriter) {
        let evict = self.table().over_retention(
            self.rt.clock.now_ms(),
            self.config.max_retained_results,
            self.config.result_retention,
        );
        for task_id in evict {
            let record = JournalRecord::TaskForgotten {
                task_id,
                reason: ForgetReason::Evicted,
            };
            if let Err(error) = writer.append(&record).await {
                tracing::warn!(task_id = %task_id, %error, "could not journal a result eviction");
                break;
            }
            self.table().remove(task_id);
            tracing::info!(task_id = %task_id, "evicted unacked task result (retention bound)");
        }
        let live = {
            let table = self.table();
            1 + table.len() + table.terminal_len()
        };
        if writer.wants_compaction(live, self.config.compact_threshold) {
            let records = self.table().compacted_records(self.fence.highest());
            if let Err(error) = writer.rewrite(records).await {
                tracing::warn!(%error, "task journal compaction failed; will retry later");
            }
        }
    }
}
