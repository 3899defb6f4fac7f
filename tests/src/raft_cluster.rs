//! In-process clusters with a replicated ConfigNode group: core's `ConfigNode` over
//! `RaftConsensus` on the in-process Raft network (in-memory Raft stores), DataNodes over
//! in-memory stores on the in-process DataNode network — the same DataNodes as
//! [`crate::cluster::TestCluster`]'s.
//!
//! A ConfigNode is *killed* as a crash would: its Raft stops answering, its executor and
//! every other part stop, and nothing more is committed by it; *restarting* it rebuilds it
//! over the same Raft stores (vote, log, snapshots). Raft links can be cut
//! ([`RaftCluster::isolate`]). Every consensus can be wrapped (see
//! [`RaftClusterOptions::wrap`]) — the leader-kill harness counts and intercepts commits so.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use shoal_consensus_raft::{
    InprocRaftNetwork, NodeId, RaftConfig, RaftConsensus, RaftStores, seed_group,
};
use shoal_core::api::DataNodeApi;
use shoal_core::confignode::ConfigNode;
use shoal_core::consensus::Consensus;
use shoal_core::model::{
    DataNodeId, DatabaseSchema, Epoch, ProcedureId, RegionId, ReplicationFactor,
};
use shoal_core::procedure::{ProcedureInfo, ProcedureView};
use shoal_core::runtime::Runtime;
use shoal_core::state::ClusterState;
use shoal_runtime_smol::smol_runtime;
use shoal_transport_inproc::InprocNetwork;

use crate::cluster::{ClusterOptions, DataNodeSlot, DataNodeSlots, NetClients, db};

/// Wraps a member's consensus before its ConfigNode is built over it.
pub type WrapConsensus =
    Arc<dyn Fn(NodeId, Arc<RaftConsensus>) -> Arc<dyn Consensus> + Send + Sync>;

/// How a Raft cluster is built.
#[derive(Clone)]
pub struct RaftClusterOptions {
    /// DataNodes and ConfigNode tuning (as for [`crate::cluster::TestCluster`]).
    pub cluster: ClusterOptions,
    /// ConfigNodes started (ids 1..=n).
    pub confignodes: u64,
    /// The first members the group is bootstrapped with (ids 1..=n); the others start empty,
    /// to be added. `None`: all of them.
    pub first_members: Option<u64>,
    /// Raft timing.
    pub raft: RaftConfig,
    /// Timeout of a Raft call on the in-process network.
    pub raft_call_timeout: Duration,
    /// Wraps each member's consensus (`None`: the `RaftConsensus` itself).
    pub wrap: Option<WrapConsensus>,
    /// Seeds member 1 with this state and epoch floor (a single node's state imported into
    /// a new group) instead of bootstrapping an empty group; the state's DataNodes are
    /// registered already.
    pub seed: Option<(ClusterState, u64)>,
}

impl Default for RaftClusterOptions {
    fn default() -> Self {
        Self {
            cluster: ClusterOptions::default(),
            confignodes: 3,
            first_members: None,
            raft: RaftConfig::for_tests(),
            raft_call_timeout: Duration::from_millis(500),
            wrap: None,
            seed: None,
        }
    }
}

/// One running ConfigNode of the group.
pub struct Member {
    /// Its Raft node id.
    pub id: NodeId,
    /// Its Raft consensus.
    pub raft: Arc<RaftConsensus>,
    /// What its ConfigNode commits through (the wrapped consensus, if any).
    pub consensus: Arc<dyn Consensus>,
    /// The ConfigNode.
    pub node: Arc<ConfigNode>,
}

