//! Simulated disks: core's in-memory stores wrapped with seeded failures, latency and crash
//! semantics, and observed by the checker.
//!
//! - [`SimLogStore`]: the ConfigNodes' shared consensus log. Appends stay in a volatile tail
//!   until `sync` covers them; a crash of the appending ConfigNode loses that tail, and a new
//!   leader's `claim_term` truncates it (as Raft overwrites an uncommitted suffix).
//! - [`SimConsensus`]: a ConfigNode's [`LocalConsensus`], which hands the log the plan it is
//!   about to append, so the checker applies durable entries without decoding each one.
//! - [`SimJournal`]: a DataNode's task journal with staging (group commit): a record staged
//!   is durable only once a sync covered it; a crash loses the staged records no sync covered.
//! - [`SimRegionStore`]: a DataNode's regions over [`MemRegionStore`] (create and append are
//!   durable when they return; a crash mid-delete leaves the rest of the bytes in trash).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use shoal_core::consensus::{
    Consensus, ConsensusError, LeadershipWatch, LocalConsensus, StateCell,
};
use shoal_core::model::{DataNodeId, Epoch, RegionId};
use shoal_core::plan::{ConfigPlan, PlanCode};
use shoal_core::runtime::Clock;
use shoal_core::state::ApplyResult;
use shoal_core::storage::{
    CreateOutcome, DeleteOutcome, LogEntry, LogStore, MemRegionStore, MemTaskJournal, RegionConfig,
    RegionStore, Staged, StorageError, TaskJournal,
};

use crate::executor::{SimClock, SimRng};
use crate::observe::Observer;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Failure rates (per million operations) and latencies of the simulated disks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskFaults {
    /// A log append, sync, term claim or compaction fails.
    pub log: u32,
    /// A journal append, load or rewrite fails.
    pub journal: u32,
    /// A region store operation fails.
    pub store: u32,
    /// Largest latency of one disk operation (ms); 0 makes operations instant.
    pub max_latency_ms: u64,
}

/// Faults aimed at a point of the log's history rather than drawn per operation.
#[derive(Debug, Default)]
struct Armed {
    /// The next sync that would make an entry of this kind durable fails instead (the
    /// entry stays appended: a commit of unknown outcome).
    fail_commit: Option<PlanCode>,
    /// Once an entry of this kind is durable, its proposer crashes (down for the ms given).
    crash_after: Option<(PlanCode, u64)>,
    /// A crash due now: (the term of the ConfigNode to crash, ms it stays down).
    crash_due: Option<(u64, u64)>,
}

/// The seeded source of disk faults, shared by every simulated disk of a run.
#[derive(Clone)]
pub struct Disks {
    rng: Arc<Mutex<SimRng>>,
    faults: Arc<Mutex<DiskFaults>>,
    armed: Arc<Mutex<Armed>>,
    clock: SimClock,
    observer: Observer,
}

impl Disks {
    /// Disks failing as `faults` says, on `clock`, reporting to `observer`.
    pub fn new(rng: SimRng, faults: DiskFaults, clock: SimClock, observer: Observer) -> Self {
        Self {
            rng: Arc::new(Mutex::new(rng)),
            faults: Arc::new(Mutex::new(faults)),
            armed: Arc::default(),
            clock,
            observer,
        }
    }

    /// Makes the next commit of `kind` fail (its sync errs; the entry stays appended, so
    /// it may still become durable: its outcome is unknown to the proposer).
    pub fn fail_next_commit(&self, kind: PlanCode) {
        lock(&self.armed).fail_commit = Some(kind);
    }

    /// Crashes the proposer of the next durable entry of `kind`, right after it is durable,
    /// for `down_ms`.
    pub fn crash_after_commit(&self, kind: PlanCode, down_ms: u64) {
        lock(&self.armed).crash_after = Some((kind, down_ms));
    }

    /// Disarms every targeted fault (the faults stop).
    pub fn disarm(&self) {
        *lock(&self.armed) = Armed::default();
    }

