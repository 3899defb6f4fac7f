//! The crash harnesses (restart at every step, leader change at every step) over the three
//! region-lifecycle procedures, against real DataNodes over in-memory stores.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use shoal_core::api::{CreateRegionRequest, DataNodeApi};
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::confignode::fence::EpochHealer;
use shoal_core::confignode::inflight::InflightCreates;
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseSchema, Epoch, RegionId, RegionKind, RegionReplicaSet,
    ReplicationFactor, TaskId,
};
use shoal_core::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, RegisterDataNode, ReserveRegionIds,
};
use shoal_core::procedure::ProcedureRegistry;
use shoal_core::procedure::testing::CrashHarness;
use shoal_core::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, LifecycleConfig, RegionEnv,
    RemoveRegionGroupProcedure, register_region_procedures,
};
use shoal_core::state::ClusterState;
use shoal_core::storage::{MemRegionStore, MemTaskJournal, RegionStore, TaskJournal};
use shoal_runtime_smol::{SmolSpawner, smol_runtime};
use shoal_tests::cluster::{accepted_twice, db};

const NODES: u32 = 3;

fn address(i: u32) -> String {
    format!("127.0.0.1:{}", 18000 + i)
}

/// The DataNodes of one harness run: called directly, no network.
struct World {
    nodes: BTreeMap<String, (DataNode, MemRegionStore, MemTaskJournal)>,
}

impl DataNodeClients for World {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        let (node, _, _) = self.nodes.get(&location.address).expect("known DataNode");
        Arc::new(node.clone())
    }
}

/// Builds a world of three DataNodes; `with_groups` creates replicas of data-0 and data-1 on
/// every node, matching [`published_groups`].
fn world(with_groups: bool) -> RegionEnv {
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
        if with_groups {
            for region in group_ids() {
                let request = CreateRegionRequest {
                    region,
                    database: db("db"),
                    peers: (0..NODES).map(DataNodeId).collect(),
                };
                futures_lite::future::block_on(async {
                    node.create_region(Epoch(0), request)
                        .await
                        .expect("replica");
                    mem.append(region, &[1; 100]).await.expect("data");
                });
            }
        }
        nodes.insert(address(i), (node, mem, journal));
    }
    let world = Arc::new(World { nodes });
    journals().lock().unwrap_or_else(|p| p.into_inner()).insert(
        world_key(&(world.clone() as Arc<dyn DataNodeClients>)),
        world.clone(),
    );
    RegionEnv {
        clients: world,
        inflight: Arc::new(InflightCreates::default()),
        healer: Arc::new(EpochHealer::new()),
        config: LifecycleConfig::default(),
    }
}

/// Every world built so far, by the identity of its clients handle: `observe` only gets the
/// `RegionEnv`, and reads the DataNodes' journals through this.
fn journals() -> &'static Mutex<BTreeMap<usize, Arc<World>>> {
    static WORLDS: OnceLock<Mutex<BTreeMap<usize, Arc<World>>>> = OnceLock::new();
    WORLDS.get_or_init(Mutex::default)
}

fn world_key(clients: &Arc<dyn DataNodeClients>) -> usize {
    Arc::as_ptr(clients) as *const () as usize
}

fn journal_of(env: &RegionEnv, address: &str) -> MemTaskJournal {
    let worlds = journals().lock().unwrap_or_else(|p| p.into_inner());
    let world = &worlds[&world_key(&env.clients)];
    world.nodes[address].2.clone()
}

fn group_ids() -> [RegionId; 2] {
    [
        RegionId::new(RegionKind::Data, 0),
        RegionId::new(RegionKind::Data, 1),
    ]
}

fn schema() -> DatabaseSchema {
    DatabaseSchema {
        name: db("db"),
        schema_replication_factor: ReplicationFactor::new(3).expect("rf"),
        data_replication_factor: ReplicationFactor::new(3).expect("rf"),
    }
}

fn registered() -> Vec<ConfigPlan> {
    (0..NODES)
        .map(|i| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: address(i),
            })
        })
        .collect()
}

fn published_groups() -> Vec<ConfigPlan> {
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
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("db"),
        groups: group_ids()
            .into_iter()
            .map(|r| RegionReplicaSet::new(r, (0..NODES).map(DataNodeId).collect()))
            .collect(),
    }));
    plans
}

/// What must be equal to the uninterrupted run: metadata, every DataNode's replicas, and
/// the task ids a DataNode accepted twice (none: a task id runs once, whatever the crash).
type Observed = (String, Vec<(String, Vec<(RegionId, u64)>, Vec<TaskId>)>);

fn observe(state: &ClusterState, env: &RegionEnv) -> Observed {
    let metadata = format!(
        "{:?} {:?} {:?}",
        state.databases, state.partition_tables, state.region_maintain_queue
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

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn registry() -> Arc<ProcedureRegistry> {
    let mut registry = ProcedureRegistry::new();
    register_region_procedures(&mut registry).expect("codes are unique");
    Arc::new(registry)
}

#[test]
fn create_region_groups_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || world(false),
            |_| Box::new(CreateRegionGroupsProcedure::new_database(schema(), 1, 2)),
        )
        .with_setup(|_| registered());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(metadata.contains("db"), "database created");
        assert!(
            replicas.iter().all(|(_, r, _)| r.len() == 3),
            "3 groups on every node: {replicas:?}"
        );
        let restarts = harness
            .run_with_restart_at_every_step(observe)
            .await
            .expect("restarts");
        let changes = harness
            .run_with_leader_change_at_every_step(observe)
            .await
            .expect("changes");
        assert!(
            restarts.runs >= 8 && changes.runs + 1 == restarts.runs,
            "{restarts:?} {changes:?}"
        );
    });
}

#[test]
fn remove_region_group_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || world(true),
            |_| Box::new(RemoveRegionGroupProcedure::group(db("db"), group_ids()[0])),
        )
        .with_setup(|_| published_groups());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (_, replicas) = observe(&reference.state, &reference.env);
        assert!(
            replicas
                .iter()
                .all(|(_, r, _)| r == &vec![(group_ids()[1], 100)]),
            "only the other group is left: {replicas:?}"
        );
        harness
            .run_with_restart_at_every_step(observe)
            .await
            .expect("restarts");
        harness
            .run_with_leader_change_at_every_step(observe)
            .await
            .expect("leader changes");
    });
}

#[test]
fn delete_database_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || world(true),
            |_| Box::new(DeleteDatabaseProcedure::new(db("db"))),
        )
        .with_setup(|_| published_groups());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(reference.state.databases.is_empty(), "{metadata}");
        assert!(
            replicas.iter().all(|(_, r, _)| r.is_empty()),
            "no replica left: {replicas:?}"
        );
        harness
            .run_with_restart_at_every_step(observe)
            .await
            .expect("restarts");
        harness
            .run_with_leader_change_at_every_step(observe)
            .await
            .expect("leader changes");
    });
}
