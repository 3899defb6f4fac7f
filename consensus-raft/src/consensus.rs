//! [`RaftConsensus`]: core's [`Consensus`] on an openraft group.
//!
//! - **Epoch = term + floor.** The term is openraft's (standard Raft leader ids: one leader
//!   per term). The floor is replicated state (raised by a committed `RaiseEpochFloor` entry),
//!   so it never goes down across leader changes and a DataNode fence above every term heals
//!   by [`Consensus::claim_epoch_above`].
//! - **Leadership is published** only once this node leads *and* has applied an entry of its
//!   own term (its blank entry): every earlier entry is then applied, so `state()` is complete
//!   and the floor known. It is withdrawn when openraft's leader lease lapses (the leader lost
//!   its quorum; openraft then refuses proposals), when another node leads, and on failure.
//!   Leading again in the same term first raises the floor, so one epoch never names two
//!   leadership sessions.
//! - **Proposals** carry their epoch; the state machine applies a plan only if that epoch is
//!   the one in force when the entry applies, so a stale epoch can never change metadata.
//!   `propose` resolves after the plan is committed and applied here; a commit it did not see
//!   is `OutcomeUnknown` or a leadership-loss error, never a success.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::metrics::RaftMetrics;
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use shoal_core::consensus::{Consensus, ConsensusError, Leadership, LeadershipWatch, StateCell};
use shoal_core::model::Epoch;
use shoal_core::plan::ConfigPlan;
use shoal_core::state::ApplyResult;
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_core::storage::{LogStore, SnapshotStore, StorageError};
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, FsStateFile, LogOptions};

use crate::error::{LeaderHint, RaftConsensusError};
use crate::failure::FailureCell;
use crate::log_store::RaftLog;
use crate::meta::{MemMetaStore, MetaStore};
use crate::network::{RaftNetwork, RaftServer, RaftTransport};
use crate::state_machine::{SmShared, StateMachine, snapshot_store_index};
use crate::types::{NodeId, RaftRequest, RaftResponse, ShoalRaft, epoch_of};

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
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
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

    fn openraft(&self) -> Result<Config, RaftConsensusError> {
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

/// Shared by the node and its leadership publisher.
struct Node {
    id: NodeId,
    raft: Raft<ShoalRaft, StateMachine>,
    sm: Arc<SmShared>,
    watch: LeadershipWatch,
    failure: FailureCell,
    config: RaftConfig,
}

/// core's [`Consensus`] on an openraft group; see the module docs for the rules it keeps.
pub struct RaftConsensus {
    node: Arc<Node>,
    state: Arc<StateCell>,
    claim_lock: async_lock::Mutex<()>,
    publisher: Mutex<Option<smol::Task<()>>>,
}

impl std::fmt::Debug for RaftConsensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftConsensus")
            .field("id", &self.node.id)
            .field("leadership", &self.node.watch.get())
            .finish()
    }
}

fn fatal_error(message: impl std::fmt::Display) -> ConsensusError {
    ConsensusError::Storage(StorageError::Unavailable(format!(
        "raft stopped: {message}"
    )))
}

