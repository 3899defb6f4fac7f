//! An in-memory [`RegionStore`] whose deletions are throttled on a [`Clock`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{CreateOutcome, DeleteOutcome, RegionConfig, RegionStore, StorageError};
use crate::model::{DataNodeId, RegionId};
use crate::runtime::Clock;

/// Bytes removed per step of a throttled deletion when no chunk size is configured.
pub const DEFAULT_DELETE_CHUNK_BYTES: u64 = 64 * 1024;

#[derive(Debug)]
struct Replica {
    config: RegionConfig,
    /// The replica's data (kept so that copies between DataNodes can be checksummed).
    data: Vec<u8>,
}

/// A replica detached from the namespace whose bytes are being removed.
#[derive(Debug)]
struct Trashed {
    region: RegionId,
    bytes: u64,
    /// A deletion is removing it now. Cleared if that deletion is dropped (a crash), so the
    /// next delete of the region takes the removal over.
    active: bool,
}

#[derive(Debug, Default)]
struct Inner {
    regions: BTreeMap<RegionId, Replica>,
    /// Detached replicas by generation (a region may be re-created while its old bytes are
    /// still being removed).
    trash: BTreeMap<u64, Trashed>,
    next_generation: u64,
}

/// Clears `active` on a trash entry if its deletion is dropped before it finishes.
struct ActiveDeletion<'a> {
    store: &'a MemRegionStore,
    generation: u64,
    finished: bool,
}

impl Drop for ActiveDeletion<'_> {
    fn drop(&mut self) {
        if !self.finished
            && let Some(entry) = lock(&self.store.inner).trash.get_mut(&self.generation)
        {
            entry.active = false;
        }
        self.store.removed.notify(usize::MAX);
    }
}

/// An in-memory [`RegionStore`]. Clones share the same replicas, so a test can "restart" a
/// DataNode by building a new one over a clone.
///
/// Deletions honour a rate limit in bytes per second, enforced through the [`Clock`] seam:
/// deleting `n` bytes at `rate` takes `n / rate` seconds on the clock, removed in chunks so
/// an interrupted deletion leaves part of the data behind (as a real engine would).
///
/// Like the file-system store (rename into a trash area, then remove), a deletion first
/// detaches the replica from the namespace: from then on `list` and `size` no longer see it,
/// while its bytes are still being removed. A concurrent `delete` of the same region waits
/// for the running one (the trait's promise: it resolves only when no byte remains); a
/// detached replica whose deletion was dropped (a crash) is taken over by the next delete.
#[derive(Clone)]
pub struct MemRegionStore {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<dyn Clock>,
    /// Bytes per second; `None` deletes instantly.
    delete_rate: Arc<Mutex<Option<u64>>>,
    chunk_bytes: u64,
    /// Notified when a detached replica is fully removed or its deletion is dropped.
    removed: Arc<event_listener::Event>,
}

impl std::fmt::Debug for MemRegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemRegionStore")
            .field("regions", &lock(&self.inner).regions.len())
            .field("delete_rate", &*lock(&self.delete_rate))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MemRegionStore {
    /// An empty store with unthrottled deletions; `clock` paces throttled ones.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Arc::default(),
            clock,
            delete_rate: Arc::new(Mutex::new(None)),
            chunk_bytes: DEFAULT_DELETE_CHUNK_BYTES,
            removed: Arc::new(event_listener::Event::new()),
        }
    }

    /// The same store with deletions limited to `bytes_per_sec` (0 means unthrottled).
    pub fn with_delete_rate(self, bytes_per_sec: u64) -> Self {
        self.set_delete_rate(bytes_per_sec);
        self
    }

    /// The same store removing at most `bytes` per throttled step (at least 1).
    pub fn with_delete_chunk(mut self, bytes: u64) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// Changes the delete rate limit for deletions that start or continue after this call
    /// (0 means unthrottled). Shared by every clone.
    pub fn set_delete_rate(&self, bytes_per_sec: u64) {
        *lock(&self.delete_rate) = (bytes_per_sec > 0).then_some(bytes_per_sec);
    }

    fn rate(&self) -> Option<u64> {
        *lock(&self.delete_rate)
    }

    /// Bytes held by live replicas plus bytes of detached replicas not yet removed: what a
    /// test asserts is zero once "no region data remains".
    pub fn total_bytes(&self) -> u64 {
        let inner = lock(&self.inner);
        inner
            .regions
            .values()
            .map(|r| r.data.len() as u64)
            .sum::<u64>()
            + inner.trash.values().map(|t| t.bytes).sum::<u64>()
    }

    /// Resolves once no running deletion of `region` is left (an abandoned one is not
    /// waited for: nobody is removing it).
    async fn wait_removed(&self, region: RegionId) {
        let busy = |store: &Self| {
            lock(&store.inner)
                .trash
                .values()
                .any(|t| t.region == region && t.active)
        };
        loop {
            if !busy(self) {
                return;
            }
            let listener = self.removed.listen();
            if !busy(self) {
                return;
            }
            listener.await;
        }
    }

    /// Regions with a detached replica whose removal has not finished (running or
    /// abandoned by a crash).
    pub fn regions_being_deleted(&self) -> Vec<RegionId> {
        let mut regions: Vec<RegionId> =
            lock(&self.inner).trash.values().map(|t| t.region).collect();
        regions.sort();
        regions.dedup();
        regions
    }
}