    /// A crash [`Disks::crash_after_commit`] made due: (the term of the ConfigNode to crash,
    /// ms it stays down).
    pub fn take_crash_due(&self) -> Option<(u64, u64)> {
        lock(&self.armed).crash_due.take()
    }

    /// Changes the fault rates (e.g. to none once the faults stop).
    pub fn set_faults(&self, faults: DiskFaults) {
        *lock(&self.faults) = faults;
    }

    fn fail(
        &self,
        rate: impl Fn(&DiskFaults) -> u32,
        what: &'static str,
    ) -> Result<(), StorageError> {
        let rate = rate(&lock(&self.faults));
        if lock(&self.rng).chance(rate) {
            self.observer.count_fault(what);
            return Err(StorageError::Injected(format!("{what} failed (simulated)")));
        }
        Ok(())
    }

    /// Fails with the log's rate (the snapshot store shares the log's disk).
    pub fn fail_log(&self, what: &'static str) -> Result<(), StorageError> {
        self.fail(|f| f.log, what)
    }

    async fn latency(&self) {
        let max = lock(&self.faults).max_latency_ms;
        if max == 0 {
            return;
        }
        let ms = lock(&self.rng).below(max + 1);
        if ms > 0 {
            self.clock.sleep(Duration::from_millis(ms)).await;
        }
    }
}

/// An appended entry not yet synced, with the plan its proposer encoded into it (if the
/// proposer said; see [`SimConsensus`]).
#[derive(Debug)]
struct TailEntry {
    entry: LogEntry,
    plan: Option<ConfigPlan>,
}

#[derive(Debug, Default)]
struct LogInner {
    term: u64,
    first_index: u64,
    durable: Vec<LogEntry>,
    /// Appended, not yet synced: lost on a crash of the appender.
    tail: Vec<TailEntry>,
    /// The plan the next `append` encodes, handed over by [`SimConsensus::propose`].
    proposing: Option<(u64, ConfigPlan)>,
}

impl LogInner {
    fn last_index(&self) -> u64 {
        self.first_index + (self.durable.len() + self.tail.len()) as u64 - 1
    }
}

/// The ConfigNodes' consensus log. Clones share it.
#[derive(Clone)]
pub struct SimLogStore {
    inner: Arc<Mutex<LogInner>>,
    disks: Disks,
}

impl SimLogStore {
    /// An empty log whose first entry will have index `first_index` (after a snapshot).
    pub fn new(disks: Disks, first_index: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LogInner {
                first_index: first_index.max(1),
                ..Default::default()
            })),
            disks,
        }
    }

    /// A crash of the ConfigNode leading at `term`: its unsynced appends are lost.
    pub fn crash_appender(&self, term: u64) -> usize {
        let mut inner = lock(&self.inner);
        let before = inner.tail.len();
        inner.tail.retain(|e| e.entry.term != term);
        before - inner.tail.len()
    }

    /// The plan the next append at `term` encodes (replacing any left over).
    fn propose_next(&self, term: u64, plan: Option<ConfigPlan>) {
        lock(&self.inner).proposing = plan.map(|p| (term, p));
    }
}

#[async_trait]
impl LogStore for SimLogStore {
    fn current_term(&self) -> u64 {
        lock(&self.inner).term
    }

