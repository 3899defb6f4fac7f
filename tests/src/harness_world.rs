//! The world the crash harness runs the region procedures in: three real DataNodes over
//! in-memory stores, called directly (no network), optionally adversarial — creates on one
//! DataNode that run but lose their reply, replicas left by such creates, queued creates, and
//! the region cleaner running beside the executor.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, RegionChunk,
    RegionDigest, SubmitOutcome, TaskStatus,
};
use shoal_core::confignode::cleaner::RegionCleaner;
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::confignode::fence::EpochHealer;
use shoal_core::confignode::inflight::InflightCreates;
use shoal_core::consensus::Consensus;
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseSchema, Epoch, RegionId, RegionKind, RegionReplicaSet,
    ReplicationFactor, TaskId,
};
use shoal_core::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, NewRegionMaintainTask,
    OfferRegionMaintainTasks, RegisterDataNode, ReserveRegionIds,
};
use shoal_core::procedure::BackoffPolicy;
use shoal_core::procedures::{LifecycleConfig, RegionEnv};
use shoal_core::runtime::{BoxFuture, Runtime};
use shoal_core::state::{ClusterState, RegionMaintainKind};
use shoal_core::storage::{MemRegionStore, MemTaskJournal, RegionStore, TaskJournal};
use shoal_runtime_smol::smol_runtime;

use crate::cluster::{accepted_twice, db};

/// DataNodes in every world.
pub const NODES: u32 = 3;

/// The DataNode whose create replies an adversarial world loses.
pub const LOSSY: u32 = 2;

/// The address of DataNode `i`.
pub fn address(i: u32) -> String {
    format!("127.0.0.1:{}", 18000 + i)
}

/// The two data groups every world with groups holds.
pub fn group_ids() -> [RegionId; 2] {
    [
        RegionId::new(RegionKind::Data, 0),
        RegionId::new(RegionKind::Data, 1),
    ]
}

/// How a world is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOptions {
    /// Replicas of [`group_ids`] exist on every DataNode (with 100 bytes each).
    pub groups: bool,
    /// Creates to [`LOSSY`] run but lose their reply, until [`settled`] sees every
    /// procedure finished.
    pub lossy_creates: bool,
}

struct WorldNode {
    node: DataNode,
    journal: MemTaskJournal,
    /// Whether create replies are lost now (only on [`LOSSY`] in a lossy world).
    losing: Option<Arc<AtomicBool>>,
}

/// The DataNodes of one harness run.
pub struct World {
    nodes: BTreeMap<String, WorldNode>,
}

impl DataNodeClients for World {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        let node = self.nodes.get(&location.address).expect("known DataNode");
        match &node.losing {
            Some(losing) => Arc::new(LosesCreateReplies {
                node: node.node.clone(),
                losing: losing.clone(),
            }),
            None => Arc::new(node.node.clone()),
        }
    }
}

/// A DataNode whose create replies are lost, after the create ran, while `losing` is set.
struct LosesCreateReplies {
    node: DataNode,
    losing: Arc<AtomicBool>,
}

#[async_trait]
impl DataNodeApi for LosesCreateReplies {
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError> {
        let result = self.node.create_region(epoch, request).await;
        if result.is_ok() && self.losing.load(Ordering::SeqCst) {
            return Err(ApiError::Timeout(Duration::from_secs(1)));
        }
        result
    }
    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError> {
        self.node.delete_region(epoch, region).await
    }
    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.node.write_region(region, bytes).await
    }
    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError> {
        self.node.submit_task(epoch, task).await
    }
    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        self.node.task_result(task_id, wait).await
    }
    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        self.node.ack_task(epoch, task_id).await
    }
    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.node.heartbeat(epoch).await
    }
    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        self.node.read_region(region, offset, max_len).await
    }
    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.node.region_digest(region, len).await
    }
}

/// The region procedures' environment over a fresh world built per `options`.
pub fn region_env(options: WorldOptions) -> RegionEnv {
    let runtime = smol_runtime();
    let mut nodes = BTreeMap::new();
    for i in 0..NODES {
        let mem = MemRegionStore::new(runtime.clock.clone());
        let journal = MemTaskJournal::new();
        let node = futures_lite::future::block_on(DataNode::open(
            runtime.clone(),
            Arc::new(mem.clone()),
            Arc::new(journal.clone()),
            DataNodeConfig::default(),
        ))
        .expect("DataNode opens");
        if options.groups {
            for region in group_ids() {
                let request = CreateRegionRequest {
                    region,
                    database: db("db"),
                    peers: (0..NODES).map(DataNodeId).collect(),
                    generation: 0,
                };
                futures_lite::future::block_on(async {
                    node.create_region(Epoch(0), request)
                        .await
                        .expect("replica");
                    mem.append(region, &[1; 100]).await.expect("data");
                });
            }
        }
        let losing = (options.lossy_creates && i == LOSSY).then(|| Arc::new(AtomicBool::new(true)));
        nodes.insert(
            address(i),
            WorldNode {
                node,
                journal,
                losing,
            },
        );
    }
    let world = Arc::new(World { nodes });
    worlds().lock().unwrap_or_else(|p| p.into_inner()).insert(
        world_key(&(world.clone() as Arc<dyn DataNodeClients>)),
        world.clone(),
    );
    RegionEnv {
        clients: world,
        inflight: Arc::new(InflightCreates::default()),
        healer: Arc::new(EpochHealer::new()),
        observed: Default::default(),
        config: LifecycleConfig {
            create_retry_window: Duration::from_secs(1),
            ..LifecycleConfig::default()
        },
    }
}

