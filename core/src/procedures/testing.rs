//! A test env for driving one region-procedure step at a time (per-step tests, one test per
//! answer a DataNode can give). GreptimeDB's region-migration states test themselves the same
//! way: a real state machine, a fake peer, a manual clock.
//!
//! [`StepEnv`] holds a leading [`LocalConsensus`] over an in-memory log (setup plans are
//! committed through it), a [`ManualClock`], and [`FakeDataNodes`]: every DataNode address
//! answers from a script (per method, a queue of answers, then a default) and records every
//! call. A step runs with [`StepEnv::step`] against a context built for one procedure id.

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
use crate::procedure::{ChildOutcome, Procedure, ProcedureError, Step, step_context};
use crate::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use crate::state::{ApplyResult, ClusterState};
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

use super::env::{LifecycleConfig, RegionEnv};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One call a fake DataNode received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// `create_region` of a region with a generation.
    Create(RegionId, u64),
    /// `submit_task`.
    Submit(MaintainTask),
    /// `task_result` of a task id (long-poll or not).
    Poll(TaskId),
    /// `ack_task`.
    Ack(TaskId),
    /// `region_digest` of a region, of a prefix (`None`: all of it).
    Digest(RegionId, Option<u64>),
}

/// Scripted answers of one DataNode.
#[derive(Default)]
struct Script {
    creates: VecDeque<Result<(), ApiError>>,
    polls: VecDeque<Result<TaskStatus, ApiError>>,
    submits: VecDeque<Result<SubmitOutcome, ApiError>>,
    acks: VecDeque<Result<(), ApiError>>,
    digests: VecDeque<Result<RegionDigest, ApiError>>,
}

/// Every DataNode of a step test: scripted answers, recorded calls (per DataNode id).
#[derive(Default)]
pub struct FakeDataNodes {
    scripts: Mutex<BTreeMap<DataNodeId, Script>>,
    calls: Mutex<Vec<(DataNodeId, Call)>>,
}

/// The DataNode id of an address made by [`address`].
fn id_of(location: &DataNodeLocation) -> DataNodeId {
    location.id
}

impl FakeDataNodes {
    fn script(&self) -> MutexGuard<'_, BTreeMap<DataNodeId, Script>> {
        lock(&self.scripts)
    }

    /// `node`'s next `create_region` answers.
    pub fn answer_creates(&self, node: u32, answers: Vec<Result<(), ApiError>>) {
        self.script()
            .entry(DataNodeId(node))
            .or_default()
            .creates
            .extend(answers);
    }

    /// `node`'s next `task_result` answers (then: `NotExist`).
    pub fn answer_polls(&self, node: u32, answers: Vec<Result<TaskStatus, ApiError>>) {
        self.script()
            .entry(DataNodeId(node))
            .or_default()
            .polls
            .extend(answers);
    }

    /// `node`'s next `submit_task` answers (then: `Accepted`).
    pub fn answer_submits(&self, node: u32, answers: Vec<Result<SubmitOutcome, ApiError>>) {
        self.script()
            .entry(DataNodeId(node))
            .or_default()
            .submits
            .extend(answers);
    }

    /// `node`'s next `ack_task` answers (then: `Ok`).
    pub fn answer_acks(&self, node: u32, answers: Vec<Result<(), ApiError>>) {
        self.script()
            .entry(DataNodeId(node))
            .or_default()
            .acks
            .extend(answers);
    }

    /// `node`'s next `region_digest` answers (then: `Refused`).
    pub fn answer_digests(&self, node: u32, answers: Vec<Result<RegionDigest, ApiError>>) {
        self.script()
            .entry(DataNodeId(node))
            .or_default()
            .digests
            .extend(answers);
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<(DataNodeId, Call)> {
        lock(&self.calls).clone()
    }

    /// Calls to `node` so far.
    pub fn calls_to(&self, node: u32) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|(n, _)| *n == DataNodeId(node))
            .map(|(_, c)| c)
            .collect()
    }

    fn record(&self, node: DataNodeId, call: Call) {
        lock(&self.calls).push((node, call));
    }
}

/// One fake DataNode: answers from its script.
struct FakeDataNode {
    id: DataNodeId,
    all: Arc<FakeDataNodes>,
}

