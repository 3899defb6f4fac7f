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
//!
//! A journal that failed once is poisoned until reopened, so a failed journal write stops
//! the node: it halts (every call answers `Unreachable`, which callers wait out), logs one
//! ERROR line, and [`DataNode::wait_failed`] tells the embedding process to exit so that a
//! supervisor restarts it. The restart reopens the journal and resumes every task journaled
//! as accepted but not finished.

mod copy;
mod fencing;
mod guard;
pub mod journal;
mod runner;
mod service;
mod tasks;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use event_listener::Event;

use self::fencing::{EpochCheck, EpochFence};
use self::guard::RegionGuards;
use self::journal::{ForgetReason, JournalRecord, JournalWriter, Pending, ReplayError};
use self::tasks::TaskTable;
use crate::api::ApiError;
use crate::confignode::clients::DataNodeClients;
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
    /// Acked task ids remembered (a late duplicate submission is refused, never run) and
    /// region fences kept (a create sent before a deletion and delivered after it is
    /// refused), at most each; the oldest go first. Both also expire with
    /// `result_retention`.
    pub max_markers: usize,
    /// Unacked terminal results older than this are evicted (`None`: no age limit). Ages of
    /// results restored at start-up count from the start-up.
    pub result_retention: Option<Duration>,
    /// The journal is compacted once it holds more than this many records and at least
    /// twice as many as the live tasks need.
    pub compact_threshold: usize,
    /// Bytes a `CopyRegion` task asks its source for per read.
    pub copy_chunk_bytes: u32,
    /// Chunk reads a `CopyRegion` task keeps in flight.
    pub copy_window: usize,
    /// A copy made durable at least every this many bytes (and at its end).
    pub copy_checkpoint_bytes: u64,
    /// How long a `CopyRegion` task keeps retrying a source that does not answer (or the
    /// peer transport to appear at start-up) before it fails; the ConfigNode then resubmits
    /// under a new id and the copy resumes where it stopped.
    pub copy_stall_timeout: Duration,
}

