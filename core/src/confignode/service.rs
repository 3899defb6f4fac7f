//! [`ConfigNode`]: the metadata service. Admin requests become procedures or plans; while this
//! node leads, it also runs the procedure executor, the region cleaner and the heartbeat
//! monitor, and adopts pending legacy deletions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use event_listener::Event;
use futures_lite::future;

use crate::consensus::Consensus;
use crate::model::{DataNodeId, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionKind};
use crate::plan::{ConfigPlan, RegisterDataNode, ResolveLegacyDeletion};
use crate::procedure::{
    BackoffPolicy, Environment, ExecutorConfig, ProcedureError, ProcedureExecutor, ProcedureInfo,
    ProcedureRegistry,
};
use crate::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, LifecycleConfig, RegionEnv,
    RemoveRegionGroupProcedure, register_region_procedures,
};
use crate::runtime::Runtime;
use crate::state::{Applied, DataNodeInfo, DatabaseEntry, Rejection};

use super::cleaner::RegionCleaner;
use super::clients::DataNodeClients;
use super::fence::EpochHealer;
use super::heartbeat::HeartbeatMonitor;
use super::inflight::InflightCreates;

/// Most region groups one database may ask for per kind.
pub const MAX_REGION_GROUPS: u32 = 4096;

/// Tunables of a ConfigNode.
#[derive(Debug, Clone)]
pub struct ConfigNodeConfig {
    /// Procedure executor tuning.
    pub executor: ExecutorConfig,
    /// Region procedure tuning.
    pub lifecycle: LifecycleConfig,
    /// Pause between region-cleaner passes.
    pub cleaner_interval: Duration,
    /// Backoff of one failing create task.
    pub cleaner_backoff: BackoffPolicy,
    /// Pause between heartbeat rounds.
    pub heartbeat_interval: Duration,
    /// Failed heartbeats in a row before a DataNode is marked unknown.
    pub misses_before_unknown: u32,
    /// Orphan reconciliation: grace period, and whether orphans are deleted.
    pub orphans: super::orphans::OrphanPolicy,
}

impl Default for ConfigNodeConfig {
    fn default() -> Self {
        Self {
            executor: ExecutorConfig::default(),
            lifecycle: LifecycleConfig::default(),
            cleaner_interval: Duration::from_secs(2),
            cleaner_backoff: BackoffPolicy {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30),
                max_attempts: None,
            },
            heartbeat_interval: Duration::from_secs(1),
            misses_before_unknown: 3,
            orphans: super::orphans::OrphanPolicy::default(),
        }
    }
}

/// Why an admin request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigNodeError {
    /// This node does not lead; ask another.
    #[error("this ConfigNode is not the leader")]
    NotLeader,
    /// The request is invalid.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The state machine refused the change.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// No such procedure.
    #[error("unknown procedure {0}")]
    UnknownProcedure(ProcedureId),
    /// The procedure framework or the log failed; the error says whether a retry may help.
    #[error("procedure: {0}")]
    Procedure(ProcedureError),
}

impl ConfigNodeError {
    /// Whether the same request may succeed if sent again (possibly to the new leader).
    pub fn is_retryable(&self) -> bool {
        match self {
            ConfigNodeError::NotLeader => true,
            ConfigNodeError::Procedure(e) => e.is_retryable(),
            ConfigNodeError::Invalid(_)
            | ConfigNodeError::Rejected(_)
            | ConfigNodeError::UnknownProcedure(_) => false,
        }
    }
}

impl From<ProcedureError> for ConfigNodeError {
    fn from(error: ProcedureError) -> Self {
        match error {
            ProcedureError::NotLeader | ProcedureError::Stopped => ConfigNodeError::NotLeader,
            ProcedureError::Rejected(rejection) => ConfigNodeError::Rejected(rejection),
            ProcedureError::UnknownProcedure(id) => ConfigNodeError::UnknownProcedure(id),
            other if other.is_stop() => ConfigNodeError::NotLeader,
            other => ConfigNodeError::Procedure(other),
        }
    }
}

/// A database as the admin API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseSummary {
    /// Schema and whether it is being deleted.
    pub entry: DatabaseEntry,
    /// Published schema region groups.
    pub schema_region_groups: u32,
    /// Published data region groups.
    pub data_region_groups: u32,
}

/// The ConfigNode service. Build with [`ConfigNode::new`], then [`ConfigNode::start`].
pub struct ConfigNode {
    consensus: Arc<dyn Consensus>,
    runtime: Runtime,
    executor: Arc<ProcedureExecutor>,
    cleaner: Arc<RegionCleaner>,
    heartbeat: Arc<HeartbeatMonitor>,
    healer: Arc<EpochHealer>,
    orphans: Arc<super::orphans::OrphanTracker>,
    config: ConfigNodeConfig,
    started: AtomicBool,
    stopped: AtomicBool,
    stop: Event,
}

