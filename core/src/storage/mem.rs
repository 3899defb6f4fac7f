//! In-memory twins of the storage traits, for tests and the `storage-mem` build.

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{LogEntry, LogStore, SnapshotStore, StorageError};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct MemLogInner {
    term: u64,
    first_index: u64,
    entries: Vec<LogEntry>,
}

/// An in-memory [`LogStore`]. Clones share one log, so two ConfigNodes in a test can take
/// turns leading over the same entries (a simulated leader change).
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<MemLogInner>>,
}

impl MemLogStore {
    /// An empty log.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(MemLogInner {
                first_index: 1,
                ..Default::default()
            })),
        }
    }
}

#[async_trait]
impl LogStore for MemLogStore {
    fn current_term(&self) -> u64 {
        lock(&self.inner).term
    }

    async fn claim_term(&self, term: u64) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if inner.term >= term {
            return Err(StorageError::Fenced {
                term,
                current: inner.term,
            });
        }
        inner.term = term;
        Ok(())
    }

    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError> {
        let mut inner = lock(&self.inner);
        if term < inner.term {
            return Err(StorageError::Fenced {
                term,
                current: inner.term,
            });
        }
        let index = inner.first_index + inner.entries.len() as u64;
        inner.entries.push(LogEntry {
            index,
            term,
            payload: payload.to_vec(),
        });
        Ok(index)
    }

    async fn sync(&self, _index: u64) -> Result<(), StorageError> {
        Ok(())
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        let inner = lock(&self.inner);
        let skip = from.saturating_sub(inner.first_index) as usize;
        Ok(inner.entries.iter().skip(skip).take(max).cloned().collect())
    }

    fn first_index(&self) -> u64 {
        lock(&self.inner).first_index
    }

    fn last_index(&self) -> u64 {
        let inner = lock(&self.inner);
        inner.first_index + inner.entries.len() as u64 - 1
    }

    async fn compact(&self, index: u64) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if index < inner.first_index {
            return Ok(());
        }
        if index >= inner.first_index + inner.entries.len() as u64 {
            inner.entries.clear();
            inner.first_index = index + 1;
            return Ok(());
        }
        let drop = ((index - inner.first_index + 1) as usize).min(inner.entries.len());
        inner.entries.drain(..drop);
        inner.first_index += drop as u64;
        Ok(())
    }

    async fn truncate_after(&self, index: u64) -> Result<(), StorageError> {
        let mut inner = lock(&self.inner);
        if index + 1 < inner.first_index {
            return Err(StorageError::Unavailable(format!(
                "cannot truncate after {index}: entries before {} are compacted",
                inner.first_index
            )));
        }
        let keep = (index + 1 - inner.first_index) as usize;
        inner.entries.truncate(keep);
        Ok(())
    }
}

/// The newest snapshot: its last index and bytes.
type StoredSnapshot = Option<(u64, Vec<u8>)>;

/// An in-memory [`SnapshotStore`]; clones share the stored snapshots.
#[derive(Debug, Clone, Default)]
pub struct MemSnapshotStore {
    latest: Arc<Mutex<StoredSnapshot>>,
}

impl MemSnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for MemSnapshotStore {
    async fn save(&self, last_index: u64, bytes: Vec<u8>) -> Result<(), StorageError> {
        *lock(&self.latest) = Some((last_index, bytes));
        Ok(())
    }

    async fn load_latest(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(lock(&self.latest).as_ref().map(|(_, bytes)| bytes.clone()))
    }
}
