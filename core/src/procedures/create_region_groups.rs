//! [`CreateRegionGroupsProcedure`]: create a database's region groups.
//!
//! Ids are reserved and replicas placed first (persisted); every group's footprint is
//! recorded before any create leaves; then every replica is created by a synchronous,
//! idempotent `create_region`, a transient failure retried within
//! [`LifecycleConfig::create_retry_window`](super::LifecycleConfig). Per group: every replica
//! created → serving; a quorum → serving, plus one durable create task per missing replica in
//! the region-maintain queue (the leader's region cleaner retries it until the replica
//! exists); no quorum → one child [`RemoveRegionGroupProcedure`] deletes the group's whole
//! footprint (a create that timed out may still have happened) and the group is never
//! published. A group once published is never torn down by its creation: a re-run Publish
//! finds it published (and maybe completed by the cleaner since) and leaves it alone.
//!
//! A creation that fails before publishing anything leaves nothing behind: the groups are
//! torn down and a database it created is dropped, under its exclusive database lock.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{ApiError, CreateRegionRequest};
use crate::coded_enum;
use crate::model::{
    DataNodeId, DatabaseName, DatabaseSchema, RegionId, RegionKind, RegionReplicaSet,
};
use crate::placement::place_groups;
use crate::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, DeleteDatabase, NewRegionMaintainTask,
    OfferRegionMaintainTasks, RecordReplicaFootprints, ReserveRegionIds, SetDatabaseDeleting,
};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::runtime::BoxFuture;
use crate::state::{Applied, LockKey, LockMode, LockResource, RegionMaintainKind, Rejection};

use super::env::{RegionEnv, first_failed_child};
use super::{CREATE_REGION_GROUPS, RemoveRegionGroupProcedure};

coded_enum! {
    /// States of [`CreateRegionGroupsProcedure`], in the order they run. Codes are stable
    /// (`CreateDatabase` came last, so it keeps 6).
    pub enum CreateRegionGroupsState {
        /// Create the database itself (only when the procedure creates a new database).
        CreateDatabase = 6,
        /// Reserve region ids and choose DataNodes.
        Prepare = 1,
        /// Record the footprints, then create every replica (synchronous RPCs).
        CreateReplicas = 2,
        /// Publish groups with a quorum; queue creates for their missing replicas.
        Publish = 3,
        /// Spawn one removal per group never published.
        TearDown = 4,
        /// Report the outcome (dropping a database the creation made and left empty).
        Finish = 5,
    }
}

/// One group to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct PlannedGroup {
    pub region: RegionId,
    /// Where its replicas go.
    pub replicas: Vec<DataNodeId>,
    /// Replicas whose create succeeded.
    pub created: Vec<DataNodeId>,
}