impl std::fmt::Debug for ConfigNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigNode")
            .field("leadership", &self.consensus.leadership().get())
            .finish_non_exhaustive()
    }
}

impl ConfigNode {
    /// A ConfigNode over `consensus`, reaching DataNodes through `clients`.
    pub fn new(
        consensus: Arc<dyn Consensus>,
        clients: Arc<dyn DataNodeClients>,
        runtime: Runtime,
        config: ConfigNodeConfig,
    ) -> Result<Arc<Self>, ConfigNodeError> {
        let mut registry = ProcedureRegistry::new();
        register_region_procedures(&mut registry)?;
        let inflight = Arc::new(InflightCreates::default());
        let healer = Arc::new(EpochHealer::new());
        let env: Environment = Arc::new(RegionEnv {
            clients: clients.clone(),
            inflight: inflight.clone(),
            healer: healer.clone(),
            observed: Default::default(),
            config: config.lifecycle.clone(),
        });
        let executor = ProcedureExecutor::new(
            consensus.clone(),
            Arc::new(registry),
            runtime.clone(),
            env,
            config.executor.clone(),
        );
        let cleaner = Arc::new(RegionCleaner::new(
            consensus.clone(),
            clients.clone(),
            runtime.clone(),
            inflight,
            healer.clone(),
            config.cleaner_backoff.clone(),
        ));
        let heartbeat = Arc::new(HeartbeatMonitor::new(
            consensus.clone(),
            clients,
            runtime.clone(),
            healer.clone(),
            config.misses_before_unknown,
        ));
        let orphans = Arc::new(super::orphans::OrphanTracker::default());
        heartbeat.report_regions_to(orphans.clone());
        Ok(Arc::new(Self {
            consensus,
            runtime,
            executor,
            cleaner,
            heartbeat,
            healer,
            orphans,
            config,
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            stop: Event::new(),
        }))
    }