impl RaftConsensus {
    /// Starts node `id` over `stores`, sending through `transport`. A node with stored state
    /// recovers it (vote, log, snapshot); a new node waits to be bootstrapped or added.
    pub async fn start(
        id: NodeId,
        config: RaftConfig,
        stores: RaftStores,
        transport: Arc<dyn RaftTransport>,
    ) -> Result<Self, RaftConsensusError> {
        let failure = FailureCell::default();
        let state = Arc::new(StateCell::default());
        let log = RaftLog::open(stores.log.clone(), stores.meta.clone(), failure.clone()).await?;
        let recovered_vote = log.stored_vote();
        let stored_snapshot = stores.snapshots.load_latest().await?;
        let sm = StateMachine::new(
            state.clone(),
            stores.snapshots.clone(),
            stored_snapshot,
            failure.clone(),
        )?;
        let sm_shared = sm.shared();
        let raft = Raft::new(
            id,
            Arc::new(config.openraft()?),
            RaftNetwork::new(transport),
            log,
            sm,
        )
        .await
        .map_err(|e| RaftConsensusError::Stopped(e.to_string()))?;
        let node = Arc::new(Node {
            id,
            raft,
            sm: sm_shared,
            watch: LeadershipWatch::new(),
            failure,
            config,
        });
        // A term this node voted for itself in before a restart may have been led by it.
        let stale_term = recovered_vote
            .filter(|v| v.leader_id.voted_for == id)
            .map(|v| v.leader_id.term);
        let publisher = smol::spawn(publish_leadership(node.clone(), stale_term));
        Ok(Self {
            node,
            state,
            claim_lock: async_lock::Mutex::new(()),
            publisher: Mutex::new(Some(publisher)),
        })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.node.id
    }

    /// The handler a transport gives incoming Raft calls for this node.
    pub fn server(&self) -> RaftServer {
        RaftServer::new(self.node.id, self.node.raft.clone())
    }

