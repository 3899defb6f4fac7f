//! The Raft-mode world: the simulator as shoal-consensus-raft's runtime ([`SimHooks`]),
//! the group's members, the DataNodes, crashes and restarts, and the client.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shoal_consensus_raft::rt::hooks::HookFuture;
use shoal_consensus_raft::rt::{RuntimeHooks, with_hooks};
use shoal_consensus_raft::{InprocRaftNetwork, NodeId, RaftConfig, RaftConsensus, RaftStores};
use shoal_core::api::DataNodeApi;
use shoal_core::confignode::ConfigNode;
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::consensus::Consensus;
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{DataNodeId, DataNodeLocation};
use shoal_core::runtime::{BoxFuture, Clock, Millis, Runtime, Spawner};
use shoal_core::storage::faulty::FaultyRegionStore;
use shoal_core::storage::{MemRegionStore, MemTaskJournal};
use shoal_transport_inproc::InprocNetwork;

use super::{DATA_NODES, MEMBERS};
use crate::executor::{Executor, SharedRng, SimClock, SimRng, Tag};
use crate::scenario::Tuning;
use crate::world::confignode_config;

/// Tag of the world's own tasks (the DataNode network's delivery).
pub(super) const WORLD: Tag = 0;
/// Tag of the client's requests.
pub(super) const CLIENT: Tag = 1;

pub(super) fn member_tag(id: NodeId) -> Tag {
    10 + id as Tag
}

pub(super) fn dn_tag(j: usize) -> Tag {
    100 + j as Tag
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulator as shoal-consensus-raft's runtime: tasks on the seeded executor under one
/// tag, sleeps on the virtual clock, randomness from the seed.
pub struct SimHooks {
    exec: Executor,
    clock: SimClock,
    tag: Tag,
    rng: Arc<SharedRng>,
}

impl RuntimeHooks for SimHooks {
    fn spawn(&self, future: HookFuture) {
        self.exec.spawn(self.tag, future);
    }

    fn now(&self) -> Duration {
        Duration::from_millis(self.clock.now_ms())
    }

    fn sleep_until(&self, at: Duration) -> HookFuture {
        let now = self.now();
        // Rounded up: waking before the deadline would only sleep again.
        let wait = at.saturating_sub(now);
        let millis = wait.as_nanos().div_ceil(1_000_000) as u64;
        self.clock.sleep(Duration::from_millis(millis))
    }

    fn random_u64(&self) -> u64 {
        shoal_core::runtime::Rng::next_u64(self.rng.as_ref())
    }
}

/// Core's spawner for one tag, with the tag's hooks installed in every task.
struct HookedSpawner {
    hooks: Arc<SimHooks>,
}

impl Spawner for HookedSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        let hooks: Arc<dyn RuntimeHooks> = self.hooks.clone();
        self.hooks
            .exec
            .spawn(self.hooks.tag, Box::pin(with_hooks(hooks, future)));
    }
}

/// DataNode clients of one ConfigNode on the in-process network.
struct Clients {
    network: InprocNetwork<dyn DataNodeApi>,
    from: String,
}

impl DataNodeClients for Clients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        Arc::new(self.network.client(&self.from, &location.address))
    }
}

pub(super) struct Member {
    pub(super) raft: Arc<RaftConsensus>,
    pub(super) node: Arc<ConfigNode>,
}

pub(super) struct DataNodeSlot {
    pub(super) address: String,
    pub(super) store: FaultyRegionStore,
    pub(super) mem: MemRegionStore,
    pub(super) journal: MemTaskJournal,
    pub(super) node: Arc<Mutex<Option<DataNode>>>,
}

/// One Raft-mode world.
pub(super) struct RaftWorld {
    pub(super) exec: Executor,
    pub(super) clock: SimClock,
    pub(super) seed: u64,
    pub(super) network: InprocNetwork<dyn DataNodeApi>,
    pub(super) raft_net: InprocRaftNetwork,
    pub(super) stores: BTreeMap<NodeId, RaftStores>,
    pub(super) members: BTreeMap<NodeId, Arc<Mutex<Option<Member>>>>,
    pub(super) data_nodes: Vec<DataNodeSlot>,
    /// The run's procedure timings, drawn from the seed as in the single-log mode.
    pub(super) tuning: Tuning,
    /// Entries between two Raft snapshots (few: a member down for a while then catches up
    /// from a snapshot, its log purged behind it).
    pub(super) snapshot_every: u64,
    pub(super) trace: Arc<Mutex<Vec<String>>>,
}