    async fn claim_term(&self, term: u64) -> Result<(), StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.log, "log claim_term")?;
        let mut inner = lock(&self.inner);
        if inner.term >= term {
            return Err(StorageError::Fenced {
                term,
                current: inner.term,
            });
        }
        inner.term = term;
        // The new leader starts from what is durable: an uncommitted tail is overwritten.
        inner.tail.clear();
        Ok(())
    }

    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError> {
        // Taken first: whatever happens to this append, the plan belongs to it alone.
        let plan = lock(&self.inner)
            .proposing
            .take()
            .and_then(|(t, plan)| (t == term).then_some(plan));
        self.disks.fail(|f| f.log, "log append")?;
        let mut inner = lock(&self.inner);
        if term < inner.term {
            return Err(StorageError::Fenced {
                term,
                current: inner.term,
            });
        }
        let index = inner.last_index() + 1;
        inner.tail.push(TailEntry {
            entry: LogEntry {
                index,
                term,
                payload: payload.to_vec(),
            },
            plan,
        });
        Ok(index)
    }

    async fn sync(&self, index: u64) -> Result<(), StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.log, "log sync")?;
        let synced: Vec<TailEntry> = {
            let mut inner = lock(&self.inner);
            let durable_last = inner.first_index + inner.durable.len() as u64 - 1;
            if index <= durable_last {
                return Ok(());
            }
            let covered = inner
                .tail
                .iter()
                .take_while(|e| e.entry.index <= index)
                .count();
            let aimed = lock(&self.disks.armed).fail_commit;
            if let Some(kind) = aimed
                && inner.tail[..covered]
                    .iter()
                    .any(|e| plan_code(&e.entry) == Some(kind))
            {
                lock(&self.disks.armed).fail_commit = None;
                drop(inner);
                self.disks.observer.count_fault("log sync (aimed)");
                self.disks
                    .observer
                    .trace(|| format!("aimed: the sync of a {kind:?} entry fails"));
                return Err(StorageError::Injected(format!(
                    "sync of a {kind:?} entry failed (simulated)"
                )));
            }
            let last_covered = inner
                .tail
                .get(covered.wrapping_sub(1))
                .map(|e| e.entry.index);
            if last_covered != Some(index) {
                // The entry was truncated by a newer leader's term claim.
                return Err(StorageError::Fenced {
                    term: 0,
                    current: inner.term,
                });
            }
            let moved: Vec<TailEntry> = inner.tail.drain(..covered).collect();
            inner.durable.extend(moved.iter().map(|e| e.entry.clone()));
            moved
        };
        for synced in synced {
            let code = plan_code(&synced.entry);
            {
                let mut armed = lock(&self.disks.armed);
                if let Some((kind, down_ms)) = armed.crash_after
                    && code == Some(kind)
                {
                    armed.crash_after = None;
                    armed.crash_due = Some((synced.entry.term, down_ms));
                }
            }
            self.disks
                .observer
                .log_entry_durable(&synced.entry, synced.plan);
        }
        Ok(())
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        // Reads see only what is durable (replay after a crash or a term claim).
        let inner = lock(&self.inner);
        let skip = from.saturating_sub(inner.first_index) as usize;
        Ok(inner.durable.iter().skip(skip).take(max).cloned().collect())
    }

    fn first_index(&self) -> u64 {
        lock(&self.inner).first_index
    }

    fn last_index(&self) -> u64 {
        lock(&self.inner).last_index()
    }

    async fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.log, "log compact")?;
        let mut inner = lock(&self.inner);
        if index < inner.first_index {
            return Ok(());
        }
        let drop = ((index - inner.first_index + 1) as usize).min(inner.durable.len());
        inner.durable.drain(..drop);
        inner.first_index += drop as u64;
        Ok(())
    }
}

/// The kind of plan a log entry holds, from its header (no decoding).
fn plan_code(entry: &LogEntry) -> Option<PlanCode> {
    let code = entry.payload.get(..2)?;
    PlanCode::from_u16(u16::from_be_bytes([code[0], code[1]]))
}

/// A ConfigNode's consensus: [`LocalConsensus`] over the shared [`SimLogStore`], telling the
/// log which plan each proposal appends. The checker then applies that plan when the entry
/// becomes durable instead of decoding its bytes (it still decodes one entry of every shape
/// per run and compares, so the codec stays checked; see [`crate::observe`]).
pub struct SimConsensus {
    inner: Arc<LocalConsensus>,
    log: SimLogStore,
}

