//! Storage seams: everything Shoal keeps durably goes through one of these traits.
//!
//! In-memory twins live in [`mem`]; file-system implementations live in `shoal-storage-fs`.

pub mod mem;
pub mod mem_journal;
pub mod mem_region;

#[cfg(any(test, feature = "testing"))]
pub mod faulty;

pub use mem_journal::MemTaskJournal;
pub use mem_region::MemRegionStore;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::model::{DataNodeId, DatabaseName, RegionId};

/// A storage failure. One enum for every storage trait in core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum StorageError {
    /// An I/O operation failed.
    #[error("{op} failed on {path}: {message}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: String,
        message: String,
    },
    /// Stored bytes are damaged where they should be whole (not a torn tail).
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corrupt {
        file: String,
        /// Byte offset of the bad record.
        offset: u64,
        reason: String,
    },
    /// A log append by a leader whose term was superseded.
    #[error("log is fenced: append at term {term}, current term {current}")]
    Fenced {
        term: u64,
        /// The term in force.
        current: u64,
    },
    /// A region exists with a different configuration.
    #[error("region {region} exists with a different configuration")]
    RegionConflict { region: RegionId },
    /// The region does not exist (for operations other than delete, where missing is fine).
    #[error("region {0} does not exist")]
    RegionNotFound(RegionId),
    /// The store was closed or poisoned by an earlier unrecoverable error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// An injected fault (tests only; retryable).
    #[error("injected fault: {0}")]
    Injected(String),
}

impl StorageError {
    /// Whether trying the same operation again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Io { .. } | StorageError::Injected(_) => true,
            StorageError::Corrupt { .. }
            | StorageError::Fenced { .. }
            | StorageError::RegionConflict { .. }
            | StorageError::RegionNotFound(_)
            | StorageError::Unavailable(_) => false,
        }
    }
}

/// One consensus-log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct LogEntry {
    /// Position in the log, from 1.
    pub index: u64,
    /// Term (epoch) of the leader that appended it.
    pub term: u64,
    pub payload: Vec<u8>,
}

/// The ConfigNode's consensus log. Appends are fenced by term so a deposed leader cannot
/// add entries once a newer leader has claimed a higher term.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// The highest term ever claimed (durable).
    fn current_term(&self) -> u64;
    /// Durably raises the term to `term`. Fails with [`StorageError::Fenced`] if the current
    /// term is already `>= term`.
    async fn claim_term(&self, term: u64) -> Result<(), StorageError>;
    /// Appends `payload` as leader of `term` and returns its index. The entry is not durable
    /// until [`LogStore::sync`] covers it. Fenced if `term` is below the current term.
    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError>;
    /// Resolves once every entry up to `index` is durable. Concurrent callers may share one
    /// flush (group commit).
    async fn sync(&self, index: u64) -> Result<(), StorageError>;
    /// Entries from `from` (inclusive), at most `max` of them.
    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError>;
    /// The term of the entry at `index`, if the log holds it.
    fn term_at(&self, index: u64) -> Option<u64> {
        self.read(index, 1)
            .ok()?
            .into_iter()
            .next()
            .filter(|entry| entry.index == index)
            .map(|entry| entry.term)
    }
    /// Index of the first retained entry (1 when nothing was compacted).
    fn first_index(&self) -> u64;
    /// Index of the last appended entry (0 when empty).
    fn last_index(&self) -> u64;
    /// Discards entries up to and including `index` (they are covered by a snapshot). An
    /// `index` past the last entry (a replica that installed a newer snapshot) empties the log
    /// and the next append gets `index + 1`.
    async fn compact(&self, index: u64) -> Result<(), StorageError>;
    /// Discards every entry after `index` (a replicated log's conflicting suffix), durably:
    /// once this returns, no discarded entry reappears after a restart, and the next append
    /// gets index `index + 1`. Buffered entries up to `index` stay buffered. Only a claimed
    /// term fences appends afterwards: the discarded entries' terms no longer do, so a Raft
    /// follower can replace them with a leader's entries of a lower term. `index` below the first retained entry minus one is refused. A log that cannot
    /// truncate (the single-node logs never need to) answers [`StorageError::Unavailable`].
    async fn truncate_after(&self, index: u64) -> Result<(), StorageError> {
        Err(StorageError::Unavailable(format!(
            "this log cannot truncate after {index}"
        )))
    }
}

/// Durable snapshots of the ConfigNode state.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Durably stores `bytes` as the snapshot covering the log up to `last_index`.
    async fn save(&self, last_index: u64, bytes: Vec<u8>) -> Result<(), StorageError>;
    /// The newest snapshot that is whole, if any.
    async fn load_latest(&self) -> Result<Option<Vec<u8>>, StorageError>;
}

/// What a region replica is: its group, database and consensus peer membership.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct RegionConfig {
    pub region: RegionId,
    pub database: DatabaseName,
    /// The group's consensus peers as this replica knows them.
    pub peers: Vec<DataNodeId>,
}