/// Every world built so far, by the identity of its clients handle: the harness hands
/// `observe` only the `RegionEnv`, which reaches the DataNodes' journals through this.
fn worlds() -> &'static Mutex<BTreeMap<usize, Arc<World>>> {
    static WORLDS: OnceLock<Mutex<BTreeMap<usize, Arc<World>>>> = OnceLock::new();
    WORLDS.get_or_init(Mutex::default)
}

fn world_key(clients: &Arc<dyn DataNodeClients>) -> usize {
    Arc::as_ptr(clients) as *const () as usize
}

/// The harness's settle condition for these worlds: once every procedure has finished, lost
/// replies stop (so the cleaner can complete what the procedure left queued), and the run is
/// settled when the create queue is empty.
pub fn settled(state: &ClusterState, env: &RegionEnv) -> bool {
    if state.unfinished_procedures().next().is_none() {
        let worlds = worlds().lock().unwrap_or_else(|p| p.into_inner());
        for node in worlds[&world_key(&env.clients)].nodes.values() {
            if let Some(losing) = &node.losing {
                losing.store(false, Ordering::SeqCst);
            }
        }
    }
    state.create_queue.is_empty()
}

fn journal_of(env: &RegionEnv, address: &str) -> MemTaskJournal {
    let worlds = worlds().lock().unwrap_or_else(|p| p.into_inner());
    worlds[&world_key(&env.clients)].nodes[address]
        .journal
        .clone()
}

/// The region cleaner as a harness companion: it runs on every leader, racing the
/// procedure under test.
pub fn cleaner(
    consensus: Arc<dyn Consensus>,
    runtime: Runtime,
    env: Arc<RegionEnv>,
    epoch: Epoch,
) -> BoxFuture<()> {
    let cleaner = RegionCleaner::new(
        consensus,
        env.clients.clone(),
        runtime,
        env.inflight.clone(),
        env.healer.clone(),
        BackoffPolicy {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(2),
            max_attempts: None,
        },
    );
    Box::pin(async move { cleaner.run(epoch, Duration::from_millis(500)).await })
}

/// The test database's schema (RF 3).
pub fn schema() -> DatabaseSchema {
    DatabaseSchema {
        name: db("db"),
        schema_replication_factor: ReplicationFactor::new(3).expect("rf"),
        data_replication_factor: ReplicationFactor::new(3).expect("rf"),
    }
}

/// Registers the world's DataNodes.
pub fn registered() -> Vec<ConfigPlan> {
    (0..NODES)
        .map(|i| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: address(i),
            })
        })
        .collect()
}

/// Database `db` with [`group_ids`] published on every DataNode; with `queued`, published
/// on all but [`LOSSY`], whose replicas exist (their creates' replies were lost) and whose
/// creates are queued for the region cleaner.
pub fn published_groups(queued: bool) -> Vec<ConfigPlan> {
    let mut plans = registered();
    plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
        schema: schema(),
        created_by: None,
    }));
    plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count: 2,
        for_procedure: None,
    }));
    let all: Vec<DataNodeId> = (0..NODES).map(DataNodeId).collect();
    let published: Vec<DataNodeId> = all
        .iter()
        .copied()
        .filter(|n| !queued || n.0 != LOSSY)
        .collect();
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("db"),
        groups: group_ids()
            .into_iter()
            .map(|r| RegionReplicaSet::new(r, published.clone()))
            .collect(),
    }));
    if queued {
        let target = DataNodeLocation::new(DataNodeId(LOSSY), address(LOSSY)).expect("address");
        plans.push(ConfigPlan::OfferRegionMaintainTasks(
            OfferRegionMaintainTasks {
                tasks: group_ids()
                    .into_iter()
                    .map(|region| NewRegionMaintainTask {
                        kind: RegionMaintainKind::Create,
                        database: db("db"),
                        region: RegionReplicaSet::new(region, all.clone()),
                        target: target.clone(),
                    })
                    .collect(),
            },
        ));
    }
    plans
}

