//! A small environment for per-step tests of the region procedures (test builds only): a
//! real state machine over an in-memory log, a [`ManualClock`], and a fake
//! [`DataNodeClients`] whose DataNodes (at `fake-<id>:1`) answer from scripts, one answer per call, recording
//! every call. A test builds the state with plans, runs one `step` of a procedure on a
//! [`StepEnv::ctx`], and checks the step's result, the procedure's data and the calls made.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, RegionDigest,
    SubmitOutcome, TaskStatus,
};
use crate::confignode::clients::DataNodeClients;
use crate::confignode::fence::EpochHealer;
use crate::confignode::inflight::InflightCreates;
use crate::consensus::{Consensus, LocalConsensus};
use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionId,
    RegionKind, RegionReplicaSet, ReplicationFactor, TaskId,
};
use crate::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, RegisterDataNode, ReserveRegionIds,
};
use crate::procedure::{ChildOutcome, ProcedureContext};
use crate::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use crate::state::{Applied, ClusterState};
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

use super::{LifecycleConfig, RegionEnv};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call a fake DataNode received, in words (`"submit_task task-5 CopyRegion"`).
pub(crate) type Call = String;

/// A DataNode answering from scripts. An empty script answers the method's default:
/// `task_result` → `NotExist`, `submit_task` → `Accepted`, `create_region` / `ack_task` →
/// `Ok`, `region_digest` → `Refused`.
#[derive(Default)]
pub(crate) struct FakeDataNode {
    pub task_results: Mutex<VecDeque<Result<TaskStatus, ApiError>>>,
    pub submits: Mutex<VecDeque<Result<SubmitOutcome, ApiError>>>,
    pub creates: Mutex<VecDeque<Result<(), ApiError>>>,
    pub acks: Mutex<VecDeque<Result<(), ApiError>>>,
    pub digests: Mutex<VecDeque<Result<RegionDigest, ApiError>>>,
    pub calls: Mutex<Vec<Call>>,
    /// Submitted tasks, in order.
    pub submitted: Mutex<Vec<MaintainTask>>,
}

impl FakeDataNode {
    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }

    /// Calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }
}

#[async_trait]
impl DataNodeApi for FakeDataNode {
    async fn create_region(&self, _: Epoch, request: CreateRegionRequest) -> Result<(), ApiError> {
        self.record(format!(
            "create_region {} gen {}",
            request.region, request.generation
        ));
        lock(&self.creates).pop_front().unwrap_or(Ok(()))
    }
    async fn delete_region(&self, _: Epoch, region: RegionId) -> Result<(), ApiError> {
        self.record(format!("delete_region {region}"));
        Ok(())
    }
    async fn write_region(&self, region: RegionId, _: Vec<u8>) -> Result<u64, ApiError> {
        self.record(format!("write_region {region}"));
        Ok(0)
    }
    async fn submit_task(&self, _: Epoch, task: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        self.record(format!("submit_task {} {}", task.task_id, task.kind.name()));
        lock(&self.submitted).push(task);
        lock(&self.submits)
            .pop_front()
            .unwrap_or(Ok(SubmitOutcome::Accepted))
    }
    async fn task_result(
        &self,
        id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        if wait.is_some() {
            // A long-poll of a followed task (`Step::Await`): not part of a step's answers.
            return Ok(TaskStatus::Processing);
        }
        self.record(format!("task_result {id}"));
        lock(&self.task_results)
            .pop_front()
            .unwrap_or(Ok(TaskStatus::NotExist))
    }
    async fn ack_task(&self, _: Epoch, id: TaskId) -> Result<(), ApiError> {
        self.record(format!("ack_task {id}"));
        lock(&self.acks).pop_front().unwrap_or(Ok(()))
    }
    async fn heartbeat(&self, _: Epoch) -> Result<HeartbeatReport, ApiError> {
        Ok(HeartbeatReport {
            regions: Vec::new(),
            running_tasks: Vec::new(),
        })
    }
    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.record(format!("region_digest {region} {len:?}"));
        lock(&self.digests)
            .pop_front()
            .unwrap_or_else(|| Err(ApiError::Refused("no digest scripted".into())))
    }
}

/// Fake DataNodes by id (their address is `fake-<id>:1`).
#[derive(Default)]
pub(crate) struct FakeClients {
    nodes: Mutex<BTreeMap<String, Arc<FakeDataNode>>>,
}