impl Default for DataNodeConfig {
    fn default() -> Self {
        Self {
            max_retained_results: 10_000,
            max_markers: 100_000,
            result_retention: Some(Duration::from_secs(24 * 60 * 60)),
            compact_threshold: 1024,
            copy_chunk_bytes: 1 << 20,
            copy_window: 16,
            copy_checkpoint_bytes: 1 << 30,
            copy_stall_timeout: Duration::from_secs(60),
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
    /// A journal write failed and poisoned the journal: the node halted. Opening it again
    /// (a process restart) reopens the journal and resumes unfinished tasks.
    #[error("task journal write failed; the DataNode halted and must be restarted: {0}")]
    JournalFailed(StorageError),
}

impl DataNodeError {
    /// Whether opening again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            DataNodeError::Storage(error) => error.is_retryable(),
            DataNodeError::Journal(_) => false,
            // Reopening the journal is exactly what clears its poisoning.
            DataNodeError::JournalFailed(_) => true,
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
    writer: crate::util::FifoMutex<JournalWriter>,
    /// Terminal statuses staged in the journal but not yet in the table (their durability
    /// is awaited without the writer). A compaction, built from the table, waits for zero.
    finishing: AtomicUsize,
    /// Notified when `finishing` drops.
    finish_applied: Event,
    guards: RegionGuards,
    /// Notified whenever a task turns terminal (long-polls wait on it).
    task_changed: Event,
    halted: AtomicBool,
    /// Notified on halt, deliberate or after a failure.
    halt: Event,
    /// The journal failure that halted the node, if one did.
    failure: OnceLock<StorageError>,
    /// This node's id once the ConfigNode assigned it (for log lines).
    id: std::sync::OnceLock<crate::model::DataNodeId>,
    /// How this node reaches other DataNodes (a copy pulls from its source through it).
    peers: OnceLock<Arc<dyn DataNodeClients>>,
    /// Notified when `peers` is set.
    peers_set: Event,
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
        let replayed = tasks::replay(&records, rt.clock.now_ms())?;
        let inner = Arc::new(Inner {
            rt,
            store,
            config,
            fence: EpochFence::new(replayed.highest_epoch),
            table: Mutex::new(replayed.table),
            writer: crate::util::FifoMutex::new(JournalWriter::new(journal, records.len())),
            finishing: AtomicUsize::new(0),
            finish_applied: Event::new(),
            guards: RegionGuards::default(),
            task_changed: Event::new(),
            halted: AtomicBool::new(false),
            halt: Event::new(),
            failure: OnceLock::new(),
            id: OnceLock::new(),
            peers: OnceLock::new(),
            peers_set: Event::new(),
        });
        {
            let mut writer = inner.writer.lock().await;
            inner.enforce_retention(&mut writer).await;
        }
        if let Some(error) = inner.failure.get() {
            return Err(DataNodeError::JournalFailed(error.clone()));
        }
        let unfinished = inner.table().running();
        for (task_id, kind) in unfinished {
            tracing::info!(data_node = %inner.id_label(), task_id = %task_id,
                region = %kind.region(), kind = kind.name(),
                "resuming maintain task found unfinished at start-up");
            // Tickets are taken in acceptance order, so resumed tasks keep their queue order.
            let ticket = inner.guards.ticket(kind.region());
            runner::spawn_task(&inner, task_id, kind, ticket, None);
        }
        Ok(DataNode { inner })
    }

    /// Stops every background task at its next await point and refuses further calls,
    /// journaling nothing, as a crash would. A DataNode opened again over the same stores
    /// resumes what was unfinished. Tests use it to simulate a process kill.
    pub fn halt(&self) {
        self.inner.halt();
    }

    /// Resolves once a journal failure has halted this node, with that failure. The
    /// embedding process should then exit (non-zero) so that a restart reopens the journal.
    /// A deliberate [`DataNode::halt`] does not resolve it.
    pub async fn wait_failed(&self) -> DataNodeError {
        loop {
            if let Some(error) = self.inner.failure.get() {
                return DataNodeError::JournalFailed(error.clone());
            }
            let listener = self.inner.halt.listen();
            if let Some(error) = self.inner.failure.get() {
                return DataNodeError::JournalFailed(error.clone());
            }
            listener.await;
        }
    }

    /// Records the id the ConfigNode registered this node under; task log lines carry it
    /// from then on. Later calls are ignored (an id never changes).
    pub fn set_id(&self, id: crate::model::DataNodeId) {
        let _ = self.inner.id.set(id);
    }

    /// Gives this node its transport to other DataNodes (copy tasks pull their source
    /// through it; a copy resumed at start-up waits for it). Later calls are ignored.
    pub fn set_peer_clients(&self, peers: Arc<dyn DataNodeClients>) {
        if self.inner.peers.set(peers).is_ok() {
            self.inner.peers_set.notify(usize::MAX);
        }
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

    /// The replicas this DataNode holds and their bytes, read from its store (metrics).
    pub async fn region_usage(&self) -> Result<RegionUsage, StorageError> {
        let configs = self.inner.store.list().await?;
        let mut usage = RegionUsage::default();
        for config in configs {
            // A region deleted between list and size is simply not counted.
            if let Some(bytes) = self.inner.store.size(config.region).await? {
                usage.regions += 1;
                usage.bytes += bytes;
            }
        }
        Ok(usage)
    }
}

/// What [`DataNode::region_usage`] counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionUsage {
    /// Replicas held.
    pub regions: u64,
    /// Their data, in bytes.
    pub bytes: u64,
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

    fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
        self.halt.notify(usize::MAX);
        self.task_changed.notify(usize::MAX);
    }

    /// Halts the node because its journal failed (`error`), once; logs it at ERROR.
    fn fail(&self, error: StorageError) {
        if self.failure.set(error.clone()).is_ok() {
            tracing::error!(data_node = %self.id_label(), %error,
                "task journal write failed; DataNode halted until restarted");
        }
        self.halt();
    }