/// What must equal the uninterrupted run: metadata (with footprints), every DataNode's
/// replicas, and the task ids a DataNode accepted twice (none: a task id runs once,
/// whatever the crash).
pub type Observed = (String, Vec<(String, Vec<(RegionId, u64)>, Vec<TaskId>)>);

/// Observes the end state of a run.
pub fn observe(state: &ClusterState, env: &RegionEnv) -> Observed {
    let metadata = format!(
        "{:?} {:?} {:?} {:?}",
        state.databases, state.partition_tables, state.create_queue, state.footprints
    );
    let mut replicas = Vec::new();
    for info in state.data_nodes.values() {
        let client = env.clients.client(&info.location);
        // A heartbeat under the highest epoch reads the report without being fenced.
        let report =
            futures_lite::future::block_on(client.heartbeat(Epoch(u64::MAX))).expect("heartbeat");
        let regions = report.regions.iter().map(|r| (r.region, r.bytes)).collect();
        let journal = journal_of(env, &info.location.address);
        let records = futures_lite::future::block_on(journal.load()).expect("journal");
        replicas.push((
            info.location.address.clone(),
            regions,
            accepted_twice(&records),
        ));
    }
    (metadata, replicas)
}

/// DataNodes in a migration world: one more than [`NODES`], so a replica has somewhere to go.
pub const MIGRATION_NODES: u32 = NODES + 1;

/// Bytes of the migrated group's replicas (distinct per offset, equal on every replica).
pub const MIGRATION_BYTES: usize = 40 * 1024;

/// The data every replica of the migrated group holds.
pub fn migration_data() -> Vec<u8> {
    (0..MIGRATION_BYTES).map(|i| (i % 251) as u8).collect()
}

/// The region procedures' environment over a migration world: [`MIGRATION_NODES`]
/// DataNodes reaching each other directly (copy tasks pull from their source), with replicas
/// of `group_ids()[0]` on the first [`NODES`] holding [`migration_data`]. Copies go in
/// 4 KiB chunks, so a copy takes several reads. With `lossy`, creates to [`LOSSY`] run but
/// lose their reply, as in [`region_env`].
pub fn migration_env(lossy: bool) -> RegionEnv {
    let runtime = smol_runtime();
    let mut nodes = BTreeMap::new();
    let mut opened = Vec::new();
    for i in 0..MIGRATION_NODES {
        let mem = MemRegionStore::new(runtime.clock.clone());
        let journal = MemTaskJournal::new();
        let node = futures_lite::future::block_on(DataNode::open(
            runtime.clone(),
            Arc::new(mem.clone()),
            Arc::new(journal.clone()),
            DataNodeConfig {
                copy_chunk_bytes: 4096,
                copy_stall_timeout: Duration::from_secs(2),
                ..DataNodeConfig::default()
            },
        ))
        .expect("DataNode opens");
        if i < NODES {
            let region = group_ids()[0];
            let request = CreateRegionRequest {
                region,
                database: db("db"),
                peers: (0..NODES).map(DataNodeId).collect(),
                generation: 0,
            };
            futures_lite::future::block_on(async {
                node.create_region(Epoch(0), request)
                    .await
                    .expect("replica");
                mem.append(region, &migration_data()).await.expect("data");
            });
        }
        let losing = (lossy && i == LOSSY).then(|| Arc::new(AtomicBool::new(true)));
        opened.push(node.clone());
        nodes.insert(
            address(i),
            WorldNode {
                node,
                journal,
                losing,
            },
        );
    }
    let world = Arc::new(World { nodes });
    for node in opened {
        node.set_peer_clients(world.clone());
    }
    worlds().lock().unwrap_or_else(|p| p.into_inner()).insert(
        world_key(&(world.clone() as Arc<dyn DataNodeClients>)),
        world.clone(),
    );
    RegionEnv {
        clients: world,
        inflight: Arc::new(InflightCreates::default()),
        healer: Arc::new(EpochHealer::new()),
        observed: Default::default(),
        config: LifecycleConfig {
            create_retry_window: Duration::from_secs(1),
            poll_wait: Duration::from_millis(200),
            ..LifecycleConfig::default()
        },
    }
}

/// The metadata of a migration world: its DataNodes registered, database `db` with
/// `group_ids()[0]` published on the first [`NODES`].
pub fn migration_setup() -> Vec<ConfigPlan> {
    let mut plans: Vec<ConfigPlan> = (0..MIGRATION_NODES)
        .map(|i| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: address(i),
            })
        })
        .collect();
    plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
        schema: schema(),
        created_by: None,
    }));
    plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count: 1,
        for_procedure: None,
    }));
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("db"),
        groups: vec![RegionReplicaSet::new(
            group_ids()[0],
            (0..NODES).map(DataNodeId).collect(),
        )],
    }));
    plans
}