/// A whole cluster with a replicated ConfigNode group, in one process.
pub struct RaftCluster {
    /// Real-clock smol runtime.
    pub runtime: Runtime,
    /// The DataNodes' network.
    pub network: InprocNetwork<dyn DataNodeApi>,
    /// The ConfigNodes' Raft network.
    pub raft_net: InprocRaftNetwork,
    /// DataNodes, by index (DataNode id = index).
    pub data_nodes: Vec<Arc<DataNodeSlot>>,
    stores: BTreeMap<NodeId, RaftStores>,
    members: Mutex<BTreeMap<NodeId, Arc<Member>>>,
    options: RaftClusterOptions,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address a member is known at in the membership.
pub fn member_address(id: NodeId) -> String {
    format!("confignode-{id}:7100")
}

impl RaftCluster {
    /// Starts the DataNodes and the ConfigNode group, bootstraps it, waits for a leader and
    /// registers the DataNodes with it.
    pub async fn start(options: RaftClusterOptions) -> RaftCluster {
        let runtime = smol_runtime();
        let network =
            InprocNetwork::<dyn DataNodeApi>::new(runtime.clone(), options.cluster.rpc_timeout);
        let data_nodes: Vec<Arc<DataNodeSlot>> = (0..options.cluster.data_nodes)
            .map(|i| DataNodeSlot::new(i, &runtime, options.cluster.delete_rate))
            .collect();
        let cluster = RaftCluster {
            runtime,
            network,
            raft_net: InprocRaftNetwork::new(options.raft_call_timeout),
            data_nodes,
            stores: (1..=options.confignodes)
                .map(|id| (id, RaftStores::memory()))
                .collect(),
            members: Mutex::new(BTreeMap::new()),
            options,
        };
        for (i, slot) in cluster.data_nodes.iter().enumerate() {
            slot.start(DataNodeId(i as u32), &cluster.runtime, &cluster.network)
                .await;
        }
        let first_members: BTreeMap<NodeId, String> = (1..=cluster
            .options
            .first_members
            .unwrap_or(cluster.options.confignodes))
            .map(|id| (id, member_address(id)))
            .collect();
        if let Some((state, floor)) = &cluster.options.seed {
            seed_group(&cluster.stores[&1], &first_members, state, *floor)
                .await
                .expect("seed");
        }
        for id in 1..=cluster.options.confignodes {
            cluster.start_member(id).await;
        }
        if cluster.options.seed.is_some() {
            return cluster;
        }
        let first = cluster.member(1).expect("member 1");
        first
            .raft
            .bootstrap(first_members)
            .await
            .expect("bootstrap");
        for (i, slot) in cluster.data_nodes.iter().enumerate() {
            let id = cluster.register(slot.address.clone()).await;
            assert_eq!(id, DataNodeId(i as u32));
        }
        cluster
    }

    /// Registers a DataNode with whichever member leads (retrying across leader changes).
    pub async fn register(&self, address: String) -> DataNodeId {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leader = self.leader().await;
            match leader.node.register_data_node(None, address.clone()).await {
                Ok(id) => return id,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    smol::Timer::after(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("registration failed: {e}"),
            }
        }
    }

    /// Starts (or restarts, after [`RaftCluster::kill`]) member `id` over its stores.
    pub async fn start_member(&self, id: NodeId) -> Arc<Member> {
        let raft = Arc::new(
            RaftConsensus::start(
                id,
                self.options.raft.clone(),
                self.stores[&id].clone(),
                self.raft_net.transport(id),
            )
            .await
            .expect("raft starts"),
        );
        self.raft_net.host(id, raft.server());
        let consensus = match &self.options.wrap {
            Some(wrap) => wrap(id, raft.clone()),
            None => raft.clone() as Arc<dyn Consensus>,
        };
        let clients = Arc::new(NetClients {
            network: self.network.clone(),
            from: format!("cn-{id}"),
        });
        let node = ConfigNode::new(
            consensus.clone(),
            clients,
            self.runtime.clone(),
            self.options.cluster.config.clone(),
        )
        .expect("ConfigNode builds");
        node.start();
        let member = Arc::new(Member {
            id,
            raft,
            consensus,
            node,
        });
        lock(&self.members).insert(id, member.clone());
        member
    }

    /// Kills member `id` as a crash would (see the module docs).
    pub async fn kill(&self, id: NodeId) {
        let member = lock(&self.members).remove(&id);
        self.raft_net.stop(id);
        if let Some(member) = member {
            member.raft.shutdown().await;
            member.node.shutdown().await;
        }
    }

    /// The running member `id`.
    pub fn member(&self, id: NodeId) -> Option<Arc<Member>> {
        lock(&self.members).get(&id).cloned()
    }

    /// Every running member.
    pub fn members(&self) -> Vec<Arc<Member>> {
        lock(&self.members).values().cloned().collect()
    }

    /// Waits (up to 20 s) for a running member that leads with its executor running.
    pub async fn leader(&self) -> Arc<Member> {
        self.leader_above(Epoch(0)).await
    }