#[async_trait]
impl DataNodeApi for FakeDataNode {
    async fn create_region(&self, _: Epoch, request: CreateRegionRequest) -> Result<(), ApiError> {
        self.all
            .record(self.id, Call::Create(request.region, request.generation));
        let next = self
            .all
            .script()
            .entry(self.id)
            .or_default()
            .creates
            .pop_front();
        next.unwrap_or(Ok(()))
    }
    async fn delete_region(&self, _: Epoch, _: RegionId) -> Result<(), ApiError> {
        Err(ApiError::Refused("the legacy delete is never used".into()))
    }
    async fn write_region(&self, _: RegionId, _: Vec<u8>) -> Result<u64, ApiError> {
        Ok(0)
    }
    async fn submit_task(&self, _: Epoch, task: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        self.all.record(self.id, Call::Submit(task));
        let next = self
            .all
            .script()
            .entry(self.id)
            .or_default()
            .submits
            .pop_front();
        next.unwrap_or(Ok(SubmitOutcome::Accepted))
    }
    async fn task_result(
        &self,
        task_id: TaskId,
        _: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        self.all.record(self.id, Call::Poll(task_id));
        let next = self
            .all
            .script()
            .entry(self.id)
            .or_default()
            .polls
            .pop_front();
        next.unwrap_or(Ok(TaskStatus::NotExist))
    }
    async fn ack_task(&self, _: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        self.all.record(self.id, Call::Ack(task_id));
        let next = self
            .all
            .script()
            .entry(self.id)
            .or_default()
            .acks
            .pop_front();
        next.unwrap_or(Ok(()))
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
        self.all.record(self.id, Call::Digest(region, len));
        let next = self
            .all
            .script()
            .entry(self.id)
            .or_default()
            .digests
            .pop_front();
        next.unwrap_or_else(|| Err(ApiError::Refused("no digest scripted".into())))
    }
}

struct Clients(Arc<FakeDataNodes>);

impl DataNodeClients for Clients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        Arc::new(FakeDataNode {
            id: id_of(location),
            all: self.0.clone(),
        })
    }
}

/// Steps under test spawn nothing they wait for; anything spawned is dropped unrun.
struct NoSpawner;

impl Spawner for NoSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        drop(future);
    }
}

/// The address of DataNode `i` in a step test.
pub fn address(i: u32) -> String {
    format!("127.0.0.1:{}", 19000 + i)
}

/// A step test's world. See the module docs.
pub struct StepEnv {
    /// The leading consensus the steps commit through.
    pub consensus: Arc<LocalConsensus>,
    /// Its epoch.
    pub epoch: Epoch,
    /// The manual clock steps sleep on.
    pub clock: ManualClock,
    /// The DataNodes.
    pub nodes: Arc<FakeDataNodes>,
    /// Where `StaleLeader` answers are reported.
    pub healer: Arc<EpochHealer>,
    env: Arc<RegionEnv>,
    runtime: Runtime,
}

