//! An in-memory [`TaskJournal`].

use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{StorageError, TaskJournal};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An in-memory [`TaskJournal`]. Clones share the records, so a test "restarts" a DataNode
/// by opening a new one over a clone of the same journal. It never fails, so it is never
/// poisoned; wrap it in `storage::faulty::FaultyTaskJournal` to inject failures.
#[derive(Debug, Clone, Default)]
pub struct MemTaskJournal {
    records: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl MemTaskJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records the journal holds now (compaction shrinks it).
    pub fn len(&self) -> usize {
        lock(&self.records).len()
    }

    /// Whether the journal holds no record.
    pub fn is_empty(&self) -> bool {
        lock(&self.records).is_empty()
    }
}

#[async_trait]
impl TaskJournal for MemTaskJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        lock(&self.records).push(record);
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        Ok(lock(&self.records).clone())
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        *lock(&self.records) = records;
        Ok(())
    }
}