/// Persistent data of [`CreateRegionGroupsProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct CreateRegionGroupsData {
    pub state: CreateRegionGroupsState,
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
    /// Why the creation failed before publishing, if it did (`Finish` reports it, after the
    /// clean-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
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
type CreateCall = (usize, DataNodeId, Result<(), ApiError>);

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
                failure: None,
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

    /// The persistent data.
    pub fn data(&self) -> &CreateRegionGroupsData {
        &self.data
    }

    /// Ends the creation with `reason` after `Finish` has cleaned up.
    fn fail(&mut self, reason: String) -> Step {
        self.data.failure = Some(reason);
        self.data.state = CreateRegionGroupsState::Finish;
        Step::Continue
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

    /// Retry: commit failures. Fail (to `Finish`, which cleans up): database missing or
    /// being deleted, not enough running DataNodes, ids refused.
    async fn prepare(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        match self.place_and_reserve(ctx).await {
            Ok(step) => Ok(step),
            Err(e) if e.is_retryable() || e.is_stop() => Err(e),
            Err(e) => Ok(self.fail(e.to_string())),
        }
    }

    async fn place_and_reserve(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
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

    /// Retry: commit failures. Stop: a DataNode has seen a newer epoch. Never fails
    /// otherwise: a replica that could not be created within the retry window is simply
    /// not counted.
    async fn create_replicas(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        // Record the footprint before any create leaves: a create whose reply is lost still
        // made a replica, and every removal deletes on the whole footprint.
        let footprints = RecordReplicaFootprints {
            database: self.data.database.clone(),
            groups: self
                .data
                .groups
                .iter()
                .map(|g| RegionReplicaSet::new(g.region, g.replicas.clone()))
                .collect(),
        };
        if let Err(rejection) = ctx
            .propose(ConfigPlan::RecordReplicaFootprints(footprints))
            .await?
        {
            // Nothing was sent: the database went away or is being deleted.
            return Ok(self.fail(format!("no replica can be created: {rejection}")));
        }
        let mut calls: Vec<BoxFuture<CreateCall>> = Vec::new();
        for (index, group) in self.data.groups.iter().enumerate() {
            for node in &group.replicas {
                if group.created.contains(node) {
                    continue;
                }
                // The generation the footprint just recorded: a deletion covering it fences
                // this create should it arrive late.
                let generation = ctx
                    .state()
                    .read(|s| s.creation_generation(group.region, *node))
                    .unwrap_or(0);
                let request = CreateRegionRequest {
                    region: group.region,
                    database: self.data.database.clone(),
                    peers: group.replicas.clone(),
                    generation,
                };
                calls.push(Box::pin(create_with_retry(ctx, env, *node, request, index)));
            }
        }
        let mut stale = None;
        for (index, node, result) in crate::util::join_all(calls, 64).await {
            let group = &mut self.data.groups[index];
            match result {
                Ok(()) => group.created.push(node),
                Err(e) => {
                    if let Some(stop) = env.stale_leader(node, &e) {
                        stale = Some(stop);
                    }
                    tracing::warn!(
                        procedure = %ctx.procedure_id(), region = %group.region, data_node = %node,
                        "replica create failed: {e}"
                    );
                }
            }
        }
        if let Some(stop) = stale {
            return Err(stop);
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

    /// This database's published groups among ours, with their replica sets as they are.
    fn published(&self, ctx: &ProcedureContext) -> BTreeMap<RegionId, Vec<DataNodeId>> {
        let database = &self.data.database;
        let ours: BTreeSet<RegionId> = self.data.groups.iter().map(|g| g.region).collect();
        ctx.state().read(|s| {
            s.partition_tables
                .get(database)
                .into_iter()
                .flat_map(|t| t.groups.values())
                .filter(|g| ours.contains(&g.region))
                .map(|g| (g.region, g.replicas.clone()))
                .collect()
        })
    }

    /// Retry: commit failures. Abort: none (a refused publish tears down the groups that
    /// were not published; a published group is never torn down).
    async fn publish(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let published = self.published(ctx);
        let serving: Vec<&PlannedGroup> = self
            .data
            .groups
            .iter()
            .filter(|g| g.created.len() >= self.quorum(env, g))
            .collect();
        let to_publish: Vec<RegionReplicaSet> = serving
            .iter()
            .filter(|g| !published.contains_key(&g.region))
            .map(|g| RegionReplicaSet::new(g.region, g.created.clone()))
            .collect();
        let mut refused = false;
        if !to_publish.is_empty() {
            let publish = CreateRegionGroups {
                database: self.data.database.clone(),
                groups: to_publish,
            };
            if let Err(rejection) = ctx.propose(ConfigPlan::CreateRegionGroups(publish)).await? {
                // The database is being deleted (or is gone): publish nothing more.
                tracing::warn!(procedure = %ctx.procedure_id(), "publish refused: {rejection}");
                refused = true;
            }
        }
        let published = self.published(ctx);
        let tasks = self.missing_replica_tasks(ctx, &published);
        if !tasks.is_empty() {
            let offer = OfferRegionMaintainTasks { tasks };
            ctx.propose(ConfigPlan::OfferRegionMaintainTasks(offer))
                .await??;
        }
        // Teardown is only for groups never published.
        let mutated = crate::mutations::active(crate::mutations::Mutation::PublishTeardown);
        self.data.torn_down = self
            .data
            .groups
            .iter()
            .filter(|g| {
                // Mutation: a re-run that finds its published group changed (the cleaner
                // completed it) takes that as a refusal.
                let changed = mutated && published.get(&g.region).is_some_and(|p| *p != g.created);
                changed
                    || (!published.contains_key(&g.region)
                        && (refused || g.created.len() < self.quorum(env, g)))
            })
            .map(|g| g.region)
            .collect();
        self.data.state = if self.data.torn_down.is_empty() {
            CreateRegionGroupsState::Finish
        } else {
            CreateRegionGroupsState::TearDown
        };
        Ok(Step::Continue)
    }

    /// One durable create task per planned replica a published group lacks.
    fn missing_replica_tasks(
        &self,
        ctx: &ProcedureContext,
        published: &BTreeMap<RegionId, Vec<DataNodeId>>,
    ) -> Vec<NewRegionMaintainTask> {
        let mut tasks = Vec::new();
        ctx.state().read(|s| {
            for group in &self.data.groups {
                let Some(present) = published.get(&group.region) else {
                    continue;
                };
                for node in group.replicas.iter().filter(|n| !present.contains(n)) {
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
            .torn_down
            .iter()
            .map(|region| {
                Box::new(RemoveRegionGroupProcedure::group(
                    self.data.database.clone(),
                    *region,
                )) as Box<dyn Procedure>
            })
            .collect();
        self.data.state = CreateRegionGroupsState::Finish;
        Step::SpawnChildren(children)
    }

    /// Abort: a tear-down failed; the creation failed before publishing (its database, if
    /// it created one, is dropped first); some groups could not reach a quorum (after they
    /// were torn down; likewise).
    async fn finish(&self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(failed) = first_failed_child(ctx, "tear-down") {
            return Err(failed);
        }
        let reason = match &self.data.failure {
            Some(failure) => Some(failure.clone()),
            None if !self.data.torn_down.is_empty() => Some(format!(
                "{} of {} region groups could not reach a quorum and were torn down",
                self.data.torn_down.len(),
                self.data.groups.len()
            )),
            None => None,
        };
        if let Some(reason) = reason {
            let mut dropped = "";
            if self.published(ctx).is_empty() && self.data.new_database.is_some() {
                self.drop_new_database(ctx).await?;
                dropped = "; the database was not created";
            }
            return Err(ProcedureError::Abort(format!("{reason}{dropped}")));
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

    /// Drops the database this procedure created (idempotent: gone already is fine).
    async fn drop_new_database(&self, ctx: &ProcedureContext) -> Result<(), ProcedureError> {
        let name = self.data.database.clone();
        let mark = SetDatabaseDeleting {
            name: name.clone(),
            deleting: true,
        };
        match ctx.propose(ConfigPlan::SetDatabaseDeleting(mark)).await? {
            Ok(_) | Err(Rejection::DatabaseNotFound(_)) => {}
            Err(rejection) => return Err(rejection.into()),
        }
        ctx.propose(ConfigPlan::DeleteDatabase(DeleteDatabase { name }))
            .await??;
        Ok(())
    }
}

/// Creates one replica, retrying transient failures (unreachable, timeout) with backoff
/// within the create retry window: a DataNode that is restarting gets its replica now rather
/// than through the repair queue. The address is resolved at every attempt.
fn create_with_retry(
    ctx: &ProcedureContext,
    env: &RegionEnv,
    node: DataNodeId,
    request: CreateRegionRequest,
    index: usize,
) -> impl std::future::Future<Output = CreateCall> + Send + 'static {
    let epoch = ctx.epoch();
    let runtime = ctx.runtime().clone();
    let state = ctx.state();
    let clients = env.clients.clone();
    let retry = env.config.retry.clone();
    let deadline = runtime
        .clock
        .now_ms()
        .saturating_add(env.config.create_retry_window.as_millis() as u64);
    async move {
        let mut attempt = 0u32;
        loop {
            let location = state.read(|s| s.data_nodes.get(&node).map(|n| n.location.clone()));
            let Some(location) = location else {
                let unknown = ApiError::Unreachable(format!("DataNode {node} is not registered"));
                return (index, node, Err(unknown));
            };
            let result = clients
                .client(&location)
                .create_region(epoch, request.clone())
                .await;
            match result {
                Err(e) if e.is_retryable() && runtime.clock.now_ms() < deadline => {
                    attempt += 1;
                    let delay = retry.delay(attempt, runtime.rng.as_ref());
                    runtime.clock.sleep(delay).await;
                }
                other => return (index, node, other),
            }
        }
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
        // for them, and they wait for it. Exclusive when creating the database itself: a
        // failed creation drops it, and nothing else may be working in it then.
        let mode = if self.data.new_database.is_some() {
            LockMode::Exclusive
        } else {
            LockMode::Shared
        };
        vec![LockKey {
            resource: LockResource::Database(self.data.database.clone()),
            mode,
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

#[cfg(test)]
mod tests;
