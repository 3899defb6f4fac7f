//! [`LocalConsensus`]: a single-node consensus over a [`LogStore`] and a [`SnapshotStore`].
//!
//! Two `LocalConsensus` values over one shared log model a leader change: the second
//! [`LocalConsensus::campaign`]s, which durably claims a higher term, replays the log, and
//! fences the first (its next append fails, and it steps down).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    Consensus, ConsensusError, Leadership, LeadershipWatch, ReplayDecoder, SequentialDecoder,
    StateCell,
};
use crate::model::Epoch;
use crate::plan::ConfigPlan;
use crate::snapshot::{self, Snapshot};
use crate::state::{ApplyResult, ClusterState};
use crate::storage::{LogStore, SnapshotStore, StorageError};

/// Entries read per batch while replaying.
const REPLAY_BATCH: usize = 4096;

#[derive(Debug)]
enum Pending {
    /// Appended, waiting for durability.
    Plan(Box<ConfigPlan>, u64),
    /// Applied; the proposer has not collected its result yet.
    Applied(ApplyResult),
}

#[derive(Debug, Default)]
struct Inner {
    leader: bool,
    epoch: Epoch,
    applied_index: u64,
    applied_term: u64,
    pending: BTreeMap<u64, Pending>,
}

/// Single-node consensus: every proposal is appended to the log, synced, then applied.
pub struct LocalConsensus {
    log: Arc<dyn LogStore>,
    snapshots: Arc<dyn SnapshotStore>,
    /// Decodes the entries replayed when loading (they are applied here, in order).
    decoder: Arc<dyn ReplayDecoder>,
    state: Arc<StateCell>,
    watch: LeadershipWatch,
    inner: Mutex<Inner>,
    /// One campaign at a time. A semaphore, not `async_lock::Mutex`: that mutex switches to
    /// a fair mode after 500 µs of *wall-clock* contention, so which waiter gets it next
    /// depended on the machine's load, and the simulator's runs of one seed diverged under
    /// load (its determinism test failed 2 of 6 runs on a busy machine).
    campaign_lock: async_lock::Semaphore,
    /// Set once the log or snapshots failed for good (see [`ConsensusError::is_fatal`]).
    failure: Mutex<Option<ConsensusError>>,
    failure_event: event_listener::Event,
}

impl std::fmt::Debug for LocalConsensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConsensus")
            .field("leadership", &self.watch.get())
            .finish()
    }
}

impl LocalConsensus {
    /// A follower over `log` and `snapshots` with an empty state; call
    /// [`LocalConsensus::campaign`] to lead (it loads the stored state first).
    pub fn new(log: Arc<dyn LogStore>, snapshots: Arc<dyn SnapshotStore>) -> Self {
        Self {
            log,
            snapshots,
            decoder: Arc::new(SequentialDecoder),
            state: Arc::new(StateCell::default()),
            watch: LeadershipWatch::new(),
            inner: Mutex::new(Inner::default()),
            campaign_lock: async_lock::Semaphore::new(1),
            failure: Mutex::new(None),
            failure_event: event_listener::Event::new(),
        }
    }

