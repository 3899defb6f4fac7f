//! Raft between ConfigNodes over real loopback TCP: a 3-node group commits and elects over
//! Cap'n Proto, a follower that missed purged entries catches up from a snapshot sent in
//! checksummed chunks, a refused login reaches nothing, and the group API answers followers
//! with the leader's address.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_consensus_raft::{
    ConfigNodeGroupApi, NodeId, RaftConfig, RaftConsensus, RaftStores, TransportError,
};
use shoal_core::api::ApiError;
use shoal_core::consensus::Consensus;
use shoal_core::model::Epoch;
use shoal_core::plan::{ConfigPlan, RegisterDataNode};
use shoal_transport_capnp::{
    CapnpConfigNodeGroupClient, CapnpRaftTransport, ClientOptions, RaftCallOptions, Role,
    RpcRuntime, ServedApis, ServerHandle, ServerOptions,
};

const SECRET: &str = "raft peers share this";

fn register(address: &str) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: address.to_string(),
    })
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        smol::Timer::after(Duration::from_millis(10)).await;
    }
}

/// One ConfigNode's Raft on its own RPC thread, served at `addr`.
struct Member {
    consensus: Arc<RaftConsensus>,
    server: Option<ServerHandle>,
}

struct Group {
    stores: BTreeMap<NodeId, RaftStores>,
    addrs: BTreeMap<NodeId, String>,
    members: BTreeMap<NodeId, Member>,
    chunk_size: usize,
}

impl Group {
    /// Binds a listener per node first (ports are then known), then starts each node.
    async fn start(ids: &[NodeId], chunk_size: usize) -> Group {
        let mut group = Group {
            stores: ids.iter().map(|id| (*id, RaftStores::memory())).collect(),
            addrs: BTreeMap::new(),
            members: BTreeMap::new(),
            chunk_size,
        };
        for id in ids {
            // Reserve a free port, then serve on it.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            group.addrs.insert(*id, format!("127.0.0.1:{port}"));
        }
        for id in ids {
            group.start_member(*id).await;
        }
        group
    }

    async fn start_member(&mut self, id: NodeId) {
        let rpc = RpcRuntime::start(&format!("cn-{id}")).expect("rpc thread");
        let transport = CapnpRaftTransport::new(
            &rpc,
            id,
            ClientOptions::new(Role::ConfigNode, SECRET),
            RaftCallOptions {
                chunk_size: self.chunk_size,
                ..RaftCallOptions::default()
            },
        );
        let consensus = Arc::new(
            RaftConsensus::start(
                id,
                RaftConfig::for_tests(),
                self.stores[&id].clone(),
                Arc::new(transport),
            )
            .await
            .expect("start"),
        );
        let apis = ServedApis {
            raft: Some(consensus.server()),
            group: Some(consensus.clone() as Arc<dyn ConfigNodeGroupApi>),
            ..ServedApis::default()
        };
        let server = rpc
            .serve(&self.addrs[&id], SECRET, apis, ServerOptions::default())
            .expect("serve");
        self.members.insert(
            id,
            Member {
                consensus,
                server: Some(server),
            },
        );
    }

    async fn stop_member(&mut self, id: NodeId) {
        if let Some(mut member) = self.members.remove(&id) {
            if let Some(server) = member.server.take() {
                server.shutdown().await;
            }
            member.consensus.shutdown().await;
        }
    }

    fn node(&self, id: NodeId) -> &Arc<RaftConsensus> {
        &self.members[&id].consensus
    }

    async fn leader(&self) -> (NodeId, Epoch) {
        let mut found = None;
        wait_for("a leader", || {
            found = self.members.iter().find_map(|(id, m)| {
                let l = m.consensus.leadership().get();
                l.is_leader.then_some((*id, l.epoch))
            });
            found.is_some()
        })
        .await;
        found.expect("leader")
    }

    fn data_nodes(&self, id: NodeId) -> usize {
        self.node(id).state().read(|s| s.data_nodes.len())
    }
}

