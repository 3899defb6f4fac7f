//! A node's knobs ([`RaftConfig`]) and durable stores ([`RaftStores`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_core::storage::{LogStore, SnapshotStore, StorageError};
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, FsStateFile, LogOptions};

use crate::error::RaftConsensusError;
use crate::meta::{MemMetaStore, MetaStore};
use crate::state_machine::snapshot_store_index;

/// Timing and snapshot knobs of a node.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range campaigns.
    pub election_timeout: (Duration, Duration),
    /// How long `propose` waits for its plan to commit and apply before answering
    /// `OutcomeUnknown`.
    pub propose_timeout: Duration,
    /// openraft builds a snapshot after this many applied entries.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot (so a slightly lagging follower needs no
    /// snapshot).
    pub keep_after_snapshot: u64,
}

impl Default for RaftConfig {
    /// Production timing. A follower of a dead leader campaigns after openraft's leader lease
    /// (`election_timeout.1`) plus its own election timeout, so these bound failover at about
    /// 0.75-1 s before the election itself (`cargo bench -p shoal-nodes --bench failover`).
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(250), Duration::from_millis(500)),
            propose_timeout: Duration::from_secs(10),
            snapshot_every: 10_000,
            keep_after_snapshot: 1_000,
        }
    }
}

impl RaftConfig {
    /// Short timeouts for in-process tests.
    pub fn for_tests() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(30),
            election_timeout: (Duration::from_millis(150), Duration::from_millis(300)),
            propose_timeout: Duration::from_secs(5),
            snapshot_every: 100_000,
            keep_after_snapshot: 0,
        }
    }

    pub(crate) fn openraft(&self) -> Result<Config, RaftConsensusError> {
        let config = Config {
            cluster_name: "shoal-confignodes".into(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| RaftConsensusError::Invalid(e.to_string()))
    }
}

/// A node's durable stores: the Raft log, its meta record (vote) and snapshots.
#[derive(Clone)]
pub struct RaftStores {
    /// The Raft log (entries, term-fenced appends, truncation, compaction).
    pub log: Arc<dyn LogStore>,
    /// Vote, purge point, committed id.
    pub meta: Arc<dyn MetaStore>,
    /// Raft snapshots.
    pub snapshots: Arc<dyn SnapshotStore>,
}

impl RaftStores {
    /// In-memory stores; clones of the returned value share contents (a "restart" reopens
    /// them).
    pub fn memory() -> Self {
        Self {
            log: Arc::new(MemLogStore::new()),
            meta: Arc::new(MemMetaStore::new()),
            snapshots: Arc::new(MemSnapshotStore::new()),
        }
    }

    /// The stores in `dir` on disk: `log/` (segment log), `vote` (meta record) and
    /// `snapshots/` (the newest 3 kept). Blocking.
    pub fn open_fs(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref();
        Ok(Self {
            log: Arc::new(FsLogStore::open(dir.join("log"), options)?),
            meta: Arc::new(FsStateFile::open(dir, "vote", *b"SHOALVOT")?),
            snapshots: Arc::new(FsSnapshotStore::open_with_format(
                dir.join("snapshots"),
                3,
                snapshot_store_index,
            )?),
        })
    }
}