impl RaftWorld {
    pub(super) fn hooks(&self, tag: Tag) -> Arc<SimHooks> {
        Arc::new(SimHooks {
            exec: self.exec.clone(),
            clock: self.clock.clone(),
            tag,
            rng: Arc::new(SharedRng::new(SimRng::new(
                self.seed,
                1000 + u64::from(tag),
            ))),
        })
    }

    pub(super) fn runtime(&self, tag: Tag) -> Runtime {
        let hooks = self.hooks(tag);
        Runtime {
            clock: Arc::new(self.clock.clone()),
            rng: hooks.rng.clone(),
            spawner: Arc::new(HookedSpawner { hooks }),
        }
    }

    pub(super) fn note(&self, what: String) {
        lock(&self.trace).push(format!("{:>8} {what}", self.clock.now_ms()));
    }

    pub(super) fn new(seed: u64) -> Self {
        let exec = Executor::new();
        let clock = SimClock::new();
        let world_rt = Runtime {
            clock: Arc::new(clock.clone()),
            rng: Arc::new(SharedRng::new(SimRng::new(seed, 999))),
            spawner: Arc::new(HookedSpawner {
                hooks: Arc::new(SimHooks {
                    exec: exec.clone(),
                    clock: clock.clone(),
                    tag: WORLD,
                    rng: Arc::new(SharedRng::new(SimRng::new(seed, 998))),
                }),
            }),
        };
        let network = InprocNetwork::<dyn DataNodeApi>::new(world_rt, Duration::from_secs(2));
        let data_nodes = (0..DATA_NODES)
            .map(|j| {
                let mem = MemRegionStore::new(Arc::new(clock.clone()));
                DataNodeSlot {
                    address: format!("datanode-{j}:7000"),
                    store: FaultyRegionStore::new(Arc::new(mem.clone()), Arc::new(clock.clone())),
                    mem,
                    journal: MemTaskJournal::new(),
                    node: Arc::new(Mutex::new(None)),
                }
            })
            .collect();
        Self {
            exec,
            clock,
            seed,
            network,
            raft_net: InprocRaftNetwork::new(Duration::from_millis(500)),
            stores: (1..=MEMBERS).map(|id| (id, RaftStores::memory())).collect(),
            members: (1..=MEMBERS)
                .map(|id| (id, Arc::new(Mutex::new(None))))
                .collect(),
            data_nodes,
            tuning: Tuning::draw(&mut SimRng::new(seed, 3)),
            snapshot_every: *SimRng::new(seed, 4).pick(&[20, 50, 200]).unwrap_or(&50),
            trace: Arc::default(),
        }
    }

    pub(super) fn member_address(id: NodeId) -> String {
        format!("confignode-{id}:7100")
    }

    /// Starts (or restarts) member `id` over its stores; bootstraps the group if asked.
    pub(super) fn start_member(&self, id: NodeId, bootstrap: bool) {
        let tag = member_tag(id);
        let runtime = self.runtime(tag);
        let stores = self.stores[&id].clone();
        let transport = self.raft_net.transport(id);
        let raft_net = self.raft_net.clone();
        let network = self.network.clone();
        let slot = self.members[&id].clone();
        let cn_config = confignode_config(&self.tuning);
        let snapshot_every = self.snapshot_every;
        let members: BTreeMap<NodeId, String> = (1..=MEMBERS)
            .map(|m| (m, Self::member_address(m)))
            .collect();
        let start = async move {
            // Production timing (heartbeat, election timeouts), in virtual time.
            let config = RaftConfig {
                propose_timeout: Duration::from_secs(5),
                snapshot_every,
                keep_after_snapshot: 5,
                ..RaftConfig::default()
            };
            let Ok(raft) = RaftConsensus::start(id, config, stores, transport).await else {
                return;
            };
            let raft = Arc::new(raft);
            raft_net.host(id, raft.server());
            if bootstrap {
                let _ = raft.bootstrap(members).await;
            }
            let Ok(node) = ConfigNode::new(
                raft.clone() as Arc<dyn Consensus>,
                Arc::new(Clients {
                    network,
                    from: format!("cn-{id}"),
                }),
                runtime.clone(),
                cn_config,
            ) else {
                return;
            };
            node.start();
            *lock(&slot) = Some(Member { raft, node });
        };
        self.runtime(tag).spawner.spawn("member", Box::pin(start));
        self.note(format!("start member {id}"));
    }

