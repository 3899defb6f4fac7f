//! The leader's region cleaner and heartbeat monitor, on a ManualClock, against real
//! DataNodes over in-memory stores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use smol::Executor;

use super::cleaner::RegionCleaner;
use super::clients::DataNodeClients;
use super::fence::EpochHealer;
use super::heartbeat::HeartbeatMonitor;
use super::inflight::InflightCreates;
use crate::api::DataNodeApi;
use crate::consensus::{Consensus, LocalConsensus};
use crate::datanode::{DataNode, DataNodeConfig};
use crate::model::*;
use crate::plan::*;
use crate::procedure::BackoffPolicy;
use crate::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use crate::state::{DataNodeStatus, RegionMaintainKind};
use crate::storage::faulty::{FaultyRegionStore, StoreOp};
use crate::storage::mem::{MemLogStore, MemSnapshotStore};
use crate::storage::{MemRegionStore, MemTaskJournal, RegionStore};

struct ExecutorSpawner(Arc<Executor<'static>>);

impl Spawner for ExecutorSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

/// DataNodes reachable by address; a missing one is "down".
#[derive(Default)]
struct Nodes(std::sync::Mutex<BTreeMap<String, DataNode>>);

struct Down;

#[async_trait::async_trait]
impl DataNodeApi for Down {
    async fn create_region(
        &self,
        _: Epoch,
        _: crate::api::CreateRegionRequest,
    ) -> Result<(), crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn delete_region(&self, _: Epoch, _: RegionId) -> Result<(), crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn write_region(&self, _: RegionId, _: Vec<u8>) -> Result<u64, crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn submit_task(
        &self,
        _: Epoch,
        _: crate::api::MaintainTask,
    ) -> Result<crate::api::SubmitOutcome, crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn task_result(
        &self,
        _: TaskId,
        _: Option<Duration>,
    ) -> Result<crate::api::TaskStatus, crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn ack_task(&self, _: Epoch, _: TaskId) -> Result<(), crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
    async fn heartbeat(
        &self,
        _: Epoch,
    ) -> Result<crate::api::HeartbeatReport, crate::api::ApiError> {
        Err(crate::api::ApiError::Unreachable("down".into()))
    }
}

impl DataNodeClients for Nodes {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        match self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&location.address)
        {
            Some(node) => Arc::new(node.clone()),
            None => Arc::new(Down),
        }
    }
}

struct Rig {
    clock: ManualClock,
    runtime: Runtime,
    consensus: Arc<LocalConsensus>,
    epoch: Epoch,
    nodes: Arc<Nodes>,
    stores: Vec<(String, FaultyRegionStore)>,
}

fn address(i: u32) -> String {
    format!("127.0.0.1:{}", 9000 + i)
}

async fn rig(ex: &Arc<Executor<'static>>) -> Rig {
    let clock = ManualClock::new();
    let runtime = Runtime {
        clock: Arc::new(clock.clone()),
        spawner: Arc::new(ExecutorSpawner(ex.clone())),
        rng: Arc::new(SeededRng::new(3)),
    };
    let consensus = Arc::new(LocalConsensus::new(
        Arc::new(MemLogStore::new()),
        Arc::new(MemSnapshotStore::new()),
    ));
    let epoch = consensus.campaign().await.unwrap();
    let nodes = Arc::new(Nodes::default());
    let mut stores = Vec::new();
    for i in 0..3 {
        let mem = MemRegionStore::new(runtime.clock.clone());
        let store = FaultyRegionStore::new(Arc::new(mem), runtime.clock.clone());
        let node = DataNode::open(
            runtime.clone(),
            Arc::new(store.clone()),
            Arc::new(MemTaskJournal::new()),
            DataNodeConfig::default(),
        )
        .await
        .unwrap();
        nodes.0.lock().unwrap().insert(address(i), node);
        stores.push((address(i), store));
        let plan = ConfigPlan::RegisterDataNode(RegisterDataNode {
            known_id: None,
            address: address(i),
        });
        consensus.propose(epoch, plan).await.unwrap().unwrap();
    }
    Rig {
        clock,
        runtime,
        consensus,
        epoch,
        nodes,
        stores,
    }
}