    /// `Unreachable` while halted: callers wait and retry, and reach the restarted node.
    fn ensure_running(&self) -> Result<(), ApiError> {
        if self.is_halted() {
            return Err(self.halted_error());
        }
        Ok(())
    }

    fn halted_error(&self) -> ApiError {
        ApiError::Unreachable(match self.failure.get() {
            Some(error) => format!("datanode halted: task journal failed: {error}"),
            None => "datanode halted".into(),
        })
    }

    /// Durably appends `record`, or halts the node: a journal that failed once is poisoned
    /// until reopened, and whether the failed record reached the disk is unknown, so nothing
    /// may act on it here. A restart settles it from what the journal holds.
    async fn journal(
        &self,
        writer: &mut JournalWriter,
        record: &JournalRecord,
    ) -> Result<(), ApiError> {
        // Halted means "as if crashed": nothing more is journaled.
        self.ensure_running()?;
        writer.append(record).await.map_err(|error| {
            self.fail(error);
            self.halted_error()
        })
    }

    /// Puts `record` in the journal's order; its durability is awaited with
    /// [`Inner::durable`] after the writer is released. A failure halts the node, as in
    /// [`Inner::journal`].
    async fn stage(
        &self,
        writer: &mut JournalWriter,
        record: &JournalRecord,
    ) -> Result<Pending, ApiError> {
        self.ensure_running()?;
        writer.stage(record).await.map_err(|error| {
            self.fail(error);
            self.halted_error()
        })
    }

    /// Waits until `pending` is durable; a failed flush halts the node.
    async fn durable(&self, pending: &Pending) -> Result<(), ApiError> {
        pending.durable().await.map_err(|error| {
            self.fail(error);
            self.halted_error()
        })?;
        // A node halted meanwhile acts on nothing more, as if it had crashed.
        self.ensure_running()
    }

    /// Resolves once no staged terminal status is still waiting to enter the table.
    async fn finishes_applied(&self) {
        loop {
            if self.finishing.load(Ordering::SeqCst) == 0 {
                return;
            }
            let listener = self.finish_applied.listen();
            if self.finishing.load(Ordering::SeqCst) == 0 {
                return;
            }
            listener.await;
        }
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
                self.journal(writer, &JournalRecord::EpochSeen { epoch })
                    .await?;
                let previous = self.fence.highest();
                self.fence.raise(epoch);
                // Every jump is visible: a fence raised by a stray call explains why a
                // leader's requests are refused until it claims a higher epoch.
                tracing::info!(data_node = %self.id_label(), from = %previous, to = %epoch,
                    "DataNode's leader epoch rose");
                Ok(())
            }
        }
    }

    /// Evicts terminal results beyond the retention bound, then compacts the journal if it
    /// has grown. A compaction that fails before replacing anything is logged and tried
    /// again later (the journal is still correct); any other journal failure halts the node.
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
            if self.journal(writer, &record).await.is_err() {
                return;
            }
            self.table().remove(task_id);
            tracing::info!(data_node = %self.id_label(), task_id = %task_id,
                "evicted unacked task result (retention bound)");
        }
        let live = {
            let mut table = self.table();
            table.prune_markers(
                self.rt.clock.now_ms(),
                self.config.max_markers,
                self.config.result_retention,
            );
            1 + table.len() + table.terminal_len() + table.markers_len()
        };
        if !self.is_halted() && writer.wants_compaction(live, self.config.compact_threshold) {
            // The table is built into the new journal: every staged terminal status must be
            // in it first (none can be staged meanwhile: this caller holds the writer).
            self.finishes_applied().await;
            if self.is_halted() {
                return;
            }
            let records = self.table().compacted_records(self.fence.highest());
            match writer.rewrite(records).await {
                Ok(()) => {}
                Err(error) if error.is_retryable() => {
                    tracing::warn!(%error, "task journal compaction failed; will retry later");
                }
                Err(error) => self.fail(error),
            }
        }
    }
}