impl SimConsensus {
    /// `inner`, which appends to `log`.
    pub fn new(inner: Arc<LocalConsensus>, log: SimLogStore) -> Self {
        Self { inner, log }
    }
}

#[async_trait]
impl Consensus for SimConsensus {
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError> {
        // `LocalConsensus::propose` appends in its first poll, before it awaits anything, and
        // one thread runs the world: no other append can come in between.
        self.log.propose_next(epoch.0, Some(plan.clone()));
        let result = self.inner.propose(epoch, plan).await;
        // Nothing left over if the proposal ended before appending.
        self.log.propose_next(epoch.0, None);
        // Every commit is a scheduling point, even on an instant disk: other tasks (and a
        // crash aimed right after this commit) may come before the proposer acts on it, and
        // a loop of commits can never keep one poll from returning.
        futures_lite::future::yield_now().await;
        result
    }

    fn state(&self) -> Arc<StateCell> {
        self.inner.state()
    }

    fn leadership(&self) -> LeadershipWatch {
        self.inner.leadership()
    }

    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError> {
        self.inner.claim_epoch_above(seen).await
    }

    async fn failed(&self) -> ConsensusError {
        self.inner.failed().await
    }
}

/// A DataNode's task journal over a [`MemTaskJournal`] shared by its incarnations.
///
/// It stages as the file journal does: `stage` puts a record in order (no I/O), `sync` is a
/// disk write (latency, the journal's failure rate) and a scheduling point, so other tasks,
/// and a crash, can come between staging and durability. One sync makes every staged record
/// durable; the checker sees records when they become durable, in order. A failed sync (or
/// append) poisons the journal until it is opened again, and its records may or may not have
/// landed (a seeded coin). Opening it again (`load`, which only `DataNode::open` calls) is
/// the restart after a crash or a halt: the records staged by the previous incarnation that
/// no sync covered are lost.
#[derive(Clone)]
pub struct SimJournal {
    node: DataNodeId,
    inner: MemTaskJournal,
    /// Why the open journal is poisoned (shared by the handles of one incarnation).
    poisoned: Arc<Mutex<Option<StorageError>>>,
    disks: Disks,
}

impl SimJournal {
    /// DataNode `node`'s journal.
    pub fn new(node: DataNodeId, disks: Disks) -> Self {
        Self {
            node,
            inner: MemTaskJournal::new(),
            poisoned: Arc::default(),
            disks,
        }
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &*lock(&self.poisoned) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn poison(&self, cause: StorageError) -> StorageError {
        let error = StorageError::Unavailable(format!(
            "task journal of DataNode {} is poisoned until reopened: {cause}",
            self.node
        ));
        *lock(&self.poisoned) = Some(error.clone());
        error
    }

    /// Reports records that just became durable to the checker, in order.
    fn observe(&self, durable: Vec<Vec<u8>>) {
        for record in &durable {
            self.disks.observer.journal_append(self.node, record);
        }
    }

    /// One flush of every staged record, covering `ticket`: fails at the journal's rate
    /// (poisoning; whether the write landed is a seeded coin).
    fn flush(&self, ticket: u64, what: &'static str) -> Result<(), StorageError> {
        if let Err(cause) = self.disks.fail(|f| f.journal, what) {
            if lock(&self.disks.rng).chance(500_000) {
                self.observe(self.inner.flush_staged());
            }
            return Err(self.poison(cause));
        }
        let durable = self.inner.sync_now(ticket)?;
        self.observe(durable);
        Ok(())
    }
}

#[async_trait]
impl TaskJournal for SimJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        self.check_usable()?;
        self.disks.latency().await;
        self.check_usable()?;
        let Staged::Ticket(ticket) = self.inner.stage(record)? else {
            unreachable!("the memory journal stages");
        };
        self.flush(ticket, "journal append")
    }

    fn stage(&self, record: Vec<u8>) -> Result<Staged, StorageError> {
        self.check_usable()?;
        self.inner.stage(record)
    }

    async fn sync(&self, ticket: u64) -> Result<(), StorageError> {
        self.disks.latency().await;
        // A scheduling point even on an instant disk: others stage meanwhile (and share
        // this flush), and a crash can come before the record is durable.
        futures_lite::future::yield_now().await;
        // Durable before a later failure stays durable: answer that first.
        if self.inner.is_durable(ticket)? {
            return Ok(());
        }
        self.check_usable()?;
        self.flush(ticket, "journal sync")
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        // Only `DataNode::open` loads: the previous incarnation is gone (crashed or halted),
        // and with it whatever it staged that no sync covered.
        let lost = self.inner.crash();
        if lost > 0 {
            self.disks.observer.trace(|| {
                format!(
                    "journal {}: {lost} staged records lost in the crash",
                    self.node
                )
            });
        }
        *lock(&self.poisoned) = None;
        self.disks.latency().await;
        self.disks.fail(|f| f.journal, "journal load")?;
        self.inner.load().await
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        self.check_usable()?;
        self.disks.latency().await;
        self.check_usable()?;
        // Fails before replacing anything (retryable; the staged records stay staged).
        self.disks.fail(|f| f.journal, "journal rewrite")?;
        // What is staged becomes durable first, so none is lost with the old contents.
        self.observe(self.inner.flush_staged());
        self.inner.rewrite(records).await
    }
}