/// Whether a create made the region or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOutcome {
    /// The region was created.
    Created,
    /// The region already existed with the same configuration.
    AlreadyExists,
}

/// Whether a delete removed data or found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum DeleteOutcome {
    /// The region existed; this many bytes were removed.
    Deleted { bytes: u64 },
    /// Nothing was there (a retried deletion converges here).
    NotFound,
}

/// A DataNode's region replicas and their data.
#[async_trait]
pub trait RegionStore: Send + Sync + 'static {
    /// Creates a replica. Same region and config: `AlreadyExists`. Different config:
    /// [`StorageError::RegionConflict`].
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError>;
    /// Appends bytes to a replica's data; returns its new size.
    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError>;
    /// Replaces the replica's stored peer membership.
    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError>;
    /// Deletes a replica and all its data, honouring the store's delete rate limit. Resolves
    /// only when no byte of the region remains. Missing region: `NotFound` (success).
    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError>;
    /// Whether `delete` takes a replica's membership out together with its data, at one
    /// atomic point (a directory rename), so the group can never count on a replica whose
    /// data is going: a deletion then needs no `set_peers(region, &[])` first.
    fn delete_detaches_membership(&self) -> bool {
        false
    }
    /// Every replica, in region order.
    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError>;
    /// Bytes of data a replica holds, or `None` if it does not exist.
    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError>;
    /// Up to `max_len` bytes of a replica's data from `offset` (fewer at the end; none at or
    /// past it). Missing region: [`StorageError::RegionNotFound`]. Used to copy a replica to
    /// another DataNode and to checksum it; stores that cannot read data refuse.
    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        let _ = (offset, max_len);
        Err(StorageError::Unavailable(format!(
            "this region store cannot read data of {region}"
        )))
    }
    /// Writes `bytes` at `offset` of a replica's data, discarding whatever lay at or past
    /// `offset` first (a copy resumes or restarts there); returns the new size. Takes the
    /// bytes by value: a copy hands over each chunk it received without another copy. Not durable
    /// until [`RegionStore::sync`]. `offset` past the end is refused. Missing region:
    /// [`StorageError::RegionNotFound`].
    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        let _ = (offset, bytes);
        Err(StorageError::Unavailable(format!(
            "this region store cannot write data of {region} at an offset"
        )))
    }
    /// Makes every byte written to a replica's data durable.
    async fn sync(&self, region: RegionId) -> Result<(), StorageError> {
        let _ = region;
        Ok(())
    }
}

/// What [`TaskJournal::stage`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Staged {
    /// Staged in order; durable once `sync(ticket)` returns `Ok`.
    Ticket(u64),
    /// This journal does not stage: the record, to be appended instead.
    Unsupported(Vec<u8>),
}

/// The DataNode's durable journal of task records (opaque bytes owned by the DataNode).
///
/// Storage that failed once is poisoned until reopened: a failed `append`, or a `rewrite`
/// that fails after it began replacing the contents, fails that call and every later
/// `append` and `rewrite` with [`StorageError::Unavailable`] (never retryable), because what
/// the failed call left behind is unknown. The failed call's own record may or may not be
/// there after a reopen; every record acknowledged before it is. `load` still reads the
/// acknowledged records. Only opening the journal again clears the poisoning.
///
/// A journal may also *stage* records ([`TaskJournal::stage`]): put them in the journal's order
/// at once, without I/O, and make them durable later with [`TaskJournal::sync`], so that the
/// records of concurrent callers share one flush (group commit). A staged record counts as
/// acknowledged only once a `sync` covering it returned `Ok`.
#[async_trait]
pub trait TaskJournal: Send + Sync + 'static {
    /// Durably appends one record. Any failure poisons the journal.
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError>;
    /// Puts `record` after every record appended or staged before it, without waiting for
    /// the disk, and returns the ticket a [`TaskJournal::sync`] waits for. A journal that
    /// cannot stage hands the record back ([`Staged::Unsupported`]); the caller then
    /// [`TaskJournal::append`]s it. Fails (without staging) on a poisoned journal.
    fn stage(&self, record: Vec<u8>) -> Result<Staged, StorageError> {
        Ok(Staged::Unsupported(record))
    }
    /// Resolves once the record staged with `ticket`, and every record before it, is durable.
    /// Concurrent callers share one flush. A failed flush poisons the journal and fails every
    /// waiter it covered.
    async fn sync(&self, ticket: u64) -> Result<(), StorageError> {
        let _ = ticket;
        Ok(())
    }
    /// Every acknowledged record, in append order.
    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError>;
    /// Atomically replaces the journal's contents with `records` (compaction). A failure
    /// before anything was replaced is retryable and leaves the journal as it was; a failure
    /// after that poisons it.
    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError>;
}
