//! [`RaftLog`]: openraft's log storage over a core [`LogStore`] plus a [`MetaStore`].
//!
//! Index mapping: Raft index `i` is `LogStore` index `i + 1` (openraft's first entry is at 0,
//! core's logs start at 1). The record's term is the entry's term and its payload is
//! [`encode_entry`]. `append` buffers the entries (readable at once) and hands the flush to
//! one flusher task per log that calls `LogStore::sync` and then openraft's callback, in
//! append order, so group commit works across concurrent proposals. `truncate_after` first
//! drains the flusher (every earlier append's callback has fired), then cuts the log durably.
//! `purge` records the purged id in the meta record *before* segments are deleted, so a crash
//! in between is healed on the next open.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use shoal_core::consensus::ConsensusError;
use shoal_core::storage::{LogStore, StorageError};

use crate::failure::FailureCell;
use crate::meta::{MetaStore, RaftMeta, StoredLogId};
use crate::types::{Entry, LogId, ShoalRaft, Vote, decode_entry, encode_entry};

/// Entries read from the log per batch.
const READ_BATCH: usize = 4096;

enum FlushRequest {
    /// Make everything up to this `LogStore` index durable, then call back.
    Flush(u64, IOFlushed<ShoalRaft>),
    /// Answer once every earlier request is done.
    Barrier(futures_channel::oneshot::Sender<()>),
}

struct Shared {
    log: Arc<dyn LogStore>,
    meta_store: Arc<dyn MetaStore>,
    meta: Mutex<RaftMeta>,
    failure: FailureCell,
}

impl Shared {
    fn meta(&self) -> MutexGuard<'_, RaftMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Turns a storage failure into openraft's I/O error, recording it: openraft stops on any
    /// storage error, so the node's consensus has failed.
    fn fail(&self, error: StorageError) -> io::Error {
        self.failure.record(ConsensusError::Storage(error.clone()));
        io::Error::other(error)
    }

    fn read(&self, from: u64, to_exclusive: u64) -> Result<Vec<Entry>, io::Error> {
        let mut out = Vec::new();
        // Purged entries may still sit in a segment that is not wholly purged; never return
        // them.
        let purged_next = self.meta().purged.map_or(0, |p| p.index + 1);
        let mut next = from
            .max(self.log.first_index().saturating_sub(1))
            .max(purged_next);
        while next < to_exclusive {
            let want = ((to_exclusive - next) as usize).min(READ_BATCH);
            let batch = self.log.read(next + 1, want).map_err(|e| self.fail(e))?;
            if batch.is_empty() {
                break;
            }
            for record in batch {
                let entry = decode_entry(&record.payload).map_err(|e| {
                    self.fail(StorageError::Corrupt {
                        file: "raft log".into(),
                        offset: record.index,
                        reason: e.to_string(),
                    })
                })?;
                if entry.index() != next {
                    return Err(self.fail(StorageError::Corrupt {
                        file: "raft log".into(),
                        offset: record.index,
                        reason: format!("holds raft index {}, expected {next}", entry.index()),
                    }));
                }
                out.push(entry);
                next += 1;
            }
        }
        Ok(out)
    }

    async fn save_meta(&self) -> Result<(), io::Error> {
        let bytes = self.meta().encode().map_err(|e| self.fail(e))?;
        self.meta_store.save(bytes).await.map_err(|e| self.fail(e))
    }
}

/// openraft's log storage on a core [`LogStore`] and a [`MetaStore`].
pub struct RaftLog {
    shared: Arc<Shared>,
    flusher: async_channel::Sender<FlushRequest>,
}

impl RaftLog {
    /// Opens the log: loads the meta record and heals a purge interrupted by a crash (segments
    /// kept past the recorded purge are compacted again). Fails on a damaged meta record or a
    /// log that starts after the purged id (a hole).
    pub async fn open(
        log: Arc<dyn LogStore>,
        meta_store: Arc<dyn MetaStore>,
        failure: FailureCell,
    ) -> Result<Self, StorageError> {
        let meta = match meta_store.load().await? {
            Some(bytes) => RaftMeta::decode(&bytes)?,
            None => RaftMeta::default(),
        };
        if let Some(purged) = meta.purged {
            let store_index = purged.index + 1;
            if log.last_index() < store_index {
                log.compact(store_index).await?;
            }
        }
        let expected_first = meta.purged.map_or(1, |p| p.index + 2);
        if log.first_index() > expected_first {
            return Err(StorageError::Corrupt {
                file: "raft log".into(),
                offset: log.first_index(),
                reason: format!(
                    "log starts at {} but only entries before {expected_first} were purged",
                    log.first_index()
                ),
            });
        }
        let shared = Arc::new(Shared {
            log,
            meta_store,
            meta: Mutex::new(meta),
            failure,
        });
        let (flusher, requests) = async_channel::unbounded();
        crate::rt::spawn_detached(run_flusher(shared.clone(), requests));
        Ok(Self { shared, flusher })
    }
}