impl StepEnv {
    /// A leading ConfigNode state with `data_nodes` registered DataNodes (ids 0..n).
    pub async fn new(data_nodes: u32) -> StepEnv {
        let clock = ManualClock::new();
        let runtime = Runtime {
            clock: Arc::new(clock.clone()),
            spawner: Arc::new(NoSpawner),
            rng: Arc::new(SeededRng::new(5)),
        };
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(MemLogStore::new()),
            Arc::new(MemSnapshotStore::new()),
        ));
        let epoch = consensus.campaign().await.expect("campaign");
        let nodes = Arc::new(FakeDataNodes::default());
        let healer = Arc::new(EpochHealer::new());
        let env = Arc::new(RegionEnv {
            clients: Arc::new(Clients(nodes.clone())),
            inflight: Arc::new(InflightCreates::default()),
            healer: healer.clone(),
            observed: Default::default(),
            config: LifecycleConfig {
                create_retry_window: Duration::from_secs(1),
                ..LifecycleConfig::default()
            },
        });
        let step_env = StepEnv {
            consensus,
            epoch,
            clock,
            nodes,
            healer,
            env,
            runtime,
        };
        for i in 0..data_nodes {
            step_env
                .commit(ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id: None,
                    address: address(i),
                }))
                .await
                .expect("registered");
        }
        step_env
    }

    /// Commits a setup plan.
    pub async fn commit(&self, plan: ConfigPlan) -> ApplyResult {
        self.consensus
            .propose(self.epoch, plan)
            .await
            .expect("committed")
    }

    /// Database `db` (RF 3) with `groups` data groups published on `replicas`, their ids
    /// reserved from 0.
    pub async fn published(&self, groups: u32, replicas: &[u32]) -> Vec<RegionId> {
        self.commit(ConfigPlan::CreateDatabase(CreateDatabase {
            schema: schema(),
            created_by: None,
        }))
        .await
        .expect("database");
        self.commit(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: groups,
            for_procedure: None,
        }))
        .await
        .expect("reserved");
        let regions: Vec<RegionId> = (0..groups)
            .map(|i| RegionId::new(RegionKind::Data, i))
            .collect();
        let nodes: Vec<DataNodeId> = replicas.iter().map(|n| DataNodeId(*n)).collect();
        self.commit(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: db(),
            groups: regions
                .iter()
                .map(|r| RegionReplicaSet::new(*r, nodes.clone()))
                .collect(),
        }))
        .await
        .expect("published");
        regions
    }

    /// Database `name` at replication factor `rf` (created on first use) with one more data
    /// group published on `replicas`, its id reserved next; returns the group.
    pub async fn group(&self, name: &str, rf: u8, replicas: &[u32]) -> RegionId {
        let name = DatabaseName::new(name).expect("valid name");
        if !self.state().databases.contains_key(&name) {
            let factor = ReplicationFactor::new(rf).expect("rf");
            self.commit(ConfigPlan::CreateDatabase(CreateDatabase {
                schema: DatabaseSchema {
                    name: name.clone(),
                    schema_replication_factor: factor,
                    data_replication_factor: factor,
                },
                created_by: None,
            }))
            .await
            .expect("database");
        }
        let reserved = self
            .commit(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
                kind: RegionKind::Data,
                count: 1,
                for_procedure: None,
            }))
            .await;
        let Ok(crate::state::Applied::RegionIdsReserved { first, .. }) = reserved else {
            panic!("no id reserved: {reserved:?}");
        };
        let region = RegionId::new(RegionKind::Data, first);
        self.commit(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name,
            groups: vec![RegionReplicaSet::new(
                region,
                replicas.iter().map(|n| DataNodeId(*n)).collect(),
            )],
        }))
        .await
        .expect("published");
        region
    }

    /// The committed state.
    pub fn state(&self) -> ClusterState {
        self.consensus.state().snapshot()
    }

    /// Runs a step and, when it awaits a followed task, what the executor does next: runs
    /// the await (the DataNode's long-poll answers from the poll script) and then the next
    /// step, which sees that answer. Any other step is returned as it is.
    pub async fn step_past_await(
        &self,
        procedure: &mut dyn Procedure,
        id: ProcedureId,
        children: Vec<ChildOutcome>,
    ) -> Result<Step, ProcedureError> {
        match self.step(procedure, id, children.clone()).await {
            Ok(Step::Await { until, .. }) => {
                self.run_await(until).await;
                self.step(procedure, id, children).await
            }
            other => other,
        }
    }

    /// Runs the step that drives a persisted task on `node`, the DataNode answering
    /// `answer`: a status (`Ok`) is what the long-poll of the submitted task answers, and the
    /// step after it is returned; an error is the submission's own answer.
    pub async fn step_with_task_answer(
        &self,
        procedure: &mut dyn Procedure,
        id: ProcedureId,
        node: u32,
        answer: Result<TaskStatus, ApiError>,
    ) -> Result<Step, ProcedureError> {
        match answer {
            Ok(status) => {
                self.nodes.answer_polls(node, vec![Ok(status)]);
                self.step_past_await(procedure, id, Vec::new()).await
            }
            Err(error) => {
                self.nodes.answer_submits(node, vec![Err(error)]);
                self.step(procedure, id, Vec::new()).await
            }
        }
    }

    /// Runs a step's `Step::Await` future to its end on the manual clock.
    pub async fn run_await(&self, until: BoxFuture<()>) {
        let clock = self.clock.clone();
        let ticker = async move {
            loop {
                futures_lite::future::yield_now().await;
                clock.advance_to_next_deadline();
            }
        };
        futures_lite::future::or(until, ticker).await;
    }

    /// Runs one step of `procedure` (as procedure `id`, with `children` finished) to its
    /// end, moving the manual clock whenever the step sleeps on it.
    pub async fn step(
        &self,
        procedure: &mut dyn Procedure,
        id: ProcedureId,
        children: Vec<ChildOutcome>,
    ) -> Result<Step, ProcedureError> {
        let ctx = step_context(
            self.consensus.clone(),
            self.runtime.clone(),
            self.env.clone(),
            self.epoch,
            id,
            children,
        );
        let clock = self.clock.clone();
        let step = procedure.step(&ctx);
        let ticker = async move {
            loop {
                futures_lite::future::yield_now().await;
                clock.advance_to_next_deadline();
            }
        };
        let outcome = futures_lite::future::or(step, ticker).await;
        // As the executor does: a staged plan commits with the step's transition (here on
        // its own, as the step tests keep the procedure's record themselves).
        match (outcome, ctx.take_effect()) {
            (Ok(Step::Await { .. }), Some(_)) => Err(ProcedureError::Data(
                "a step staged a plan and then awaited, which commits nothing".into(),
            )),
            (Ok(step), Some(effect)) => match self.commit(effect).await {
                Ok(_) => Ok(step),
                Err(rejection) => Err(rejection.into()),
            },
            (outcome, _) => outcome,
        }
    }
}

/// The step tests' database name.
pub fn db() -> DatabaseName {
    DatabaseName::new("db").expect("valid name")
}

/// The step tests' database schema (RF 3).
pub fn schema() -> DatabaseSchema {
    DatabaseSchema {
        name: db(),
        schema_replication_factor: ReplicationFactor::new(3).expect("rf"),
        data_replication_factor: ReplicationFactor::new(3).expect("rf"),
    }
}