    /// Replays with `decoder` (which may decode a batch on several threads) instead of
    /// decoding one entry after another on the calling thread.
    pub fn with_replay_decoder(mut self, decoder: Arc<dyn ReplayDecoder>) -> Self {
        self.decoder = decoder;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Becomes leader: durably claims a term above every earlier one, reloads the newest
    /// snapshot and replays the log after it, then publishes leadership with the new epoch.
    pub async fn campaign(&self) -> Result<Epoch, ConsensusError> {
        let _one_at_a_time = self.campaign_lock.acquire().await;
        self.campaign_locked(0).await
    }

    /// [`LocalConsensus::campaign`] for a caller holding `campaign_lock`, claiming a term of
    /// at least `min_term`.
    async fn campaign_locked(&self, min_term: u64) -> Result<Epoch, ConsensusError> {
        if let Some(failure) = self.failure() {
            return Err(failure);
        }
        self.step_down();
        let term = (self.log.current_term().max(self.lock().epoch.0) + 1).max(min_term);
        if let Err(e) = self.log.claim_term(term).await {
            return Err(self.fail_if_fatal(e.into()));
        }
        let (state, index, last_term) = match self.load_stored().await {
            Ok(loaded) => loaded,
            Err(e) => return Err(self.fail_if_fatal(e)),
        };
        {
            let mut inner = self.lock();
            self.state.write(|s| *s = state);
            inner.applied_index = index;
            inner.applied_term = last_term;
            inner.pending.clear();
            inner.epoch = Epoch(term);
            inner.leader = true;
        }
        tracing::info!(epoch = term, applied_index = index, "became leader");
        self.watch.set(Leadership {
            is_leader: true,
            epoch: Epoch(term),
        });
        Ok(Epoch(term))
    }

    /// Stops leading (proposals fail from now on). Idempotent.
    pub fn step_down(&self) {
        let epoch = {
            let mut inner = self.lock();
            if !inner.leader {
                return;
            }
            inner.leader = false;
            inner.epoch
        };
        tracing::info!(%epoch, "stepped down");
        self.watch.set(Leadership {
            is_leader: false,
            epoch,
        });
    }

    /// The fatal failure this node suffered, if any.
    pub fn failure(&self) -> Option<ConsensusError> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records `error` if it is fatal (stepping down for good); returns it either way.
    fn fail_if_fatal(&self, error: ConsensusError) -> ConsensusError {
        if error.is_fatal() {
            let first = {
                let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
                let first = failure.is_none();
                if first {
                    *failure = Some(error.clone());
                }
                first
            };
            if first {
                tracing::error!(%error, "consensus failed; this node stops leading until restarted");
            }
            self.step_down();
            self.failure_event.notify(usize::MAX);
        }
        error
    }

    /// Loads the stored state without leading (for read-only tools and tests).
    pub async fn load(&self) -> Result<(), ConsensusError> {
        let (state, index, last_term) = self.load_stored().await?;
        let mut inner = self.lock();
        self.state.write(|s| *s = state);
        inner.applied_index = index;
        inner.applied_term = last_term;
        Ok(())
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.lock().applied_index
    }

    /// Saves a snapshot of the applied state and compacts the log up to it. Returns the
    /// snapshot's last index.
    pub async fn take_snapshot(&self) -> Result<u64, ConsensusError> {
        let (bytes, index) = {
            let inner = self.lock();
            let snapshot = Snapshot {
                last_index: inner.applied_index,
                last_term: inner.applied_term,
                state: self.state.snapshot(),
            };
            (snapshot::encode(&snapshot)?, inner.applied_index)
        };
        self.snapshots.save(index, bytes).await?;
        // Compact only after the snapshot is durable: the entries are needed until then.
        self.log.compact(index).await?;
        Ok(index)
    }

    async fn load_stored(&self) -> Result<(ClusterState, u64, u64), ConsensusError> {
        let (mut state, mut index, mut term) = match self.snapshots.load_latest().await? {
            Some(bytes) => {
                let snap = snapshot::decode(&bytes)?;
                (snap.state, snap.last_index, snap.last_term)
            }
            None => (ClusterState::default(), 0, 0),
        };
        let snapshot_index = index;
        if self.log.first_index() > index + 1 {
            return Err(StorageError::Corrupt {
                file: "consensus log".into(),
                offset: self.log.first_index(),
                reason: format!(
                    "log starts at {} but the snapshot ends at {index}",
                    self.log.first_index()
                ),
            }
            .into());
        }
        loop {
            let batch = self.log.read(index + 1, REPLAY_BATCH)?;
            if batch.is_empty() {
                break;
            }
            let plans = self.decoder.decode_batch(&batch);
            if plans.len() != batch.len() {
                return Err(ConsensusError::Storage(StorageError::Unavailable(format!(
                    "replay decoder returned {} plans for {} entries",
                    plans.len(),
                    batch.len()
                ))));
            }
            // Applied strictly in index order, stopping at the first undecodable entry,
            // whichever order the decoder worked in.
            for (entry, plan) in batch.iter().zip(plans) {
                let plan = plan.map_err(|source| ConsensusError::CorruptEntry {
                    index: entry.index,
                    source,
                })?;
                // Rejections replay as rejections: they are part of the deterministic history.
                let _ = state.apply_owned(plan);
                index = entry.index;
                term = entry.term;
            }
        }
        tracing::info!(
            snapshot_index,
            replayed_entries = index - snapshot_index,
            applied_index = index,
            "loaded the stored state"
        );
        Ok((state, index, term))
    }
}

#[async_trait]
impl Consensus for LocalConsensus {
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError> {
        let index = {
            let mut inner = self.lock();
            if !inner.leader {
                return Err(ConsensusError::NotLeader);
            }
            if inner.epoch != epoch {
                return Err(ConsensusError::StaleEpoch {
                    proposed: epoch,
                    current: inner.epoch,
                });
            }
            let bytes = plan.encode()?;
            match self.log.append(epoch.0, &bytes) {
                Ok(index) => {
                    inner
                        .pending
                        .insert(index, Pending::Plan(Box::new(plan), epoch.0));
                    index
                }
                Err(StorageError::Fenced { current, .. }) => {
                    drop(inner);
                    self.step_down();
                    return Err(ConsensusError::StaleEpoch {
                        proposed: epoch,
                        current: Epoch(current),
                    });
                }
                Err(e) => return Err(self.fail_if_fatal(e.into())),
            }
        };
        // On failure the entry stays pending: it may still be durable and is applied by the
        // next successful sync or on replay. The outcome is unknown to the caller, so steps
        // must be idempotent.
        if let Err(e) = self.log.sync(index).await {
            return Err(self.fail_if_fatal(e.into()));
        }
        let mut inner = self.lock();
        let ready: Vec<u64> = inner
            .pending
            .range(..=index)
            .filter(|(_, p)| matches!(p, Pending::Plan(..)))
            .map(|(i, _)| *i)
            .collect();
        for i in ready {
            // Over a log shared by two leaders (tests, the simulator), a newer leader's term
            // claim can replace an entry of ours before it was durable, and its own entry at
            // that index can be what our sync covered: apply only entries that are ours.
            let ours = matches!(inner.pending.get(&i), Some(Pending::Plan(_, term))
                if self.log.term_at(i) == Some(*term));
            if !ours {
                let current = Epoch(self.log.current_term());
                drop(inner);
                self.step_down();
                return Err(ConsensusError::StaleEpoch {
                    proposed: epoch,
                    current,
                });
            }
            if let Some(Pending::Plan(plan, term)) = inner.pending.remove(&i) {
                let result = self.state.write(|s| s.apply(&plan));
                inner.applied_index = i;
                inner.applied_term = term;
                inner.pending.insert(i, Pending::Applied(result));
            }
        }
        match inner.pending.remove(&index) {
            Some(Pending::Applied(result)) => Ok(result),
            // Leadership was re-acquired and the log replayed in between: outcome unknown.
            _ => Err(ConsensusError::NotLeader),
        }
    }

    fn state(&self) -> Arc<StateCell> {
        self.state.clone()
    }

    fn leadership(&self) -> LeadershipWatch {
        self.watch.clone()
    }

    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError> {
        let _one_at_a_time = self.campaign_lock.acquire().await;
        let (leader, epoch) = {
            let inner = self.lock();
            (inner.leader, inner.epoch)
        };
        if !leader {
            return Err(ConsensusError::NotLeader);
        }
        let claimed = self.log.current_term();
        if claimed > epoch.0 {
            // Another node claimed a later term over the same log: this one is deposed and
            // must not take leadership back.
            self.step_down();
            return Err(ConsensusError::StaleEpoch {
                proposed: epoch,
                current: Epoch(claimed),
            });
        }
        if seen < epoch {
            return Ok(epoch);
        }
        self.campaign_locked(seen.0.saturating_add(1)).await
    }

    async fn failed(&self) -> ConsensusError {
        loop {
            if let Some(failure) = self.failure() {
                return failure;
            }
            let listener = self.failure_event.listen();
            if let Some(failure) = self.failure() {
                return failure;
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests;
