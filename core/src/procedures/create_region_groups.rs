//! [`CreateRegionGroupsProcedure`]: create a database's region groups.
//!
//! Ids are reserved and replicas placed first (persisted), then every replica is created by a
//! synchronous, idempotent `create_region`. Per group: every replica created → serving; a
//! quorum → serving, plus one durable create task per missing replica in the region-maintain
//! queue (the leader's region cleaner retries it until the replica exists); no quorum → one
//! child [`RemoveRegionGroupProcedure`] tears down every intended replica (a create that
//! timed out may still have happened) and the group is never published.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::CreateRegionRequest;
use crate::coded_enum;
use crate::model::{
    DataNodeId, DatabaseName, DatabaseSchema, RegionId, RegionKind, RegionReplicaSet,
};
use crate::placement::place_groups;
use crate::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, DeleteDatabase, NewRegionMaintainTask,
    OfferRegionMaintainTasks, PreDeleteDatabase, ReserveRegionIds,
};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::runtime::BoxFuture;
use crate::state::{
    Applied, LockKey, LockMode, LockResource, ProcedureStatus, RegionMaintainKind, Rejection,
};

use super::env::RegionEnv;
use super::{CREATE_REGION_GROUPS, RemoveRegionGroupProcedure};

coded_enum! {
    /// States of [`CreateRegionGroupsProcedure`].
    pub enum CreateRegionGroupsState {
        /// Reserve region ids and choose DataNodes.
        Prepare = 1,
        /// Create every replica (synchronous RPCs).
        CreateReplicas = 2,
        /// Publish groups with a quorum; queue creates for their missing replicas.
        Publish = 3,
        /// Spawn one removal per group without a quorum.
        TearDown = 4,
        /// Report the outcome.
        Finish = 5,
        /// Create the database itself (when the procedure creates a new database).
        CreateDatabase = 6,
    }
}

/// One group to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedGroup {
    /// Its reserved id.
    pub region: RegionId,
    /// Where its replicas go.
    pub replicas: Vec<DataNodeId>,
    /// Replicas whose create succeeded.
    pub created: Vec<DataNodeId>,
}

/// Persistent data of [`CreateRegionGroupsProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRegionGroupsData {
    /// Current state.
    pub state: CreateRegionGroupsState,
    /// The owning database.
    pub database: DatabaseName,
    /// Schema region groups requested.
    pub schema_groups: u32,
    /// Data region groups requested.
    pub data_groups: u32,
    /// Planned groups (filled by `Prepare`).
    pub groups: Vec<PlannedGroup>,
    /// Groups that did not reach a quorum and were (or are being) torn down.
    pub torn_down: Vec<RegionId>,
    /// The schema of a database this procedure creates first, if any.
    #[serde(default)]
    pub new_database: Option<DatabaseSchema>,
}

/// What a finished creation reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRegionGroupsOutput {
    /// Groups published with every replica.
    pub complete: Vec<RegionId>,
    /// Groups published with a quorum; their missing replicas are queued.
    pub degraded: Vec<RegionId>,
}

/// One replica create's result: group index, DataNode, outcome.
type CreateCall = (usize, DataNodeId, Result<(), String>);

/// Creates region groups for a database. See the module docs.
#[derive(Debug, Clone)]
pub struct CreateRegionGroupsProcedure {
    data: CreateRegionGroupsData,
}

impl CreateRegionGroupsProcedure {
    /// Creates `schema_groups` schema and `data_groups` data region groups for `database`.
    pub fn new(database: DatabaseName, schema_groups: u32, data_groups: u32) -> Self {
        Self {
            data: CreateRegionGroupsData {
                state: CreateRegionGroupsState::Prepare,
                database,
                schema_groups,
                data_groups,
                groups: Vec::new(),
                torn_down: Vec::new(),
                new_database: None,
            },
        }
    }

    /// Creates the database `schema` first, then its region groups.
    pub fn new_database(schema: DatabaseSchema, schema_groups: u32, data_groups: u32) -> Self {
        let mut procedure = Self::new(schema.name.clone(), schema_groups, data_groups);
        procedure.data.state = CreateRegionGroupsState::CreateDatabase;
        procedure.data.new_database = Some(schema);
        procedure
    }

    /// Abort: a database of that name exists (created by someone else).
    async fn create_database(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let Some(schema) = self.data.new_database.clone() else {
            self.data.state = CreateRegionGroupsState::Prepare;
            return Ok(Step::Continue);
        };
        // Tagged with this procedure's id: a re-run after a crash is `Unchanged`, while a
        // database someone else created is `DatabaseExists`.
        let plan = CreateDatabase {
            schema,
            created_by: Some(ctx.procedure_id()),
        };
        ctx.propose(ConfigPlan::CreateDatabase(plan)).await??;
        self.data.state = CreateRegionGroupsState::Prepare;
        Ok(Step::Continue)
    }

    /// The persistent data.
    pub fn data(&self) -> &CreateRegionGroupsData {
        &self.data
    }

