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
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use openraft::Instant as _;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::metrics::RaftMetrics;
use openraft::{BasicNode, ChangeMembers, Raft};
use shoal_core::consensus::{Consensus, ConsensusError, Leadership, LeadershipWatch, StateCell};
use shoal_core::model::Epoch;
use shoal_core::plan::ConfigPlan;
use shoal_core::state::ApplyResult;

use crate::config::{RaftConfig, RaftStores};
use crate::error::{LeaderHint, RaftConsensusError};
use crate::failure::FailureCell;
use crate::log_store::RaftLog;
use crate::network::{RaftNetwork, RaftServer, RaftTransport};
use crate::node::{Node, fatal_error};
use crate::state_machine::StateMachine;
use crate::types::{NodeId, RaftRequest, RaftResponse, ShoalRaft};

/// core's [`Consensus`] on an openraft group; see the module docs for the rules it keeps.
pub struct RaftConsensus {
    node: Arc<Node>,
    state: Arc<StateCell>,
    claim_lock: async_lock::Semaphore,
    /// Closing it stops the leadership publisher.
    publisher: Mutex<Option<async_channel::Sender<()>>>,
}

impl std::fmt::Debug for RaftConsensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftConsensus")
            .field("id", &self.node.id)
            .field("leadership", &self.node.watch.get())
            .finish()
    }
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
            stopping: AtomicBool::new(false),
        });
        // A term this node voted for itself in before a restart may have been led by it.
        let stale_term = recovered_vote
            .filter(|v| v.leader_id.voted_for == id)
            .map(|v| v.leader_id.term);
        let (publisher, stop) = async_channel::bounded::<()>(1);
        let publishing = crate::publisher::publish_leadership(node.clone(), stale_term);
        crate::rt::spawn_detached(async move {
            // The stop signal is polled first: once closed, the publisher never runs again.
            futures_lite::future::or(
                async {
                    let _ = stop.recv().await;
                },
                publishing,
            )
            .await;
        });
        Ok(Self {
            node,
            state,
            claim_lock: async_lock::Semaphore::new(1),
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
        let now = crate::rt::now();
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
    ///
    /// Adding a voter again at the address it has is a success (a retried request whose
    /// reply was lost); at another address it is [`RaftConsensusError::AlreadyMember`]. A
    /// learner that does not catch up within `propose_timeout` is a
    /// [`RaftConsensusError::Timeout`]: it stays a learner, and a retry carries on.
    pub async fn add_member(&self, id: NodeId, addr: String) -> Result<(), RaftConsensusError> {
        let metrics = self.check_changeable()?;
        let membership = metrics.membership_config.membership();
        let mut voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let known = membership.get_node(&id).map(|n| n.addr.clone());
        if addr.is_empty() {
            return Err(RaftConsensusError::Invalid(format!(
                "node {id} has no address"
            )));
        }
        match known {
            Some(known) if known != addr => return Err(RaftConsensusError::AlreadyMember(id)),
            Some(_) if voters.contains(&id) => return Ok(()),
            _ => {}
        }
        // Quorum of the new set, counting the newcomer as reachable once it caught up below.
        let timeout = self.node.config.propose_timeout;
        let caught_up = futures_lite::future::or(
            async {
                Some(
                    self.node
                        .raft
                        .add_learner(id, BasicNode::new(addr), true)
                        .await,
                )
            },
            async {
                crate::rt::sleep(timeout).await;
                None
            },
        )
        .await;
        match caught_up {
            None => {
                return Err(RaftConsensusError::Timeout(format!(
                    "node {id} did not catch up as a learner within {timeout:?}"
                )));
            }
            Some(result) => {
                result.map_err(|e| self.change_error(e))?;
            }
        }
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
        let deadline = crate::rt::now() + self.node.config.propose_timeout;
        loop {
            if let Some(snap) = self.metrics().snapshot
                && snap.index >= applied
            {
                return Ok(snap.index);
            }
            if crate::rt::now() > deadline {
                return Err(RaftConsensusError::Timeout(
                    "snapshot not saved in time".into(),
                ));
            }
            crate::rt::sleep(Duration::from_millis(5)).await;
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
        let deadline = crate::rt::now() + self.node.config.propose_timeout;
        loop {
            if self
                .metrics()
                .purged
                .is_some_and(|p| p.index >= snapshot.index)
            {
                return Ok(());
            }
            if crate::rt::now() > deadline {
                return Err(RaftConsensusError::Timeout("log not purged in time".into()));
            }
            crate::rt::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops this node's Raft (as a crash would, minus losing buffered appends): it stops
    /// answering and leading. Idempotent.
    pub async fn shutdown(&self) {
        self.node
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let publisher = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stop) = publisher {
            stop.close();
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
            crate::rt::sleep(timeout).await;
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
            Some(Err(RaftError::Fatal(_)))
                if self.node.stopping.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                Err(ConsensusError::NotLeader)
            }
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
        if let Some(stop) = self
            .publisher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            stop.close();
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
        let _one_at_a_time = self.claim_lock.acquire().await;
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
