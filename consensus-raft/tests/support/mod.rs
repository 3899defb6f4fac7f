//! A 3-node (or larger) in-process Raft group for scenario tests.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_consensus_raft::{InprocRaftNetwork, NodeId, RaftConfig, RaftConsensus, RaftStores};
use shoal_core::consensus::Consensus;
use shoal_core::model::Epoch;
use shoal_core::plan::{ConfigPlan, RegisterDataNode};
use shoal_core::state::ClusterState;

/// How long a scenario waits for something that should happen quickly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A plan that registers a new DataNode at `address` (each commit adds one node).
pub fn register(address: &str) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: address.to_string(),
    })
}

/// Polls `check` every few milliseconds until it holds; panics with `what` after `PATIENCE`.
pub async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

/// The group: stores outlive node restarts; the network is shared.
pub struct Group {
    pub net: InprocRaftNetwork,
    pub config: RaftConfig,
    pub stores: BTreeMap<NodeId, RaftStores>,
    pub nodes: BTreeMap<NodeId, Arc<RaftConsensus>>,
}

pub fn addr(id: NodeId) -> String {
    format!("confignode-{id}:7100")
}

impl Group {
    /// Nodes `ids` over `stores`, started but not bootstrapped.
    pub async fn new(stores: BTreeMap<NodeId, RaftStores>) -> Self {
        let mut group = Self {
            net: InprocRaftNetwork::new(Duration::from_millis(500)),
            config: RaftConfig::for_tests(),
            stores,
            nodes: BTreeMap::new(),
        };
        let ids: Vec<NodeId> = group.stores.keys().copied().collect();
        for id in ids {
            group.start(id).await;
        }
        group
    }

    /// A bootstrapped group of `ids` on in-memory stores.
    pub async fn memory(ids: &[NodeId]) -> Self {
        let stores = ids.iter().map(|id| (*id, RaftStores::memory())).collect();
        let group = Self::new(stores).await;
        group.bootstrap(ids).await;
        group
    }

    /// Bootstraps the group with `members` through the first of them.
    pub async fn bootstrap(&self, members: &[NodeId]) {
        let map = members.iter().map(|id| (*id, addr(*id))).collect();
        self.node(members[0])
            .bootstrap(map)
            .await
            .expect("bootstrap");
    }

    /// Starts (or restarts) node `id` over its stores and hosts it.
    pub async fn start(&mut self, id: NodeId) {
        let stores = self.stores[&id].clone();
        let node = RaftConsensus::start(id, self.config.clone(), stores, self.net.transport(id))
            .await
            .expect("start node");
        self.net.host(id, node.server());
        self.nodes.insert(id, Arc::new(node));
    }

    /// Stops node `id` as a crash would: it stops answering and leading.
    pub async fn stop(&mut self, id: NodeId) {
        self.net.stop(id);
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    pub fn node(&self, id: NodeId) -> &Arc<RaftConsensus> {
        &self.nodes[&id]
    }

    /// Waits until exactly one running node publishes leadership; returns it and its epoch.
    pub async fn leader(&self) -> (NodeId, Epoch) {
        let mut found = None;
        wait_for("a published leader", || {
            let leaders: Vec<(NodeId, Epoch)> = self
                .nodes
                .iter()
                .filter_map(|(id, n)| {
                    let l = n.leadership().get();
                    l.is_leader.then_some((*id, l.epoch))
                })
                .collect();
            found = (leaders.len() == 1).then(|| leaders[0]);
            found.is_some()
        })
        .await;
        found.expect("leader")
    }

    /// Waits for a published leader other than `old` with an epoch above `above`.
    pub async fn new_leader(&self, old: NodeId, above: Epoch) -> (NodeId, Epoch) {
        let mut found = None;
        wait_for("a new leader", || {
            found = self.nodes.iter().find_map(|(id, n)| {
                let l = n.leadership().get();
                (*id != old && l.is_leader && l.epoch > above).then_some((*id, l.epoch))
            });
            found.is_some()
        })
        .await;
        found.expect("new leader")
    }

    pub fn state(&self, id: NodeId) -> ClusterState {
        self.node(id).state().snapshot()
    }

    pub fn data_nodes(&self, id: NodeId) -> usize {
        self.node(id).state().read(|s| s.data_nodes.len())
    }

    /// Waits until every running node's state equals `id`'s.
    pub async fn converged_on(&self, id: NodeId) {
        wait_for("every node to converge", || {
            let want = self.state(id);
            self.nodes.keys().all(|other| self.state(*other) == want)
        })
        .await;
    }
}