    /// Abort: database missing or being deleted, not enough running DataNodes.
    async fn prepare(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let database = self.data.database.clone();
        let (schema, deleting) = ctx
            .state()
            .read(|s| {
                s.databases
                    .get(&database)
                    .map(|d| (d.schema.clone(), d.deleting))
            })
            .ok_or_else(|| ProcedureError::Abort(format!("database {database} does not exist")))?;
        if deleting {
            return Err(Rejection::DatabaseDeleting(database).into());
        }
        let kinds = [
            (
                RegionKind::Schema,
                self.data.schema_groups,
                schema.schema_replication_factor,
            ),
            (
                RegionKind::Data,
                self.data.data_groups,
                schema.data_replication_factor,
            ),
        ];
        let factors: Vec<_> = kinds
            .iter()
            .flat_map(|(_, count, factor)| (0..*count).map(|_| *factor))
            .collect();
        // Place everything before reserving ids, so a placement failure wastes none.
        let mut placed = ctx
            .state()
            .read(|s| place_groups(s, &factors))
            .map_err(|e| ProcedureError::Abort(e.to_string()))?
            .into_iter();
        let mut groups = Vec::new();
        for (kind, count, _) in kinds {
            if count == 0 {
                continue;
            }
            let reserve = ReserveRegionIds {
                kind,
                count,
                for_procedure: Some(ctx.procedure_id()),
            };
            let first = match ctx.propose(ConfigPlan::ReserveRegionIds(reserve)).await?? {
                Applied::RegionIdsReserved { first, .. } => first,
                other => {
                    return Err(ProcedureError::Data(format!(
                        "unexpected reserve result {other:?}"
                    )));
                }
            };
            for offset in 0..count {
                let replicas = placed.next().unwrap_or_default();
                groups.push(PlannedGroup {
                    region: RegionId::new(kind, first + offset),
                    replicas,
                    created: Vec::new(),
                });
            }
        }
        self.data.groups = groups;
        self.data.state = CreateRegionGroupsState::CreateReplicas;
        Ok(Step::Continue)
    }

    /// Never fails: a replica that could not be created is simply not counted.
    async fn create_replicas(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let epoch = ctx.epoch();
        let mut calls: Vec<BoxFuture<CreateCall>> = Vec::new();
        for (index, group) in self.data.groups.iter().enumerate() {
            for node in &group.replicas {
                if group.created.contains(node) {
                    continue;
                }
                let location = ctx
                    .state()
                    .read(|s| s.data_nodes.get(node).map(|n| n.location.clone()));
                let Some(location) = location else { continue };
                let client = env.clients.client(&location);
                let request = CreateRegionRequest {
                    region: group.region,
                    database: self.data.database.clone(),
                    peers: group.replicas.clone(),
                };
                let node = *node;
                calls.push(Box::pin(async move {
                    let result = client.create_region(epoch, request).await;
                    (index, node, result.map_err(|e| e.to_string()))
                }));
            }
        }
        for (index, node, result) in crate::util::join_all(calls, 64).await {
            let group = &mut self.data.groups[index];
            match result {
                Ok(()) => group.created.push(node),
                Err(e) => tracing::warn!(
                    procedure = %ctx.procedure_id(), region = %group.region, data_node = %node,
                    "replica create failed: {e}"
                ),
            }
        }
        for group in &mut self.data.groups {
            group.created.sort();
            group.created.dedup();
        }
        self.data.state = CreateRegionGroupsState::Publish;
        Ok(Step::Continue)
    }

    fn quorum(&self, env: &RegionEnv, group: &PlannedGroup) -> usize {
        let majority = group.replicas.len() / 2 + 1;
        if group.region.kind == RegionKind::Data && env.config.data_quorum_at_least_one {
            1
        } else {
            majority
        }
    }

    /// Retry: commit failures. Abort: none (a refused publish tears the groups down).
    async fn publish(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let (serving, failed): (Vec<&PlannedGroup>, Vec<&PlannedGroup>) = self
            .data
            .groups
            .iter()
            .partition(|g| g.created.len() >= self.quorum(env, g));
        let mut torn_down: Vec<RegionId> = failed.iter().map(|g| g.region).collect();
        if !serving.is_empty() {
            let groups = serving
                .iter()
                .map(|g| RegionReplicaSet::new(g.region, g.created.clone()))
                .collect();
            let publish = CreateRegionGroups {
                database: self.data.database.clone(),
                groups,
            };
            match ctx.propose(ConfigPlan::CreateRegionGroups(publish)).await? {
                Ok(_) => {
                    let tasks = self.missing_replica_tasks(ctx, &serving);
                    if !tasks.is_empty() {
                        let offer = OfferRegionMaintainTasks { tasks };
                        ctx.propose(ConfigPlan::OfferRegionMaintainTasks(offer))
                            .await??;
                    }
                }
                Err(rejection) => {
                    // The database went away or is being deleted: publish nothing and tear
                    // every created replica down.
                    tracing::warn!(procedure = %ctx.procedure_id(), "publish refused: {rejection}");
                    torn_down = self.data.groups.iter().map(|g| g.region).collect();
                }
            }
        }
        self.data.torn_down = torn_down;
        self.data.state = if self.data.torn_down.is_empty() {
            CreateRegionGroupsState::Finish
        } else {
            CreateRegionGroupsState::TearDown
        };
        Ok(Step::Continue)
    }