#[test]
fn a_group_commits_and_fails_over_over_capnp() {
    smol::block_on(async {
        let mut group = Group::start(&[1, 2, 3], 1 << 20).await;
        group
            .node(1)
            .bootstrap(group.addrs.clone())
            .await
            .expect("bootstrap");
        let (leader, epoch) = group.leader().await;
        for i in 0..5 {
            let r = group
                .node(leader)
                .propose(epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        wait_for("every member to apply", || {
            [1, 2, 3].iter().all(|id| group.data_nodes(*id) == 5)
        })
        .await;

        group.stop_member(leader).await;
        let (next, next_epoch) = group.leader().await;
        assert_ne!(next, leader);
        assert!(next_epoch > epoch);
        let r = group
            .node(next)
            .propose(next_epoch, register("after:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    });
}

#[test]
fn a_lagging_follower_catches_up_from_a_chunked_snapshot() {
    smol::block_on(async {
        // 256-byte chunks: the snapshot travels in many of them.
        let mut group = Group::start(&[1, 2, 3], 256).await;
        group
            .node(1)
            .bootstrap(group.addrs.clone())
            .await
            .expect("bootstrap");
        let (leader, epoch) = group.leader().await;
        let lagging = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        group.stop_member(lagging).await;
        for i in 0..30 {
            let r = group
                .node(leader)
                .propose(epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        let up: Vec<NodeId> = group.members.keys().copied().collect();
        for id in up {
            wait_for("the follower to apply", || group.data_nodes(id) == 30).await;
            group.node(id).take_snapshot().await.expect("snapshot");
            group.node(id).purge_log().await.expect("purge");
        }
        group.start_member(lagging).await;
        wait_for("the lagging follower to catch up", || {
            group.data_nodes(lagging) == 30
        })
        .await;
        wait_for("the installed snapshot in its metrics", || {
            group
                .node(lagging)
                .metrics()
                .snapshot
                .is_some_and(|s| s.index >= 30)
        })
        .await;
        assert_eq!(
            group.node(lagging).state().snapshot(),
            group.node(leader).state().snapshot()
        );
    });
}

#[test]
fn followers_answer_group_calls_with_the_leader_address_and_wrong_secrets_reach_nothing() {
    smol::block_on(async {
        let group = Group::start(&[1, 2, 3], 1 << 20).await;
        group
            .node(1)
            .bootstrap(group.addrs.clone())
            .await
            .expect("bootstrap");
        let (leader, _) = group.leader().await;
        let follower = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        let rpc = RpcRuntime::start("admin").expect("rpc");
        let client = CapnpConfigNodeGroupClient::new(
            &rpc,
            &group.addrs[&follower],
            ClientOptions::new(Role::Admin, SECRET),
        )
        .expect("client");
        let status = client.status().await.expect("status");
        assert_eq!(status.node_id, follower);
        assert_eq!(status.members.len(), 3);
        assert_eq!(status.leader_address(), Some(group.addrs[&leader].as_str()));
        let refused = client.remove_member(leader).await;
        assert_eq!(
            refused,
            Err(ApiError::NotLeader {
                leader: Some(group.addrs[&leader].clone())
            })
        );

        // Raft messages from a login with the wrong secret never reach the node.
        let stranger = CapnpRaftTransport::new(
            &rpc,
            99,
            ClientOptions::new(Role::ConfigNode, "wrong"),
            RaftCallOptions::default(),
        );
        let vote = openraft::raft::VoteRequest::new(
            shoal_consensus_raft::types::Vote::new(1_000, 99),
            None,
        );
        let answer = shoal_consensus_raft::RaftTransport::vote(
            &stranger,
            follower,
            &group.addrs[&follower],
            vote,
        )
        .await;
        assert!(
            matches!(&answer, Err(TransportError::Remote { message, .. }) if message.contains("wrong internal secret")),
            "{answer:?}"
        );
        // An admin's login (a right secret, the wrong role) reaches no Raft either.
        let admin = CapnpRaftTransport::new(
            &rpc,
            98,
            ClientOptions::new(Role::Admin, SECRET),
            RaftCallOptions::default(),
        );
        let vote = openraft::raft::VoteRequest::new(
            shoal_consensus_raft::types::Vote::new(1_000, 98),
            None,
        );
        let answer = shoal_consensus_raft::RaftTransport::vote(
            &admin,
            follower,
            &group.addrs[&follower],
            vote,
        )
        .await;
        assert!(
            matches!(&answer, Err(TransportError::Remote { message, .. }) if message.contains("only ConfigNode peers")),
            "{answer:?}"
        );
        assert!(
            group.node(follower).metrics().current_term < 1_000,
            "neither the stranger's nor the admin's vote request changed anything"
        );
    });
}