/// A DataNode's regions over a [`MemRegionStore`] shared by its incarnations.
#[derive(Clone)]
pub struct SimRegionStore {
    node: DataNodeId,
    /// The durable replicas (what the checker inspects).
    pub mem: MemRegionStore,
    disks: Disks,
}

/// Bytes of the workload per byte the simulated stores hold: a load of `n` bytes writes
/// `n / BYTE_UNIT` (rounded up), and stores delete at `1 / BYTE_UNIT` of the scenario's rate
/// in chunks of `1 / BYTE_UNIT` of 16 KiB, so a deletion takes the same virtual time and the
/// same steps as with every byte while the run copies sixteen times fewer.
pub const BYTE_UNIT: u64 = 16;

impl SimRegionStore {
    /// DataNode `node`'s store, deleting `delete_rate` workload bytes/s (0: instantly).
    pub fn new(node: DataNodeId, clock: Arc<dyn Clock>, delete_rate: u64, disks: Disks) -> Self {
        Self {
            node,
            mem: MemRegionStore::new(clock)
                .with_delete_rate(delete_rate.div_ceil(BYTE_UNIT))
                .with_delete_chunk(16 * 1024 / BYTE_UNIT),
            disks,
        }
    }
}

#[async_trait]
impl RegionStore for SimRegionStore {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.store, "store create")?;
        let outcome = self.mem.create(config).await?;
        self.disks
            .observer
            .region_created(self.node, config, outcome);
        Ok(outcome)
    }

    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.store, "store append")?;
        self.mem.append(region, bytes).await
    }

    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.store, "store set_peers")?;
        self.mem.set_peers(region, peers).await
    }

    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        self.disks.latency().await;
        if let Err(e) = self.disks.fail(|f| f.store, "store delete") {
            self.disks
                .observer
                .region_delete_result(self.node, region, None);
            return Err(e);
        }
        let outcome = self.mem.delete(region).await;
        self.disks
            .observer
            .region_delete_result(self.node, region, outcome.as_ref().ok().copied());
        outcome
    }

    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        self.disks.fail(|f| f.store, "store list")?;
        self.mem.list().await
    }

    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        self.disks.fail(|f| f.store, "store size")?;
        self.mem.size(region).await
    }

    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        self.disks.fail(|f| f.store, "store read")?;
        self.mem.read_at(region, offset, max_len).await
    }

    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        self.disks.latency().await;
        self.disks.fail(|f| f.store, "store write")?;
        self.mem.write_at(region, offset, bytes).await
    }
}
