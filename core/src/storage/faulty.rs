//! Fault-injecting wrappers around the storage traits (tests and the `testing` feature).
//!
//! A test injects a fault through a wrapper and asserts the outcome: deletions slowed on
//! the clock, the next N operations of a kind failed, deletions held until released, and a
//! count of deletions executed per region so "exactly one deletion ran" can be asserted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use event_listener::Event;

use super::{
    CreateOutcome, DeleteOutcome, RegionConfig, RegionStore, Staged, StorageError, TaskJournal,
};
use crate::model::{DataNodeId, RegionId};
use crate::runtime::Clock;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An operation of [`RegionStore`], for targeting injected failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum StoreOp {
    /// [`RegionStore::create`].
    Create,
    /// [`RegionStore::append`] and [`RegionStore::write_at`].
    Append,
    /// [`RegionStore::set_peers`].
    SetPeers,
    /// [`RegionStore::delete`].
    Delete,
    /// [`RegionStore::list`].
    List,
    /// [`RegionStore::size`].
    Size,
    /// [`RegionStore::read_at`].
    Read,
}

#[derive(Default)]
struct FaultState {
    fail_next: BTreeMap<StoreOp, u32>,
    delete_delay: Duration,
    delete_calls: BTreeMap<RegionId, u64>,
    deletions_executed: BTreeMap<RegionId, u64>,
}

struct Shared {
    state: Mutex<FaultState>,
    held: AtomicBool,
    waiting: AtomicUsize,
    released: Event,
}

/// Wraps a [`RegionStore`] and injects faults into it. Clones share the faults and counters.
#[derive(Clone)]
pub struct FaultyRegionStore {
    inner: Arc<dyn RegionStore>,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FaultyRegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyRegionStore").finish_non_exhaustive()
    }
}

/// Decrements the waiting count even when a held delete is cancelled.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FaultyRegionStore {
    /// Wraps `inner`; `clock` paces injected slow-downs.
    pub fn new(inner: Arc<dyn RegionStore>, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            clock,
            shared: Arc::new(Shared {
                state: Mutex::new(FaultState::default()),
                held: AtomicBool::new(false),
                waiting: AtomicUsize::new(0),
                released: Event::new(),
            }),
        }
    }

    /// Fails the next `count` calls of `op` with [`StorageError::Injected`].
    pub fn fail_next(&self, op: StoreOp, count: u32) {
        lock(&self.shared.state).fail_next.insert(op, count);
    }

    /// Every delete waits `delay` on the clock before it starts removing data.
    pub fn slow_deletes(&self, delay: Duration) {
        lock(&self.shared.state).delete_delay = delay;
    }

    /// Deletes that arrive from now on wait (before touching data) until
    /// [`FaultyRegionStore::release_deletes`].
    pub fn hold_deletes(&self) {
        self.shared.held.store(true, Ordering::SeqCst);
    }

    /// Lets held deletes (and later ones) proceed.
    pub fn release_deletes(&self) {
        self.shared.held.store(false, Ordering::SeqCst);
        self.shared.released.notify(usize::MAX);
    }

    /// How many deletes are waiting on a hold right now.
    pub fn held_deletes(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// How many times `delete` was called for `region` (including failed or cancelled ones).
    pub fn delete_calls(&self, region: RegionId) -> u64 {
        lock(&self.shared.state)
            .delete_calls
            .get(&region)
            .copied()
            .unwrap_or(0)
    }

    /// How many deletions of `region` reached the wrapped store and completed without error
    /// (whether they found data or not).
    pub fn deletions_executed(&self, region: RegionId) -> u64 {
        lock(&self.shared.state)
            .deletions_executed
            .get(&region)
            .copied()
            .unwrap_or(0)
    }

    fn take_fault(&self, op: StoreOp) -> Result<(), StorageError> {
        let mut state = lock(&self.shared.state);
        match state.fail_next.get_mut(&op) {
            Some(left) if *left > 0 => {
                *left -= 1;
                Err(StorageError::Injected(format!("{op:?} failed by test")))
            }
            _ => Ok(()),
        }
    }

    async fn wait_while_held(&self) {
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = WaitingGuard(&self.shared.waiting);
        loop {
            if !self.shared.held.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.shared.released.listen();
            // Re-check after registering: a release in between must not be missed.
            if !self.shared.held.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

#[async_trait]
impl RegionStore for FaultyRegionStore {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        self.take_fault(StoreOp::Create)?;
        self.inner.create(config).await
    }

    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        self.take_fault(StoreOp::Append)?;
        self.inner.append(region, bytes).await
    }

    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        self.take_fault(StoreOp::SetPeers)?;
        self.inner.set_peers(region, peers).await
    }

    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        *lock(&self.shared.state)
            .delete_calls
            .entry(region)
            .or_default() += 1;
        self.take_fault(StoreOp::Delete)?;
        if self.shared.held.load(Ordering::SeqCst) {
            self.wait_while_held().await;
        }
        let delay = lock(&self.shared.state).delete_delay;
        if !delay.is_zero() {
            self.clock.sleep(delay).await;
        }
        let outcome = self.inner.delete(region).await?;
        *lock(&self.shared.state)
            .deletions_executed
            .entry(region)
            .or_default() += 1;
        Ok(outcome)
    }

    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        self.take_fault(StoreOp::List)?;
        self.inner.list().await
    }

    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        self.take_fault(StoreOp::Size)?;
        self.inner.size(region).await
    }

    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        self.take_fault(StoreOp::Read)?;
        self.inner.read_at(region, offset, max_len).await
    }

    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        self.take_fault(StoreOp::Append)?;
        self.inner.write_at(region, offset, bytes).await
    }

    async fn sync(&self, region: RegionId) -> Result<(), StorageError> {
        self.inner.sync(region).await
    }
}