    /// Makes a new group of `members` (id → address), which must include this node. Call it
    /// on one node of a fresh group; the others learn the membership from it.
    pub async fn bootstrap(
        &self,
        members: BTreeMap<NodeId, String>,
    ) -> Result<(), RaftConsensusError> {
        if members.is_empty() || !members.contains_key(&self.node.id) {
            return Err(RaftConsensusError::Invalid(format!(
                "the first members {:?} must include this node {}",
                members.keys().collect::<Vec<_>>(),
                self.node.id
            )));
        }
        let nodes: BTreeMap<NodeId, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode::new(addr)))
            .collect();
        match self.node.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(RaftConsensusError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(RaftConsensusError::Invalid(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(RaftConsensusError::Stopped(e.to_string())),
        }
    }

    /// Who leads, as this node knows it (itself included); `None` during an election.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        let metrics = self.metrics();
        let leader = metrics.current_leader?;
        let addr = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        Some(LeaderHint { id: leader, addr })
    }

    /// The voters of the membership in force (both halves during a joint change).
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.metrics()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// openraft's current metrics of this node.
    pub fn metrics(&self) -> RaftMetrics<ShoalRaft> {
        self.node.raft.metrics().borrow_watched().clone()
    }

    /// The Raft index of the last entry applied here (`None` before the first).
    pub fn applied_index(&self) -> Option<u64> {
        self.node.sm.last_applied().map(|id| id.index)
    }

    fn not_leader(&self) -> RaftConsensusError {
        RaftConsensusError::NotLeader {
            leader: self.leader_hint().filter(|l| l.id != self.node.id),
        }
    }

    fn check_changeable(&self) -> Result<RaftMetrics<ShoalRaft>, RaftConsensusError> {
        if let Some(f) = self.node.failure.get() {
            return Err(RaftConsensusError::Stopped(f.to_string()));
        }
        if !self.node.watch.get().is_leader {
            return Err(self.not_leader());
        }
        let metrics = self.metrics();
        let membership = metrics.membership_config.membership();
        if membership.get_joint_config().len() > 1
            || metrics.membership_config.log_id() != metrics.committed_membership_config.log_id()
        {
            return Err(RaftConsensusError::ChangeInProgress);
        }
        Ok(metrics)
    }

    /// Refuses a voter set whose majority would not be reachable now: the leader counts, and
    /// a follower counts if it acknowledged the leader within the election timeout.
    fn check_quorum(
        &self,
        metrics: &RaftMetrics<ShoalRaft>,
        new_voters: &BTreeSet<NodeId>,
    ) -> Result<(), RaftConsensusError> {
        let lease = self.node.config.election_timeout.1;
        let now = Instant::now();
        let heartbeats = metrics.heartbeat.clone().unwrap_or_default();
        let reachable = new_voters
            .iter()
            .filter(|id| {
                **id == self.node.id
                    || heartbeats
                        .get(id)
                        .and_then(|t| t.as_ref())
                        .is_some_and(|t| now.saturating_duration_since(**t) <= lease)
            })
            .count();
        let needed = new_voters.len() / 2 + 1;
        if reachable < needed {
            return Err(RaftConsensusError::WouldLoseQuorum {
                voters: new_voters.len(),
                reachable,
                needed,
            });
        }
        Ok(())
    }

    fn change_error(
        &self,
        error: RaftError<ShoalRaft, ClientWriteError<ShoalRaft>>,
    ) -> RaftConsensusError {
        match error {
            RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => self.not_leader(),
            RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
                RaftConsensusError::Timeout("membership entry discarded by a leader change".into())
            }
            RaftError::APIError(e) => RaftConsensusError::Raft(e.to_string()),
            RaftError::Fatal(e) => RaftConsensusError::Stopped(e.to_string()),
        }
    }

    /// Adds node `id` at `addr` as a voter: it joins as a learner, catches up (a snapshot if
    /// needed), then a joint-consensus change makes it a voter. One change at a time; refused
    /// if the new configuration would have no reachable majority.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), RaftConsensusError> {
        let metrics = self.check_changeable()?;
        let mut voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        if voters.contains(&id) {
            return Err(RaftConsensusError::AlreadyMember(id));
        }
        if addr.is_empty() {
            return Err(RaftConsensusError::Invalid(format!(
                "node {id} has no address"
            )));
        }
        // Quorum of the new set, counting the newcomer as reachable once it caught up below.
        self.node
            .raft
            .add_learner(id, BasicNode::new(addr), true)
            .await
            .map_err(|e| self.change_error(e))?;
        let metrics = self.check_changeable()?;
        voters.insert(id);
        self.check_quorum(&metrics, &voters)?;
        self.node
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.change_error(e))?;
        tracing::info!(node = id, "confignode added to the raft group");
        Ok(())
    }

    /// Removes voter `id` through joint consensus (it leaves the membership entirely). One
    /// change at a time; refused if the remaining voters would have no reachable majority.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftConsensusError> {
        let metrics = self.check_changeable()?;
        let mut voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        if !voters.remove(&id) {
            return Err(RaftConsensusError::NotMember(id));
        }
        if voters.is_empty() {
            return Err(RaftConsensusError::Invalid(
                "cannot remove the last voter".into(),
            ));
        }
        self.check_quorum(&metrics, &voters)?;
        self.node
            .raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.change_error(e))?;
        tracing::info!(node = id, "confignode removed from the raft group");
        Ok(())
    }

    /// Builds a snapshot of everything applied here and waits until it is saved.
    pub async fn take_snapshot(&self) -> Result<u64, RaftConsensusError> {
        let applied = self.applied_index().unwrap_or(0);
        self.node
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| RaftConsensusError::Stopped(e.to_string()))?;
        let deadline = Instant::now() + self.node.config.propose_timeout;
        loop {
            if let Some(snap) = self.metrics().snapshot
                && snap.index >= applied
            {
                return Ok(snap.index);
            }
            if Instant::now() > deadline {
                return Err(RaftConsensusError::Timeout(
                    "snapshot not saved in time".into(),
                ));
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// Purges the log up to the newest snapshot (a follower further behind then needs that
    /// snapshot) and waits until it is done.
    pub async fn purge_log(&self) -> Result<(), RaftConsensusError> {
        let Some(snapshot) = self.metrics().snapshot else {
            return Ok(());
        };
        self.node
            .raft
            .trigger()
            .purge_log(snapshot.index)
            .await
            .map_err(|e| RaftConsensusError::Stopped(e.to_string()))?;
        let deadline = Instant::now() + self.node.config.propose_timeout;
        loop {
            if self
                .metrics()
                .purged
                .is_some_and(|p| p.index >= snapshot.index)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(RaftConsensusError::Timeout("log not purged in time".into()));
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// Stops this node's Raft (as a crash would, minus losing buffered appends): it stops
    /// answering and leading. Idempotent.
    pub async fn shutdown(&self) {
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = publisher {
            drop(task.cancel());
        }
        let _ = self.node.raft.shutdown().await;
        let epoch = self.node.watch.get().epoch;
        self.node.watch.set(Leadership {
            is_leader: false,
            epoch,
        });
    }

    async fn write(&self, request: RaftRequest) -> Result<RaftResponse, ConsensusError> {
        let write = self.node.raft.client_write(request);
        let timeout = self.node.config.propose_timeout;
        let outcome = futures_lite::future::or(async { Some(write.await) }, async {
            smol::Timer::after(timeout).await;
            None
        })
        .await;
        match outcome {
            None => Err(ConsensusError::OutcomeUnknown(format!(
                "not applied within {timeout:?}"
            ))),
            Some(Ok(response)) => Ok(response.data),
            Some(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(ConsensusError::NotLeader)
            }
            Some(Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)))) => Err(
                ConsensusError::OutcomeUnknown("entry discarded by a leader change".into()),
            ),
            Some(Err(RaftError::APIError(e))) => Err(ConsensusError::OutcomeUnknown(e.to_string())),
            Some(Err(RaftError::Fatal(e))) => {
                self.node.failure.record(fatal_error(&e));
                Err(self.node.failure.get().unwrap_or_else(|| fatal_error(e)))
            }
        }
    }

    fn check_epoch(&self, epoch: Epoch) -> Result<(), ConsensusError> {
        if let Some(failure) = self.node.failure.get() {
            return Err(failure);
        }
        let now = self.node.watch.get();
        if !now.is_leader {
            return Err(ConsensusError::NotLeader);
        }
        if now.epoch != epoch {
            return Err(ConsensusError::StaleEpoch {
                proposed: epoch,
                current: now.epoch,
            });
        }
        Ok(())
    }
}