async fn run_flusher(shared: Arc<Shared>, requests: async_channel::Receiver<FlushRequest>) {
    while let Ok(request) = requests.recv().await {
        match request {
            FlushRequest::Flush(index, callback) => {
                let result = shared.log.sync(index).await.map_err(|e| shared.fail(e));
                callback.io_completed(result);
            }
            FlushRequest::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
}

impl RaftLog {
    /// The vote stored when the log was opened (before openraft takes the log over).
    pub fn stored_vote(&self) -> Option<Vote> {
        self.shared.meta().vote()
    }
}

/// Reads entries and the vote for replication; clones share the log.
#[derive(Clone)]
pub struct RaftLogReaderHandle {
    shared: Arc<Shared>,
}

fn range_to_exclusive(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<ShoalRaft> for RaftLogReaderHandle {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = range_to_exclusive(&range);
        let end = end.min(self.shared.log.last_index());
        self.shared.read(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.shared.meta().vote())
    }
}

impl RaftLogStorage<ShoalRaft> for RaftLog {
    type LogReader = RaftLogReaderHandle;

    async fn get_log_state(&mut self) -> Result<LogState<ShoalRaft>, io::Error> {
        let purged = self.shared.meta().purged.map(StoredLogId::to_log_id);
        let last_store = self.shared.log.last_index();
        let last = if last_store >= self.shared.log.first_index() {
            let entries = self.shared.read(last_store - 1, last_store)?;
            entries.last().map(|e| e.log_id)
        } else {
            None
        };
        let last_log_id: Option<LogId> = match (last, purged) {
            (Some(l), Some(p)) => Some(if l.index >= p.index { l } else { p }),
            (l, p) => l.or(p),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        RaftLogReaderHandle {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        self.shared.meta().set_vote(vote);
        self.shared.save_meta().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Kept in memory and written with the next vote or purge: a stale committed id is
        // safe (it is a lower bound), and writing it on every commit would cost an fsync each.
        self.shared.meta().committed = committed.as_ref().map(StoredLogId::from_log_id);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.shared.meta().committed.map(StoredLogId::to_log_id))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<ShoalRaft>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut last = None;
        for entry in entries {
            let bytes = encode_entry(&entry);
            let store_index = self
                .shared
                .log
                .append(entry.log_id.leader_id.term, &bytes)
                .map_err(|e| self.shared.fail(e))?;
            if store_index != entry.index() + 1 {
                return Err(self.shared.fail(StorageError::Corrupt {
                    file: "raft log".into(),
                    offset: store_index,
                    reason: format!(
                        "raft index {} landed at log index {store_index} (a hole)",
                        entry.index()
                    ),
                }));
            }
            last = Some(store_index);
        }
        match last {
            Some(index) => self
                .flusher
                .send(FlushRequest::Flush(index, callback))
                .await
                .map_err(|_| {
                    self.shared
                        .fail(StorageError::Unavailable("log flusher stopped".into()))
                }),
            None => {
                callback.io_completed(Ok(()));
                Ok(())
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let (done, wait) = futures_channel::oneshot::channel();
        self.flusher
            .send(FlushRequest::Barrier(done))
            .await
            .map_err(|_| {
                self.shared
                    .fail(StorageError::Unavailable("log flusher stopped".into()))
            })?;
        let _ = wait.await;
        let keep = last_log_id.map_or(0, |id| id.index + 1);
        self.shared
            .log
            .truncate_after(keep)
            .await
            .map_err(|e| self.shared.fail(e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut meta = self.shared.meta();
            let purged = StoredLogId::from_log_id(&log_id);
            if meta.purged.is_none_or(|p| p.index < purged.index) {
                meta.purged = Some(purged);
            }
        }
        // Durable before any segment goes: a restart must know where the log now starts.
        self.shared.save_meta().await?;
        self.shared
            .log
            .compact(log_id.index + 1)
            .await
            .map_err(|e| self.shared.fail(e))
    }
}