#[async_trait]
impl RegionStore for MemRegionStore {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        let mut inner = lock(&self.inner);
        match inner.regions.get(&config.region) {
            Some(existing) if existing.config == *config => Ok(CreateOutcome::AlreadyExists),
            Some(_) => Err(StorageError::RegionConflict {
                region: config.region,
            }),
            None => {
                inner.regions.insert(
                    config.region,
                    Replica {
                        config: config.clone(),
                        data: Vec::new(),
                    },
                );
                Ok(CreateOutcome::Created)
            }
        }
    }

    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        let mut inner = lock(&self.inner);
        let replica = inner
            .regions
            .get_mut(&region)
            .ok_or(StorageError::RegionNotFound(region))?;
        replica.data.extend_from_slice(bytes);
        Ok(replica.data.len() as u64)
    }

    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        let replica = inner
            .regions
            .get_mut(&region)
            .ok_or(StorageError::RegionNotFound(region))?;
        replica.config.peers = peers.to_vec();
        Ok(())
    }

    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        // Detach the live replica, or take over a removal a crash abandoned.
        let claimed = {
            let mut inner = lock(&self.inner);
            if let Some(replica) = inner.regions.remove(&region) {
                let generation = inner.next_generation;
                inner.next_generation += 1;
                inner.trash.insert(
                    generation,
                    Trashed {
                        region,
                        bytes: replica.data.len() as u64,
                        active: true,
                    },
                );
                Some(generation)
            } else {
                inner
                    .trash
                    .iter_mut()
                    .find(|(_, t)| t.region == region && !t.active)
                    .map(|(generation, entry)| {
                        entry.active = true;
                        *generation
                    })
            }
        };
        let Some(generation) = claimed else {
            // Nothing to claim: wait for a running removal of the region, if any.
            self.wait_removed(region).await;
            return Ok(DeleteOutcome::NotFound);
        };
        let mut guard = ActiveDeletion {
            store: self,
            generation,
            finished: false,
        };
        let start_ms = self.clock.now_ms();
        let mut removed: u64 = 0;
        loop {
            let remaining = {
                let mut inner = lock(&self.inner);
                let Some(entry) = inner.trash.get_mut(&generation) else {
                    guard.finished = true;
                    return Ok(DeleteOutcome::Deleted { bytes: removed });
                };
                if self.rate().is_none() || entry.bytes == 0 {
                    removed += entry.bytes;
                    inner.trash.remove(&generation);
                    guard.finished = true;
                    drop(inner);
                    self.removed.notify(usize::MAX);
                    return Ok(DeleteOutcome::Deleted { bytes: removed });
                }
                entry.bytes
            };
            let chunk = remaining.min(self.chunk_bytes);
            // Pace against the deletion's start rather than per chunk, so rounding to whole
            // milliseconds never accumulates: n bytes always take n / rate on the clock.
            if let Some(rate) = self.rate() {
                let due_ms = start_ms + (removed + chunk).saturating_mul(1000).div_ceil(rate);
                let now = self.clock.now_ms();
                if due_ms > now {
                    self.clock.sleep(Duration::from_millis(due_ms - now)).await;
                }
            }
            let mut inner = lock(&self.inner);
            if let Some(entry) = inner.trash.get_mut(&generation) {
                let taken = chunk.min(entry.bytes);
                entry.bytes -= taken;
                removed += taken;
            }
        }
    }

    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        Ok(lock(&self.inner)
            .regions
            .values()
            .map(|replica| replica.config.clone())
            .collect())
    }

    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        Ok(lock(&self.inner)
            .regions
            .get(&region)
            .map(|replica| replica.data.len() as u64))
    }

    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let inner = lock(&self.inner);
        let replica = inner
            .regions
            .get(&region)
            .ok_or(StorageError::RegionNotFound(region))?;
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(replica.data.len());
        let end = start.saturating_add(max_len).min(replica.data.len());
        Ok(replica.data[start..end].to_vec())
    }

    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        let mut inner = lock(&self.inner);
        let replica = inner
            .regions
            .get_mut(&region)
            .ok_or(StorageError::RegionNotFound(region))?;
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        if at > replica.data.len() {
            return Err(StorageError::Unavailable(format!(
                "write of {region} at {offset} is past its end ({})",
                replica.data.len()
            )));
        }
        replica.data.truncate(at);
        replica.data.extend_from_slice(&bytes);
        Ok(replica.data.len() as u64)
    }
}