    /// Waits (up to 20 s) for a running member leading at an epoch above `above` with its
    /// executor running.
    pub async fn leader_above(&self, above: Epoch) -> Arc<Member> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self.members().into_iter().find(|m| {
                let l = m.consensus.leadership().get();
                l.is_leader && l.epoch > above && m.node.executor().is_running()
            });
            if let Some(member) = found {
                return member;
            }
            if Instant::now() >= deadline {
                panic!("no leader above {above} within 20 s: {}", self.describe());
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// Cuts every Raft link between member `id` and the others, both ways.
    pub fn isolate(&self, id: NodeId) {
        self.raft_net.isolate(id, self.stores.keys().copied());
    }

    /// Restores every Raft link.
    pub fn heal(&self) {
        self.raft_net.heal();
    }

    /// Creates database `name` (RF `rf`) on the leader and waits for the procedure there.
    pub async fn create_database(
        &self,
        name: &str,
        rf: u8,
        schema_groups: u32,
        data_groups: u32,
    ) -> ProcedureInfo {
        let schema = DatabaseSchema {
            name: db(name),
            schema_replication_factor: ReplicationFactor::new(rf).expect("rf"),
            data_replication_factor: ReplicationFactor::new(rf).expect("rf"),
        };
        // Submitted with a request key, so a retry on a new leader finds the first one.
        let key = Some(format!("create-{name}"));
        let start = Instant::now();
        let id = loop {
            let leader = self.leader().await;
            match leader
                .node
                .create_database(schema.clone(), schema_groups, data_groups, key.clone())
                .await
            {
                Ok(id) => break id,
                Err(e) if e.is_retryable() && start.elapsed() < Duration::from_secs(20) => {
                    smol::Timer::after(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("create {name} refused: {e}"),
            }
        };
        self.wait_finished(id, Duration::from_secs(30)).await
    }

    /// Waits until `check` holds (polling every 20 ms), panicking after `limit`.
    pub async fn eventually(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while !check() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// Waits until procedure `id` is finished on whichever member leads (following leader
    /// changes), up to `limit`.
    pub async fn wait_finished(&self, id: ProcedureId, limit: Duration) -> ProcedureInfo {
        let start = Instant::now();
        loop {
            if let Some(leader) = self.members().into_iter().find(|m| {
                m.consensus.leadership().get().is_leader && m.node.executor().is_running()
            }) && let Some(info) = leader.node.get_procedure(id)
                && is_finished(&info)
            {
                return info;
            }
            if start.elapsed() >= limit {
                panic!("{id} not finished after {limit:?}: {}", self.describe());
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        }
    }

    /// Every member's view (leadership, Raft state, unfinished procedures), for failures.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for m in self.members() {
            let metrics = m.raft.metrics();
            out += &format!(
                "\n  member {}: {:?} executor running {} raft {:?} term {} leader {:?} applied {:?} failed {:?}",
                m.id,
                m.consensus.leadership().get(),
                m.node.executor().is_running(),
                metrics.state,
                metrics.current_term,
                metrics.current_leader,
                metrics.last_applied,
                metrics.running_state.as_ref().err(),
            );
            for p in m.node.list_procedures().iter().filter(|p| !is_finished(p)) {
                out += &format!(
                    "\n    {} {} {:?} {} attempts {} waiting {:?} error {:?}",
                    p.id,
                    p.type_name,
                    p.status,
                    p.state_name,
                    p.attempts,
                    p.waiting_for,
                    p.last_error
                );
            }
        }
        for (i, slot) in self.data_nodes.iter().enumerate() {
            out += &format!(
                "\n  datanode {i}: epoch {:?} running tasks {:?}",
                slot.node().map(|n| n.highest_epoch()),
                slot.node().map(|n| n.task_counts().running)
            );
        }
        out
    }

    /// Bytes of region data (live or being removed) on every DataNode.
    pub fn region_bytes(&self) -> u64 {
        self.data_nodes.region_bytes()
    }

    /// Replicas (live or being removed) on every DataNode.
    pub async fn replica_count(&self) -> usize {
        self.data_nodes.replica_count().await
    }

    /// Maintain tasks running on every DataNode that is up.
    pub fn running_tasks(&self) -> usize {
        self.data_nodes.running_tasks()
    }

    /// How many deletions of `region` each DataNode executed, by DataNode index.
    pub fn deletions(&self, region: RegionId) -> Vec<u64> {
        self.data_nodes.deletions(region)
    }

    /// Task ids some DataNode journaled as accepted more than once (a task id run twice).
    pub async fn task_ids_accepted_twice(&self) -> Vec<(usize, Vec<shoal_core::model::TaskId>)> {
        let mut out = Vec::new();
        for (i, slot) in self.data_nodes.iter().enumerate() {
            let twice = slot.task_ids_accepted_twice().await;
            if !twice.is_empty() {
                out.push((i, twice));
            }
        }
        out
    }

    /// Stops every member and DataNode.
    pub async fn shutdown(&self) {
        for member in self.members() {
            self.kill(member.id).await;
        }
        for slot in &self.data_nodes {
            slot.stop(&self.network);
        }
    }
}

/// Whether a procedure will never run again.
pub fn is_finished(info: &ProcedureInfo) -> bool {
    matches!(
        info.status,
        ProcedureView::Succeeded | ProcedureView::Failed | ProcedureView::RolledBack
    )
}