/// Wraps a [`TaskJournal`] and fails its appends, syncs or rewrites on demand, keeping the
/// [`TaskJournal`] contract of the file journal: a failed append or sync, or a rewrite that
/// fails after replacing the contents, poisons this open journal (that call and every later
/// stage, sync, append and rewrite fail with [`StorageError::Unavailable`]; `load` still
/// reads) until [`FaultyTaskJournal::reopen`]. Staging is forwarded to the inner journal;
/// the records a failed sync covered stay staged there, so a crash of the inner journal
/// (`MemTaskJournal::crash`, which a test's restart does) loses them. Clones share the armed
/// faults and the poisoning.
#[derive(Clone)]
pub struct FaultyTaskJournal {
    inner: Arc<dyn TaskJournal>,
    faults: Arc<JournalFaults>,
    poisoned: Arc<Mutex<Option<StorageError>>>,
}

/// Faults armed on a journal; shared by every reopened handle.
#[derive(Default)]
struct JournalFaults {
    appends: AtomicUsize,
    rewrites: AtomicUsize,
    rewrites_after_replace: AtomicUsize,
}

impl std::fmt::Debug for FaultyTaskJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTaskJournal")
            .field("poisoned", &self.is_poisoned())
            .finish_non_exhaustive()
    }
}

fn take(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl FaultyTaskJournal {
    /// Wraps `inner` with no faults armed.
    pub fn new(inner: Arc<dyn TaskJournal>) -> Self {
        Self {
            inner,
            faults: Arc::default(),
            poisoned: Arc::default(),
        }
    }

    /// The same journal opened again: the same records and armed faults, and no poisoning
    /// (a handle poisoned before stays poisoned).
    pub fn reopen(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            faults: self.faults.clone(),
            poisoned: Arc::default(),
        }
    }

    /// Fails the next `count` appends or syncs without writing their records; each failure
    /// poisons the handle it happened on.
    pub fn fail_next_appends(&self, count: usize) {
        self.faults.appends.store(count, Ordering::SeqCst);
    }

    /// Fails the next `count` rewrites before they replace anything, with the retryable
    /// [`StorageError::Injected`]: the journal keeps its contents and stays usable.
    pub fn fail_next_rewrites(&self, count: usize) {
        self.faults.rewrites.store(count, Ordering::SeqCst);
    }

    /// The next `count` rewrites replace the contents, then fail and poison the handle (as
    /// the file journal does when the directory fsync after its rename fails).
    pub fn fail_next_rewrites_after_replace(&self, count: usize) {
        self.faults
            .rewrites_after_replace
            .store(count, Ordering::SeqCst);
    }

    /// Whether this handle is poisoned.
    pub fn is_poisoned(&self) -> bool {
        lock(&self.poisoned).is_some()
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &*lock(&self.poisoned) {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    fn poison(&self, cause: &str) -> StorageError {
        let error = StorageError::Unavailable(format!(
            "task journal (faulty) is poisoned until reopened: {cause}"
        ));
        *lock(&self.poisoned) = Some(error.clone());
        error
    }
}

#[async_trait]
impl TaskJournal for FaultyTaskJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        self.check_usable()?;
        if take(&self.faults.appends) {
            return Err(self.poison("journal append failed by test"));
        }
        match self.inner.append(record).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.poison(&error.to_string())),
        }
    }

    fn stage(&self, record: Vec<u8>) -> Result<Staged, StorageError> {
        self.check_usable()?;
        self.inner.stage(record)
    }

    async fn sync(&self, ticket: u64) -> Result<(), StorageError> {
        self.check_usable()?;
        // A sync is the append's disk write: the same injected failures apply to it.
        if take(&self.faults.appends) {
            return Err(self.poison("journal sync failed by test"));
        }
        match self.inner.sync(ticket).await {
            Ok(()) => Ok(()),
            Err(error) => Err(self.poison(&error.to_string())),
        }
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        self.inner.load().await
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        self.check_usable()?;
        if take(&self.faults.rewrites) {
            return Err(StorageError::Injected(
                "journal rewrite failed by test".into(),
            ));
        }
        self.inner.rewrite(records).await?;
        if take(&self.faults.rewrites_after_replace) {
            return Err(self.poison("journal rewrite failed by test after replacing"));
        }
        Ok(())
    }
}