    /// Starts following leadership: executor, cleaner, heartbeats, legacy adoption.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        self.executor.start();
        let node = self.clone();
        self.runtime.spawner.spawn(
            "confignode-leader",
            Box::pin(async move { node.lead().await }),
        );
    }

    /// Stops everything this node runs; nothing more is committed by it afterwards.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.stop.notify(usize::MAX);
        self.executor.shutdown().await;
    }

    async fn wait_stopped(&self) {
        loop {
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.stop.listen();
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }

    async fn lead(self: Arc<Self>) {
        let watch = self.consensus.leadership();
        loop {
            let epoch = future::or(async { Some(watch.wait_leader().await) }, async {
                self.wait_stopped().await;
                None
            })
            .await;
            let Some(epoch) = epoch else { return };
            let term = async {
                self.executor.wait_running().await;
                // Adoption is retried with the cleaner's cadence (a submit may fail while the
                // term is young); request keys make every retry find the same procedure.
                let adopt = super::every_while_leading(
                    &watch,
                    epoch,
                    &self.runtime,
                    self.config.cleaner_interval,
                    || self.adopt_legacy_deletions(epoch),
                );
                future::zip(
                    future::zip(adopt, self.healer.run(self.consensus.as_ref(), epoch)),
                    future::zip(
                        future::zip(
                            self.cleaner.run(epoch, self.config.cleaner_interval),
                            self.heartbeat.run(epoch, self.config.heartbeat_interval),
                        ),
                        self.reconcile_orphans(epoch),
                    ),
                )
                .await;
            };
            future::or(
                future::or(term, watch.wait_lost(epoch)),
                self.wait_stopped(),
            )
            .await;
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            watch.wait_lost(epoch).await;
        }
    }

    /// Turns every pending legacy deletion into a removal procedure, so an upgraded cluster
    /// leaks no region. The request key makes a re-run (crash between submit and resolve)
    /// find the same procedure.
    async fn adopt_legacy_deletions(&self, epoch: Epoch) {
        let pending: Vec<_> = self.consensus.state().read(|s| {
            s.legacy_deletions
                .iter()
                .map(|(id, t)| (*id, t.clone()))
                .collect()
        });
        for (task_id, task) in pending {
            let procedure = RemoveRegionGroupProcedure::replicas(
                task.database.clone(),
                task.group.region,
                vec![task.target],
            );
            let key = format!("legacy-deletion-{}", task_id.0);
            match self.executor.submit(Box::new(procedure), Some(key)).await {
                Ok(id) => {
                    tracing::warn!(
                        task = %task_id, region = %task.group.region, data_node = %task.target,
                        procedure = %id, "legacy deletion adopted by a removal procedure"
                    );
                    let resolve = ResolveLegacyDeletion { id: task_id };
                    if let Err(e) = self
                        .consensus
                        .propose(epoch, ConfigPlan::ResolveLegacyDeletion(resolve))
                        .await
                    {
                        tracing::warn!(task = %task_id, "legacy deletion not resolved yet: {e}");
                    }
                }
                Err(e) => tracing::warn!(task = %task_id, "legacy deletion not adopted yet: {e}"),
            }
        }
    }

    fn epoch(&self) -> Result<Epoch, ConfigNodeError> {
        let leadership = self.consensus.leadership().get();
        if leadership.is_leader {
            Ok(leadership.epoch)
        } else {
            Err(ConfigNodeError::NotLeader)
        }
    }

    /// Starts creating database `schema` with its region groups; returns the procedure id.
    /// `request_key` makes a retried request return the same procedure.
    ///
    /// Refused up front, recording nothing: no region group at all, more groups than
    /// [`MAX_REGION_GROUPS`], a replication factor above the running DataNodes, an existing
    /// name (unless `request_key` submitted its creation: a retry).
    pub async fn create_database(
        &self,
        schema: DatabaseSchema,
        schema_region_groups: u32,
        data_region_groups: u32,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ConfigNodeError> {
        if let Some(id) = self.submitted_with(&request_key) {
            return Ok(id);
        }
        self.admit_groups(&schema, schema_region_groups, data_region_groups)?;
        let name = schema.name.clone();
        let existing = self
            .consensus
            .state()
            .read(|s| s.databases.get(&name).cloned());
        if let Some(entry) = existing {
            return Err(if entry.deleting {
                Rejection::DatabaseDeleting(name)
            } else {
                Rejection::DatabaseExists(name)
            }
            .into());
        }
        let procedure = CreateRegionGroupsProcedure::new_database(
            schema,
            schema_region_groups,
            data_region_groups,
        );
        Ok(self
            .executor
            .submit(Box::new(procedure), request_key)
            .await?)
    }

    /// The procedure a client's `request_key` already submitted, if any (a retried request
    /// after a lost reply gets the first answer, not a refusal).
    fn submitted_with(&self, request_key: &Option<String>) -> Option<ProcedureId> {
        let key = request_key.as_ref()?;
        self.consensus
            .state()
            .read(|s| s.procedure_request_keys.get(key).copied())
    }

    /// Refuses group counts and replication factors no creation could satisfy now.
    fn admit_groups(
        &self,
        schema: &DatabaseSchema,
        schema_region_groups: u32,
        data_region_groups: u32,
    ) -> Result<(), ConfigNodeError> {
        if schema_region_groups == 0 && data_region_groups == 0 {
            return Err(ConfigNodeError::Invalid(
                "at least one region group (schema or data) is needed".into(),
            ));
        }
        for (kind, count) in [
            (RegionKind::Schema, schema_region_groups),
            (RegionKind::Data, data_region_groups),
        ] {
            if count > MAX_REGION_GROUPS {
                return Err(ConfigNodeError::Invalid(format!(
                    "{count} {kind} region groups requested, at most {MAX_REGION_GROUPS}"
                )));
            }
        }
        let running = self.consensus.state().read(|s| {
            s.data_nodes
                .values()
                .filter(|n| n.status == crate::state::DataNodeStatus::Running)
                .count()
        });
        for (kind, count, factor) in [
            (
                RegionKind::Schema,
                schema_region_groups,
                schema.schema_replication_factor,
            ),
            (
                RegionKind::Data,
                data_region_groups,
                schema.data_replication_factor,
            ),
        ] {
            if count > 0 && usize::from(factor.get()) > running {
                return Err(ConfigNodeError::Invalid(format!(
                    "{kind} replication factor {} needs {} running DataNodes; {running} running",
                    factor.get(),
                    factor.get()
                )));
            }
        }
        Ok(())
    }

    /// Adds region groups to an existing database; returns the procedure id.
    pub async fn create_region_groups(
        &self,
        database: DatabaseName,
        schema_region_groups: u32,
        data_region_groups: u32,
    ) -> Result<ProcedureId, ConfigNodeError> {
        // Refuse at once what the procedure would refuse after waiting for the database lock.
        let entry = self
            .consensus
            .state()
            .read(|s| s.databases.get(&database).cloned());
        match entry {
            None => Err(Rejection::DatabaseNotFound(database).into()),
            Some(entry) if entry.deleting => Err(Rejection::DatabaseDeleting(database).into()),
            Some(entry) => {
                self.admit_groups(&entry.schema, schema_region_groups, data_region_groups)?;
                let procedure = CreateRegionGroupsProcedure::new(
                    database,
                    schema_region_groups,
                    data_region_groups,
                );
                Ok(self.executor.submit(Box::new(procedure), None).await?)
            }
        }
    }

    /// Starts deleting `name`; returns the procedure id at once (follow it with
    /// [`ConfigNode::wait_procedure`] or [`ConfigNode::get_procedure`]). An unknown database
    /// is refused up front, unless `request_key` submitted its deletion (a retry).
    pub async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ConfigNodeError> {
        if let Some(id) = self.submitted_with(&request_key) {
            return Ok(id);
        }
        let exists = self
            .consensus
            .state()
            .read(|s| s.databases.contains_key(&name));
        if !exists {
            return Err(Rejection::DatabaseNotFound(name).into());
        }
        let procedure = DeleteDatabaseProcedure::new(name);
        Ok(self
            .executor
            .submit(Box::new(procedure), request_key)
            .await?)
    }

    /// Waits for procedure `id` to finish; returns its final status.
    pub async fn wait_procedure(&self, id: ProcedureId) -> Result<ProcedureInfo, ConfigNodeError> {
        Ok(self.executor.wait_finished(id).await?)
    }

    /// One procedure's status.
    pub fn get_procedure(&self, id: ProcedureId) -> Option<ProcedureInfo> {
        self.executor.get(id)
    }

    /// Every recorded procedure's status.
    pub fn list_procedures(&self) -> Vec<ProcedureInfo> {
        self.executor.list()
    }

    /// Every database with its published group counts.
    pub fn list_databases(&self) -> Vec<DatabaseSummary> {
        self.consensus.state().read(|s| {
            s.databases
                .iter()
                .map(|(name, entry)| {
                    let count = |kind| {
                        s.partition_tables.get(name).map_or(0, |t| {
                            t.groups.keys().filter(|r| r.kind == kind).count() as u32
                        })
                    };
                    DatabaseSummary {
                        entry: entry.clone(),
                        schema_region_groups: count(RegionKind::Schema),
                        data_region_groups: count(RegionKind::Data),
                    }
                })
                .collect()
        })
    }

    /// Published region groups (of one database, or all).
    pub fn list_region_groups(
        &self,
        database: Option<&DatabaseName>,
    ) -> Vec<(DatabaseName, crate::model::RegionReplicaSet)> {
        self.consensus.state().read(|s| {
            s.region_groups()
                .filter(|(db, _)| database.is_none_or(|d| d == *db))
                .map(|(db, g)| (db.clone(), g.clone()))
                .collect()
        })
    }

    /// Registered DataNodes.
    pub fn list_data_nodes(&self) -> Vec<DataNodeInfo> {
        self.consensus
            .state()
            .read(|s| s.data_nodes.values().cloned().collect())
    }

    /// Registers a DataNode (or re-registers `known_id` at a new address).
    pub async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ConfigNodeError> {
        let epoch = self.epoch()?;
        let plan = ConfigPlan::RegisterDataNode(RegisterDataNode { known_id, address });
        match self.consensus.propose(epoch, plan).await {
            Ok(Ok(Applied::DataNodeRegistered(id))) => Ok(id),
            Ok(Ok(other)) => Err(ConfigNodeError::Procedure(ProcedureError::Data(format!(
                "registration applied unexpectedly: {other:?}"
            )))),
            Ok(Err(rejection)) => Err(rejection.into()),
            Err(e) if e.is_leadership_loss() => Err(ConfigNodeError::NotLeader),
            Err(e) => Err(ConfigNodeError::Procedure(e.into())),
        }
    }

    /// The procedure executor (status, tests).
    pub fn executor(&self) -> &Arc<ProcedureExecutor> {
        &self.executor
    }

    /// The region cleaner (tests drive passes by hand).
    pub fn cleaner(&self) -> &Arc<RegionCleaner> {
        &self.cleaner
    }

    /// The consensus handle.
    pub fn consensus(&self) -> &Arc<dyn Consensus> {
        &self.consensus
    }

    /// Resolves once this node's consensus failed for good (a poisoned log): the node has
    /// stepped down and its process should exit non-zero so a supervisor restarts it.
    pub async fn failed(&self) -> crate::consensus::ConsensusError {
        self.consensus.failed().await
    }
}

mod migration;