impl Drop for RaftConsensus {
    fn drop(&mut self) {
        // The publisher holds the node; stop it so a dropped consensus does not linger.
        if let Some(task) = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            drop(task);
        }
    }
}

#[async_trait]
impl Consensus for RaftConsensus {
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError> {
        self.check_epoch(epoch)?;
        let bytes = plan.encode()?;
        match self
            .write(RaftRequest::Plan {
                epoch: epoch.0,
                plan: bytes,
            })
            .await?
        {
            RaftResponse::Applied(result) => Ok(result),
            RaftResponse::StaleEpoch { proposed, current } => Err(ConsensusError::StaleEpoch {
                proposed: Epoch(proposed),
                current: Epoch(current),
            }),
            other => Err(ConsensusError::OutcomeUnknown(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    fn state(&self) -> Arc<StateCell> {
        self.state.clone()
    }

    fn leadership(&self) -> LeadershipWatch {
        self.node.watch.clone()
    }

    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError> {
        let _one_at_a_time = self.claim_lock.lock().await;
        let current = self.node.watch.get();
        self.check_epoch(current.epoch)?;
        if seen < current.epoch {
            return Ok(current.epoch);
        }
        tracing::warn!(%seen, current = %current.epoch, "a DataNode saw a higher epoch; raising the epoch floor above it");
        let raised = match self
            .write(RaftRequest::RaiseEpochFloor {
                epoch: current.epoch.0,
                above: seen.0,
            })
            .await?
        {
            RaftResponse::EpochRaised { epoch } => Epoch(epoch),
            RaftResponse::StaleEpoch { proposed, current } => {
                return Err(ConsensusError::StaleEpoch {
                    proposed: Epoch(proposed),
                    current: Epoch(current),
                });
            }
            other => {
                return Err(ConsensusError::OutcomeUnknown(format!(
                    "unexpected answer {other:?}"
                )));
            }
        };
        // Resolve once leadership is published under the new epoch (or lost).
        let mut now = self.node.watch.get();
        while now.is_leader && now.epoch < raised {
            now = self.node.watch.changed_from(now).await;
        }
        if now.is_leader && now.epoch == raised {
            Ok(raised)
        } else if let Some(failure) = self.node.failure.get() {
            Err(failure)
        } else {
            Err(ConsensusError::NotLeader)
        }
    }

    async fn failed(&self) -> ConsensusError {
        self.node.failure.wait().await
    }
}

/// Follows openraft's metrics (and the failure cell, and time for the lease) and publishes
/// this node's leadership under the rules in the module docs.
async fn publish_leadership(node: Arc<Node>, stale_term: Option<u64>) {
    let mut metrics = node.raft.metrics();
    // Epochs this node must not publish (again): `(term, None)` is every epoch of `term` (a
    // term this node may have led before a restart), `(term, Some(e))` every epoch up to `e`
    // (an epoch whose leadership was withdrawn). Leading at such an epoch first raises the
    // floor above it, so one epoch never names two leadership sessions.
    let mut stale: Option<(u64, Option<u64>)> = stale_term.map(|term| (term, None));
    let mut raising = false;
    let (raised_tx, raised_rx) = async_channel::unbounded::<()>();
    loop {
        let m = metrics.borrow_watched().clone();
        let stopped = m.running_state.is_err() || node.failure.get().is_some();
        if let Err(fatal) = &m.running_state {
            node.failure.record(fatal_error(fatal));
        }
        let term = m.current_term;
        let lease = node.config.election_timeout.1;
        let lease_held = m
            .last_quorum_acked
            .as_ref()
            .is_some_and(|t| Instant::now().saturating_duration_since(**t) <= lease)
            // A single voter is its own quorum.
            || m.membership_config.membership().voter_ids().count() == 1;
        let leading = !stopped
            && m.state == ServerState::Leader
            && m.current_leader == Some(node.id)
            && m.vote.committed
            && m.last_applied.is_some_and(|id| id.leader_id.term == term)
            && lease_held;
        let epoch = epoch_of(term, node.sm.floor());
        let is_stale = match stale {
            Some((t, None)) => t == term,
            Some((t, Some(e))) => t == term && epoch <= e,
            None => false,
        };
        let prev = node.watch.get();
        if leading && is_stale {
            if !raising {
                raising = true;
                stale = Some((term, Some(epoch)));
                let raft = node.raft.clone();
                let done = raised_tx.clone();
                smol::spawn(async move {
                    let _ = raft
                        .client_write(RaftRequest::RaiseEpochFloor {
                            epoch,
                            above: epoch,
                        })
                        .await;
                    let _ = done.send(()).await;
                })
                .detach();
            }
        } else if leading {
            node.watch.set(Leadership {
                is_leader: true,
                epoch: Epoch(epoch),
            });
        } else {
            if prev.is_leader {
                stale = Some((term, Some(prev.epoch.0.max(epoch))));
                tracing::info!(epoch = %prev.epoch, "raft leadership withdrawn");
            }
            node.watch.set(Leadership {
                is_leader: false,
                epoch: prev.epoch,
            });
        }
        if stopped {
            return;
        }
        // Wake on a metrics change, a failure, a finished floor raise, or a heartbeat period
        // (the lease can lapse without any metrics change).
        let changed = futures_lite::future::or(
            async { metrics.changed().await.is_ok() },
            futures_lite::future::or(
                async {
                    node.failure.wait().await;
                    true
                },
                futures_lite::future::or(
                    async {
                        let _ = raised_rx.recv().await;
                        raising = false;
                        true
                    },
                    async {
                        smol::Timer::after(node.config.heartbeat_interval).await;
                        true
                    },
                ),
            ),
        )
        .await;
        if !changed {
            let prev = node.watch.get();
            node.watch.set(Leadership {
                is_leader: false,
                epoch: prev.epoch,
            });
            return;
        }
    }
}