    /// Kills member `id` as a crash would: every task of it dropped where it stands.
    pub(super) fn kill_member(&self, id: NodeId) {
        self.raft_net.stop(id);
        let member = lock(&self.members[&id]).take();
        self.exec.cancel(member_tag(id));
        drop(member);
        self.note(format!("kill member {id}"));
    }

    pub(super) fn start_data_node(&self, j: usize) {
        let slot = &self.data_nodes[j];
        let runtime = self.runtime(dn_tag(j));
        let store = Arc::new(slot.store.clone());
        let journal = Arc::new(slot.journal.clone());
        let holder = slot.node.clone();
        let network = self.network.clone();
        let address = slot.address.clone();
        let spawner = runtime.spawner.clone();
        let open = async move {
            if let Ok(node) =
                DataNode::open(runtime.clone(), store, journal, DataNodeConfig::default()).await
            {
                node.set_id(DataNodeId(j as u32));
                *lock(&holder) = Some(node.clone());
                network.host_on(&address, Arc::new(node), runtime.spawner.clone());
            }
        };
        spawner.spawn("datanode", Box::pin(open));
        self.note(format!("start DataNode {j}"));
    }

    pub(super) fn crash_data_node(&self, j: usize) {
        let slot = &self.data_nodes[j];
        if let Some(node) = lock(&slot.node).take() {
            node.halt();
        }
        // What it staged in its journal and no sync covered is lost with the process.
        slot.journal.crash();
        self.network.stop(&slot.address);
        self.exec.cancel(dn_tag(j));
        self.note(format!("crash DataNode {j}"));
    }

    /// The member that publishes leadership with its executor running, if one does.
    pub(super) fn leader(&self) -> Option<(NodeId, Arc<ConfigNode>, Arc<RaftConsensus>)> {
        self.members.iter().find_map(|(id, slot)| {
            let slot = lock(slot);
            let member = slot.as_ref()?;
            (member.raft.leadership().get().is_leader && member.node.executor().is_running())
                .then(|| (*id, member.node.clone(), member.raft.clone()))
        })
    }

    /// Runs the world until virtual time `until` (or until nothing more can happen).
    pub(super) fn run_until(&self, until: Millis, rng: &mut SimRng, polls: &mut u64) {
        loop {
            while self.clock.now_ms() <= until && self.exec.step(rng).is_some() {
                *polls += 1;
            }
            match self.clock.next_deadline() {
                Some(d) if d <= until => self.clock.advance_to(d),
                _ => {
                    self.clock.advance_to(until);
                    while self.exec.step(rng).is_some() {
                        *polls += 1;
                    }
                    return;
                }
            }
        }
    }

    /// Submits a request from the client, retried (under its request key) until some
    /// leader takes it or `tries` run out.
    pub(super) fn client<F>(&self, what: String, call: F)
    where
        F: Fn(Arc<ConfigNode>) -> BoxFuture<bool> + Send + Sync + 'static,
    {
        let members: Vec<Arc<Mutex<Option<Member>>>> = self.members.values().cloned().collect();
        let clock = self.clock.clone();
        let trace = self.trace.clone();
        let work = async move {
            for _ in 0..60 {
                let leader = members.iter().find_map(|slot| {
                    let slot = lock(slot);
                    let m = slot.as_ref()?;
                    (m.raft.leadership().get().is_leader && m.node.executor().is_running())
                        .then(|| m.node.clone())
                });
                if let Some(node) = leader
                    && call(node).await
                {
                    lock(&trace).push(format!("{:>8} {what}: accepted", clock.now_ms()));
                    return;
                }
                clock.sleep(Duration::from_millis(500)).await;
            }
            lock(&trace).push(format!("{:>8} {what}: gave up", clock.now_ms()));
        };
        self.runtime(CLIENT).spawner.spawn("client", Box::pin(work));
    }
}