    fn missing_replica_tasks(
        &self,
        ctx: &ProcedureContext,
        serving: &[&PlannedGroup],
    ) -> Vec<NewRegionMaintainTask> {
        let mut tasks = Vec::new();
        ctx.state().read(|s| {
            for group in serving {
                for node in group.replicas.iter().filter(|n| !group.created.contains(n)) {
                    if let Some(info) = s.data_nodes.get(node) {
                        tasks.push(NewRegionMaintainTask {
                            kind: RegionMaintainKind::Create,
                            database: self.data.database.clone(),
                            region: RegionReplicaSet::new(group.region, group.replicas.clone()),
                            target: info.location.clone(),
                        });
                    }
                }
            }
        });
        tasks
    }

    fn tear_down(&mut self) -> Step {
        let children = self
            .data
            .groups
            .iter()
            .filter(|g| self.data.torn_down.contains(&g.region))
            .map(|g| {
                Box::new(RemoveRegionGroupProcedure::group(
                    self.data.database.clone(),
                    g.region,
                    g.replicas.clone(),
                )) as Box<dyn Procedure>
            })
            .collect();
        self.data.state = CreateRegionGroupsState::Finish;
        Step::SpawnChildren(children)
    }

    /// Abort: some groups could not reach a quorum (after they were torn down).
    /// Abort: a tear-down failed, or some groups could not reach a quorum (after they were
    /// torn down; a database this procedure created and left without any group is dropped
    /// too, so a failed creation leaves nothing behind).
    async fn finish(&self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(child) = ctx
            .children()
            .iter()
            .find(|c| c.status != ProcedureStatus::Succeeded)
        {
            return Err(ProcedureError::Abort(format!(
                "tear-down {} ended {}: {}",
                child.id,
                child.status,
                child.error.clone().unwrap_or_default()
            )));
        }
        if !self.data.torn_down.is_empty() {
            let nothing_published = self.data.torn_down.len() == self.data.groups.len();
            let mut dropped = "";
            if nothing_published && self.data.new_database.is_some() {
                self.drop_new_database(ctx).await?;
                dropped = "; the database was not created";
            }
            return Err(ProcedureError::Abort(format!(
                "{} of {} region groups could not reach a quorum and were torn down{dropped}",
                self.data.torn_down.len(),
                self.data.groups.len()
            )));
        }
        let (complete, degraded): (Vec<&PlannedGroup>, Vec<&PlannedGroup>) = self
            .data
            .groups
            .iter()
            .partition(|g| g.created.len() == g.replicas.len());
        let output = CreateRegionGroupsOutput {
            complete: complete.iter().map(|g| g.region).collect(),
            degraded: degraded.iter().map(|g| g.region).collect(),
        };
        Ok(Step::Done(encode_data(&output)?))
    }
}

impl CreateRegionGroupsProcedure {
    /// Drops the database this procedure created (idempotent: gone already is fine).
    async fn drop_new_database(&self, ctx: &ProcedureContext) -> Result<(), ProcedureError> {
        let name = self.data.database.clone();
        let mark = PreDeleteDatabase {
            name: name.clone(),
            deleting: true,
        };
        match ctx.propose(ConfigPlan::PreDeleteDatabase(mark)).await? {
            Ok(_) | Err(Rejection::DatabaseNotFound(_)) => {}
            Err(rejection) => return Err(rejection.into()),
        }
        ctx.propose(ConfigPlan::DeleteDatabase(DeleteDatabase { name }))
            .await??;
        Ok(())
    }
}

#[async_trait]
impl Procedure for CreateRegionGroupsProcedure {
    fn type_code(&self) -> u32 {
        Self::TYPE_CODE
    }

    fn type_name(&self) -> &'static str {
        Self::TYPE_NAME
    }

    fn state(&self) -> StateId {
        StateId {
            code: u32::from(self.data.state.code()),
            name: self.data.state.name(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, ProcedureError> {
        encode_data(&self.data)
    }

    fn lock_keys(&self) -> Vec<LockKey> {
        // Shared: creations in one database may run together; a deletion (exclusive) waits
        // for them, and they wait for it.
        vec![LockKey {
            resource: LockResource::Database(self.data.database.clone()),
            mode: LockMode::Shared,
        }]
    }

    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        match self.data.state {
            CreateRegionGroupsState::CreateDatabase => self.create_database(ctx).await,
            CreateRegionGroupsState::Prepare => self.prepare(ctx).await,
            CreateRegionGroupsState::CreateReplicas => self.create_replicas(ctx).await,
            CreateRegionGroupsState::Publish => self.publish(ctx).await,
            CreateRegionGroupsState::TearDown => Ok(self.tear_down()),
            CreateRegionGroupsState::Finish => self.finish(ctx).await,
        }
    }
}

impl ProcedureType for CreateRegionGroupsProcedure {
    const TYPE_CODE: u32 = CREATE_REGION_GROUPS;
    const TYPE_NAME: &'static str = "CreateRegionGroups";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}