/// Publishes data-0 on dn-0 and dn-1 and queues the create of its dn-2 replica.
async fn degraded_group(rig: &Rig) -> TaskId {
    let db = DatabaseName::new("db").unwrap();
    let rf = ReplicationFactor::new(3).unwrap();
    let region = RegionId::new(RegionKind::Data, 0);
    let all = RegionReplicaSet::new(region, vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)]);
    let target = rig
        .consensus
        .state()
        .read(|s| s.data_nodes[&DataNodeId(2)].location.clone());
    let plans = [
        ConfigPlan::CreateDatabase(CreateDatabase {
            schema: DatabaseSchema {
                name: db.clone(),
                schema_replication_factor: rf,
                data_replication_factor: rf,
            },
            created_by: None,
        }),
        ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: 1,
            for_procedure: None,
        }),
        ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: db.clone(),
            groups: vec![RegionReplicaSet::new(
                region,
                vec![DataNodeId(0), DataNodeId(1)],
            )],
        }),
        ConfigPlan::OfferRegionMaintainTasks(OfferRegionMaintainTasks {
            tasks: vec![NewRegionMaintainTask {
                kind: RegionMaintainKind::Create,
                database: db,
                region: all,
                target,
            }],
        }),
    ];
    let mut task = TaskId(0);
    for plan in plans {
        if let Ok(crate::state::Applied::TasksOffered(ids)) =
            rig.consensus.propose(rig.epoch, plan).await.unwrap()
        {
            task = ids[0];
        }
    }
    task
}

fn cleaner(rig: &Rig) -> RegionCleaner {
    RegionCleaner::new(
        rig.consensus.clone() as Arc<dyn Consensus>,
        rig.nodes.clone(),
        rig.runtime.clone(),
        Arc::new(InflightCreates::default()),
        Arc::new(EpochHealer::new()),
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
            max_attempts: None,
        },
    )
}

#[test]
fn cleaner_backs_off_a_failing_create_then_repairs_the_replica() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = rig(&ex).await;
        let task = degraded_group(&rig).await;
        let cleaner = cleaner(&rig);
        rig.stores[2].1.fail_next(StoreOp::Create, 2);

        let pass = cleaner.run_once(rig.epoch).await;
        assert_eq!(pass.failed, [task]);
        // Within the backoff window the task is not tried again.
        let pass = cleaner.run_once(rig.epoch).await;
        assert_eq!(pass.deferred, [task]);
        rig.clock.advance(Duration::from_secs(1));
        assert_eq!(
            cleaner.run_once(rig.epoch).await.failed,
            [task],
            "second failure"
        );
        // The second backoff is longer than the first (exponential, jitter at most half).
        rig.clock.advance(Duration::from_millis(999));
        assert_eq!(cleaner.run_once(rig.epoch).await.deferred, [task]);
        rig.clock.advance(Duration::from_secs(2));
        assert_eq!(cleaner.run_once(rig.epoch).await.created, [task]);

        let region = RegionId::new(RegionKind::Data, 0);
        let replicas = rig
            .consensus
            .state()
            .read(|s| s.region_group(region).cloned());
        assert_eq!(
            replicas.unwrap().replicas.len(),
            3,
            "the location was recorded"
        );
        assert!(
            rig.consensus
                .state()
                .read(|s| s.region_maintain_queue.is_empty())
        );
        assert_eq!(
            rig.stores[2].1.list().await.unwrap().len(),
            1,
            "the replica exists"
        );
    }));
}

#[test]
fn heartbeats_mark_a_silent_datanode_unknown_and_running_again() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = rig(&ex).await;
        let monitor = HeartbeatMonitor::new(
            rig.consensus.clone() as Arc<dyn Consensus>,
            rig.nodes.clone(),
            rig.runtime.clone(),
            Arc::new(EpochHealer::new()),
            2,
        );
        let status = |rig: &Rig| {
            rig.consensus
                .state()
                .read(|s| s.data_nodes[&DataNodeId(1)].status)
        };
        let dn1 = rig.nodes.0.lock().unwrap().remove(&address(1)).unwrap();
        assert_eq!(monitor.run_once(rig.epoch).await.len(), 2);
        assert_eq!(
            status(&rig),
            DataNodeStatus::Running,
            "one miss is tolerated"
        );
        monitor.run_once(rig.epoch).await;
        assert_eq!(status(&rig), DataNodeStatus::Unknown);
        rig.nodes.0.lock().unwrap().insert(address(1), dn1);
        assert_eq!(monitor.run_once(rig.epoch).await.len(), 3);
        assert_eq!(status(&rig), DataNodeStatus::Running);
    }));
}
