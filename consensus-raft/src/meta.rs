//! The small durable record of a Raft node besides its log: vote, last purged log id and a
//! (possibly stale) committed log id.
//!
//! It lives in a [`MetaStore`]: on disk an `FsStateFile` (replaced atomically, fsynced before
//! `save` returns), in tests a [`MemMetaStore`]. The vote must be durable before a node
//! answers a vote request; the committed id may lag (a lower committed id only means a
//! restarted node re-applies less on its own and waits for the leader for the rest).

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use openraft::vote::leader_id_std::CommittedLeaderId;
use serde::{Deserialize, Serialize};
use shoal_core::storage::StorageError;
use shoal_storage_fs::FsStateFile;

use crate::types::{LogId, NodeId, Vote};

/// Where a node keeps its [`RaftMeta`].
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Durably replaces the record; resolves once it would survive a crash.
    async fn save(&self, bytes: Vec<u8>) -> Result<(), StorageError>;
    /// The last saved record, `None` if none was ever saved.
    async fn load(&self) -> Result<Option<Vec<u8>>, StorageError>;
}

#[async_trait]
impl MetaStore for FsStateFile {
    async fn save(&self, bytes: Vec<u8>) -> Result<(), StorageError> {
        FsStateFile::save(self, bytes).await
    }

    async fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        FsStateFile::load(self).await
    }
}

/// In-memory [`MetaStore`]; clones share the record (a "restarted" node reopens it).
#[derive(Debug, Clone, Default)]
pub struct MemMetaStore {
    saved: Arc<Mutex<Option<Vec<u8>>>>,
}

impl MemMetaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl MetaStore for MemMetaStore {
    async fn save(&self, bytes: Vec<u8>) -> Result<(), StorageError> {
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        Ok(())
    }

    async fn load(&self) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A stored vote: `(term, voted_for, committed)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVote {
    /// The term.
    pub term: u64,
    /// The candidate voted for (or the leader, once committed).
    pub node: NodeId,
    /// Whether a quorum granted it.
    pub committed: bool,
}

/// A stored log id: `(term, index)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLogId {
    /// The term of the leader that wrote the entry.
    pub term: u64,
    /// Its Raft index.
    pub index: u64,
}

impl StoredLogId {
    /// From openraft's log id.
    pub fn from_log_id(id: &LogId) -> Self {
        Self {
            term: id.leader_id.term,
            index: id.index,
        }
    }

    /// To openraft's log id.
    pub fn to_log_id(self) -> LogId {
        LogId::new(CommittedLeaderId::new(self.term), self.index)
    }
}

/// Everything [`MetaStore`] holds, CBOR-encoded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    /// The last vote saved.
    pub vote: Option<StoredVote>,
    /// The last log id purged from the log (entries up to it are covered by a snapshot).
    pub purged: Option<StoredLogId>,
    /// A committed log id (a lower bound of the real one).
    pub committed: Option<StoredLogId>,
}

impl RaftMeta {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| StorageError::Unavailable(format!("encode raft meta: {e}")))?;
        Ok(out)
    }

    /// Decodes a record; damage is [`StorageError::Corrupt`].
    pub fn decode(bytes: &[u8]) -> Result<Self, StorageError> {
        let mut reader = bytes;
        let meta: RaftMeta =
            ciborium::from_reader(&mut reader).map_err(|e| StorageError::Corrupt {
                file: "raft meta".into(),
                offset: 0,
                reason: e.to_string(),
            })?;
        if !reader.is_empty() {
            return Err(StorageError::Corrupt {
                file: "raft meta".into(),
                offset: (bytes.len() - reader.len()) as u64,
                reason: "trailing bytes".into(),
            });
        }
        Ok(meta)
    }

    /// The vote as openraft's type.
    pub fn vote(&self) -> Option<Vote> {
        self.vote.map(|v| {
            if v.committed {
                Vote::new_committed(v.term, v.node)
            } else {
                Vote::new(v.term, v.node)
            }
        })
    }

    /// Records `vote`.
    pub fn set_vote(&mut self, vote: &Vote) {
        self.vote = Some(StoredVote {
            term: vote.leader_id.term,
            node: vote.leader_id.voted_for,
            committed: vote.committed,
        });
    }
}