impl FakeClients {
    /// The fake DataNode registered as `id`.
    pub fn node(&self, id: u32) -> Arc<FakeDataNode> {
        lock(&self.nodes).entry(address(id)).or_default().clone()
    }
}

impl DataNodeClients for FakeClients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        lock(&self.nodes)
            .entry(location.address.clone())
            .or_default()
            .clone()
    }
}

fn address(id: u32) -> String {
    format!("fake-{id}:1")
}

/// Steps never spawn work they wait for; anything spawned is dropped unrun.
struct NoSpawn;

impl Spawner for NoSpawn {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        drop(future);
    }
}

/// A state machine, a manual clock and fake DataNodes for one step test.
pub(crate) struct StepEnv {
    /// The clock steps read (advance it to test backoff or deadlines).
    #[allow(dead_code)]
    pub clock: ManualClock,
    pub consensus: Arc<LocalConsensus>,
    pub epoch: Epoch,
    pub clients: Arc<FakeClients>,
    pub healer: Arc<EpochHealer>,
    runtime: Runtime,
}

impl StepEnv {
    /// `data_nodes` registered DataNodes (`dn-0`..), all running.
    pub async fn new(data_nodes: u32) -> Self {
        let clock = ManualClock::new();
        let runtime = Runtime {
            clock: Arc::new(clock.clone()),
            spawner: Arc::new(NoSpawn),
            rng: Arc::new(SeededRng::new(11)),
        };
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(MemLogStore::new()),
            Arc::new(MemSnapshotStore::new()),
        ));
        let epoch = consensus.campaign().await.expect("campaign");
        let env = Self {
            clock,
            consensus,
            epoch,
            clients: Arc::new(FakeClients::default()),
            healer: Arc::new(EpochHealer::new()),
            runtime,
        };
        for id in 0..data_nodes {
            env.apply(ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: address(id),
            }))
            .await;
        }
        env
    }

    /// Commits `plan`; panics if it is refused.
    pub async fn apply(&self, plan: ConfigPlan) -> Applied {
        self.consensus
            .propose(self.epoch, plan)
            .await
            .expect("committed")
            .expect("applied")
    }

    /// Creates database `name` (RF `rf` for both kinds) and publishes one data group on
    /// `replicas`; returns its id.
    pub async fn group(&self, name: &str, rf: u8, replicas: &[u32]) -> RegionId {
        let name = DatabaseName::new(name).expect("name");
        let exists = self.state(|s| s.databases.contains_key(&name));
        if !exists {
            let factor = ReplicationFactor::new(rf).expect("rf");
            self.apply(ConfigPlan::CreateDatabase(CreateDatabase {
                schema: DatabaseSchema {
                    name: name.clone(),
                    schema_replication_factor: factor,
                    data_replication_factor: factor,
                },
                created_by: None,
            }))
            .await;
        }
        let Applied::RegionIdsReserved { first, .. } = self
            .apply(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
                kind: RegionKind::Data,
                count: 1,
                for_procedure: None,
            }))
            .await
        else {
            panic!("no ids reserved");
        };
        let region = RegionId::new(RegionKind::Data, first);
        let replicas = replicas.iter().map(|r| DataNodeId(*r)).collect();
        self.apply(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name,
            groups: vec![RegionReplicaSet::new(region, replicas)],
        }))
        .await;
        region
    }

    /// Reads the applied state.
    pub fn state<T>(&self, read: impl FnOnce(&ClusterState) -> T) -> T {
        self.consensus.state().read(read)
    }

    /// The fake DataNode `dn-<id>`.
    pub fn node(&self, id: u32) -> Arc<FakeDataNode> {
        self.clients.node(id)
    }

    /// A step context for procedure `id` whose finished children are `children`.
    pub fn ctx_with_children(&self, id: u64, children: Vec<ChildOutcome>) -> ProcedureContext {
        let env = RegionEnv {
            clients: self.clients.clone(),
            inflight: Arc::new(InflightCreates::default()),
            healer: self.healer.clone(),
            config: LifecycleConfig::default(),
        };
        ProcedureContext::for_step_test(
            ProcedureId(id),
            self.epoch,
            self.consensus.clone() as Arc<dyn Consensus>,
            self.runtime.clone(),
            Arc::new(env),
            children,
        )
    }

    /// A step context for procedure `id`.
    pub fn ctx(&self, id: u64) -> ProcedureContext {
        self.ctx_with_children(id, Vec::new())
    }
}
