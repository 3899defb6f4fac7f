//! [`MigrateRegionProcedure`]: move one replica of a region group to another DataNode, or
//! (repair) add a replica to a group that lost one, copying the data DataNode-to-DataNode.
//!
//! `Prepare` (choose the target by placement unless named, and a live replica to copy from)
//! → `CreateTarget` (record the target in the footprint — a new creation generation — then
//! create the empty replica: the footprint-before-create rule, like every create) →
//! `CopyData` (a `CopyRegion` task on the target, its id persisted before it is submitted,
//! followed to a terminal status: the target pulls checksummed chunks from the source and
//! resumes after a crash or a lost connection) → `Verify` (ack the copy task, then compare
//! whole-replica digests of target and source; a source that grew meanwhile is copied on, a
//! mismatch is copied again) → `Publish` (`AddRegionLocation`: the group has RF + 1 serving
//! replicas) → `RemoveSource` (a child removal deletes the old replica through the task
//! protocol: `ReplicaDeleted`, ack after persist) → `Finish`. So a planned move never leaves
//! the group with fewer serving replicas than its RF.
//!
//! A failure after the target was created (`Undo`) deletes the target replica through a
//! child removal before the procedure ends failed: a failed migration leaves nothing behind.
//! Locks: the region group exclusive, and nothing else. Not the database: a deletion of it
//! submitted first holds the database while its child removal of this group waits for the
//! group, so a migration waiting for the database behind it deadlocks both (simulator). A
//! deletion's removal of the group waits for the migration instead; a migration that finds
//! its database being deleted finishes as skipped.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::api::{ApiError, CreateRegionRequest, MaintainTask, MaintainTaskKind, RegionDigest};
use crate::coded_enum;
use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, RegionId, RegionKind, RegionReplicaSet, TaskId,
};
use crate::plan::{AddRegionLocation, ConfigPlan, RecordReplicaFootprints};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{ClusterState, DataNodeStatus, LockKey, LockMode, LockResource};

use super::env::{CallFailure, RegionEnv, TaskProgress, first_failed_child, task_id_for};
use super::{MIGRATE_REGION, RemoveRegionGroupProcedure};

/// Failed copies (or digests that do not match) before a migration gives up.
pub const MAX_COPY_FAILURES: u32 = 5;

coded_enum! {
    /// States of [`MigrateRegionProcedure`].
    pub enum MigrateRegionState {
        /// Choose the target and a replica to copy from.
        Prepare = 1,
        /// Record the target in the footprint, then create its empty replica.
        CreateTarget = 2,
        /// Copy the data through a `CopyRegion` task on the target.
        CopyData = 3,
        /// Compare whole-replica digests of target and source.
        Verify = 4,
        /// Add the target to the group's published replicas.
        Publish = 5,
        /// Delete the source replica (child removal).
        RemoveSource = 6,
        /// Report the outcome.
        Finish = 7,
        /// Delete the target replica of a failed migration (child removal).
        Undo = 8,
    }
}

coded_enum! {
    /// What a migration does with the source.
    pub enum MigrationMode {
        /// Planned move: the source replica is deleted once the target is published.
        Move = 1,
        /// Repair: the source was abandoned (its DataNode is gone); only a replica is added,
        /// copied from a surviving one.
        Repair = 2,
    }
}

/// The replicas `group` has or is owed: its published ones and the DataNodes a queued create
/// still targets (the cleaner retries it until it lands). A repair that counted only the
/// published ones added a replica the queued create then added again (simulator).
pub(crate) fn owed_replicas(state: &ClusterState, group: &RegionReplicaSet) -> usize {
    let queued: std::collections::BTreeSet<DataNodeId> = state
        .create_queue
        .values()
        .filter(|c| c.group.region == group.region && !group.replicas.contains(&c.target))
        .map(|c| c.target)
        .collect();
    group.replicas.len() + queued.len()
}

/// Whether an unfinished procedure reserved `region`'s id: the creation of its group has not
/// finished (its publish may have committed while the creation retries its step).
fn creation_in_flight(state: &ClusterState, region: RegionId) -> bool {
    state
        .region_reservations
        .iter()
        .any(|((owner, kind), (first, count))| {
            *kind == region.kind
                && region.id >= *first
                && region.id - *first < *count
                && state
                    .procedures
                    .get(owner)
                    .is_some_and(|p| !p.status.is_finished())
        })
}

/// Persistent data of [`MigrateRegionProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRegionData {
    /// Current state.
    pub state: MigrateRegionState,
    /// Move or repair.
    pub mode: MigrationMode,
    /// The group's database.
    pub database: DatabaseName,
    /// The group.
    pub region: RegionId,
    /// The replica that leaves (`Move`) or was abandoned (`Repair`).
    pub source: DataNodeId,
    /// Where the new replica goes (chosen by placement in `Prepare` when not named).
    pub target: Option<DataNodeId>,
    /// The live replica the data is copied from.
    pub copy_from: Option<DataNodeId>,
    /// The current copy task, persisted before it is submitted.
    pub task: Option<TaskId>,
    /// The copy task's source as submitted (a resubmission of the same id sends the same).
    pub task_source: Option<DataNodeLocation>,
    /// A finished copy task to ack: the procedure has durably moved past its result.
    pub ack: Option<TaskId>,
    /// Task ids handed out so far.
    pub task_seq: u32,
    /// Failed copies and mismatching digests so far.
    pub failures: u32,
    /// Consecutive transient failures reaching a DataNode (backoff).
    pub unreachable: u32,
    /// The verified copy: length and checksum of the target equal to the source's.
    pub copied: Option<RegionDigest>,
    /// Why the migration failed (reported by `Finish`, after `Undo`).
    pub failure: Option<String>,
    /// Why there was nothing to do (the group went away, the source holds no replica).
    pub skipped: Option<String>,
}

/// What a finished migration reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRegionOutput {
    /// The group.
    pub region: RegionId,
    /// The replica that left (or was replaced).
    pub from: DataNodeId,
    /// The new replica, if one was made.
    pub to: Option<DataNodeId>,
    /// Bytes copied and verified.
    pub bytes: u64,
    /// Their crc32c.
    pub crc32c: u32,
    /// Why nothing was done, if nothing was.
    pub skipped: Option<String>,
}

/// Moves (or repairs) one replica of a region group. See the module docs.
#[derive(Debug, Clone)]
pub struct MigrateRegionProcedure {
    data: MigrateRegionData,
}

/// Whether `node` may serve as a copy source: registered and not known to be down.
fn is_live(state: &ClusterState, node: DataNodeId) -> bool {
    state
        .data_nodes
        .get(&node)
        .is_some_and(|n| n.status != DataNodeStatus::Unknown)
}

impl MigrateRegionProcedure {
    /// Moves the replica of `region` (in `database`) on `from` to `to` (`None`: placement
    /// chooses).
    pub fn new(
        database: DatabaseName,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
    ) -> Self {
        Self::with_mode(MigrationMode::Move, database, region, from, to)
    }

    /// Adds a replica to `region` in place of the abandoned one on `lost`, copied from a
    /// surviving replica (`to`: `None` lets placement choose).
    pub fn repair(
        database: DatabaseName,
        region: RegionId,
        lost: DataNodeId,
        to: Option<DataNodeId>,
    ) -> Self {
        Self::with_mode(MigrationMode::Repair, database, region, lost, to)
    }

    fn with_mode(
        mode: MigrationMode,
        database: DatabaseName,
        region: RegionId,
        source: DataNodeId,
        target: Option<DataNodeId>,
    ) -> Self {
        Self {
            data: MigrateRegionData {
                state: MigrateRegionState::Prepare,
                mode,
                database,
                region,
                source,
                target,
                copy_from: None,
                task: None,
                task_source: None,
                ack: None,
                task_seq: 0,
                failures: 0,
                unreachable: 0,
                copied: None,
                failure: None,
                skipped: None,
            },
        }
    }

    /// The persistent data.
    pub fn data(&self) -> &MigrateRegionData {
        &self.data
    }

    /// Ends the migration with `reason`; a target that may exist is deleted first.
    fn fail(&mut self, reason: String) -> Step {
        self.data.failure = Some(reason);
        self.data.task = None;
        self.data.state = match self.data.state {
            MigrateRegionState::Prepare => MigrateRegionState::Finish,
            _ => MigrateRegionState::Undo,
        };
        Step::Continue
    }

    fn skip(&mut self, reason: String) -> Step {
        self.data.skipped = Some(reason);
        self.data.state = MigrateRegionState::Finish;
        Step::Continue
    }

    fn target(&self) -> Result<DataNodeId, ProcedureError> {
        self.data
            .target
            .ok_or_else(|| ProcedureError::Data("migration past Prepare without a target".into()))
    }

    /// A live replica of the group to copy from: the source itself when it is live (a move),
    /// else the first live replica other than the target.
    fn choose_copy_from(&self, state: &ClusterState) -> Option<DataNodeId> {
        let group = state.region_group(self.data.region)?;
        let source = self.data.source;
        if self.data.mode == MigrationMode::Move
            && group.replicas.contains(&source)
            && is_live(state, source)
        {
            return Some(source);
        }
        group
            .replicas
            .iter()
            .copied()
            .find(|n| Some(*n) != self.data.target && is_live(state, *n))
    }

    /// Done: the group is gone, being deleted, already complete, or the source holds no
    /// replica. Fail: the named target cannot take it, or no DataNode can. Retry (wait): no
    /// live replica to copy from.
    fn prepare(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let region = self.data.region;
        let decision = ctx.state().read(|s| -> Result<(), String> {
            let Some(group) = s.region_group(region) else {
                return Err(format!("region group {region} no longer exists"));
            };
            if s.databases
                .get(&self.data.database)
                .is_none_or(|d| d.deleting)
            {
                return Err(format!("database {} is being deleted", self.data.database));
            }
            match self.data.mode {
                MigrationMode::Move if !group.replicas.contains(&self.data.source) => {
                    Err(format!("{} holds no replica of {region}", self.data.source))
                }
                MigrationMode::Repair => {
                    let rf = s
                        .databases
                        .get(&self.data.database)
                        .map_or(0, |d| replication_factor(&d.schema, region.kind));
                    if owed_replicas(s, group) >= rf {
                        Err(format!("{region} already has its {rf} replicas"))
                    } else {
                        Ok(())
                    }
                }
                MigrationMode::Move => Ok(()),
            }
        });
        if let Err(reason) = decision {
            return Ok(self.skip(reason));
        }
        if ctx.state().read(|s| creation_in_flight(s, region)) {
            // Its creation may still commit and act on the replica set it planned (queue the
            // creates it missed, on the very node this would move away from): moving now
            // put a replica back on the source, one above the RF (simulator). Wait for it.
            self.data.unreachable = self.data.unreachable.saturating_add(1);
            return Ok(Step::Wait {
                after: env
                    .config
                    .retry
                    .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                waiting_for: format!("the creation of {region} to finish"),
            });
        }
        let target = ctx.state().read(|s| match self.data.target {
            Some(target) => check_target(s, region, target).map(|()| target),
            None => crate::placement::place_replacement(s, region, &[self.data.source]).ok_or_else(
                || format!("no running DataNode outside the group of {region} can take a replica"),
            ),
        });
        let target = match target {
            Ok(target) => target,
            Err(reason) => return Ok(self.fail(reason)),
        };
        self.data.target = Some(target);
        let Some(copy_from) = ctx.state().read(|s| self.choose_copy_from(s)) else {
            self.data.target = None;
            self.data.unreachable = self.data.unreachable.saturating_add(1);
            return Ok(Step::Wait {
                after: env
                    .config
                    .retry
                    .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                waiting_for: format!("a live replica of {region} to copy from"),
            });
        };
        self.data.copy_from = Some(copy_from);
        self.data.unreachable = 0;
        self.data.state = MigrateRegionState::CreateTarget;
        Ok(Step::Continue)
    }

    /// Retry: the target unreachable or timing out. Stop: a newer epoch. Fail (and undo):
    /// the footprint refused (database being deleted), the target refused the create.
    async fn create_target(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let (region, target) = (self.data.region, self.target()?);
        // Footprint before create: the target may hold a replica from the moment the create
        // leaves, and every removal deletes on the whole footprint.
        let record = RecordReplicaFootprints {
            database: self.data.database.clone(),
            groups: vec![RegionReplicaSet::new(region, vec![target])],
        };
        if let Err(rejection) = ctx
            .propose(ConfigPlan::RecordReplicaFootprints(record))
            .await?
        {
            return Ok(self.fail(format!("the target replica cannot be created: {rejection}")));
        }
        let (generation, peers) = ctx.state().read(|s| {
            let mut peers = s
                .region_group(region)
                .map(|g| g.replicas.clone())
                .unwrap_or_default();
            peers.push(target);
            peers.sort();
            peers.dedup();
            (s.creation_generation(region, target).unwrap_or(0), peers)
        });
        let Some(location) = RegionEnv::location(ctx, target) else {
            return Ok(self.fail(format!("target {target} is no longer registered")));
        };
        let request = CreateRegionRequest {
            region,
            database: self.data.database.clone(),
            peers,
            generation,
        };
        match env
            .clients
            .client(&location)
            .create_region(ctx.epoch(), request)
            .await
        {
            Ok(()) => {
                self.data.unreachable = 0;
                self.data.state = MigrateRegionState::CopyData;
                Ok(Step::Continue)
            }
            Err(e) => self.call_failed(ctx, env, target, "the target replica's create", e),
        }
    }

    /// Retry: the target unreachable; a failed copy (new task id, after backoff; the new
    /// task resumes after the bytes already copied). Stop: a newer epoch. Fail (and undo):
    /// the target refuses the task; more than [`MAX_COPY_FAILURES`] failed copies.
    async fn copy_data(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let (region, target) = (self.data.region, self.target()?);
        let Some(task_id) = self.data.task else {
            // Re-choose the source if it went down: any live replica has the same bytes.
            let copy_from = ctx.state().read(|s| match self.data.copy_from {
                Some(n)
                    if is_live(s, n)
                        && s.region_group(region)
                            .is_some_and(|g| g.replicas.contains(&n)) =>
                {
                    Some(n)
                }
                _ => self.choose_copy_from(s),
            });
            let Some(copy_from) = copy_from else {
                let none_left = ctx.state().read(|s| {
                    s.region_group(region)
                        .is_none_or(|g| g.replicas.iter().all(|n| Some(*n) == self.data.target))
                });
                if none_left {
                    // Every replica was removed for good (a group whose database is being
                    // deleted may lose its last one): nothing will ever be copied, and the
                    // deletion waits for this group (simulator).
                    return Ok(self.fail(format!("no replica of {region} is left to copy from")));
                }
                self.data.unreachable = self.data.unreachable.saturating_add(1);
                return Ok(Step::Wait {
                    after: env
                        .config
                        .retry
                        .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                    waiting_for: format!("a live replica of {region} to copy from"),
                });
            };
            let Some(source) = RegionEnv::location(ctx, copy_from) else {
                return Ok(self.fail(format!("copy source {copy_from} is not registered")));
            };
            // Persist the task id (and what it copies from) before submitting: a crash in
            // between resubmits the same task, never a second copy under a new id.
            self.data.task = Some(task_id_for(ctx.procedure_id(), self.data.task_seq)?);
            self.data.task_seq += 1;
            self.data.copy_from = Some(copy_from);
            self.data.task_source = Some(source);
            return Ok(Step::Continue);
        };
        let Some(location) = RegionEnv::location(ctx, target) else {
            return Ok(self.fail(format!("target {target} is no longer registered")));
        };
        let running = format!("copy of {region} to {target} (task {task_id})");
        let Some(source) = self.data.task_source.clone() else {
            return Err(ProcedureError::Data("copy task without a source".into()));
        };
        let task = MaintainTask {
            task_id,
            kind: MaintainTaskKind::CopyRegion { region, source },
        };
        match env.drive(ctx.epoch(), &location, task, running).await {
            Ok(TaskProgress::Succeeded) => {
                // The next step acks it, once this transition is durable.
                self.data.ack = Some(task_id);
                self.data.task = None;
                self.data.unreachable = 0;
                self.data.state = MigrateRegionState::Verify;
                Ok(Step::Continue)
            }
            Ok(TaskProgress::Failed(reason)) => Ok(self.copy_failed(ctx, env, reason)),
            Ok(TaskProgress::Running(step)) => Ok(step),
            Ok(TaskProgress::Rejected(reason)) => {
                Ok(self.fail(format!("{target} refused copy task {task_id}: {reason}")))
            }
            Err(e) => self.call_failed(ctx, env, target, "a copy task", e),
        }
    }

    fn copy_failed(&mut self, ctx: &ProcedureContext, env: &RegionEnv, reason: String) -> Step {
        tracing::warn!(procedure = %ctx.procedure_id(), region = %self.data.region,
            target = ?self.data.target, "copy failed: {reason}");
        self.data.failures += 1;
        if self.data.failures >= MAX_COPY_FAILURES {
            return self.fail(format!(
                "copying {} failed {} times; last: {reason}",
                self.data.region, self.data.failures
            ));
        }
        // A deliberate re-run takes a new id (persisted first by the next step); the failed
        // result is left to the DataNode's retention bound.
        self.data.task = None;
        self.data.state = MigrateRegionState::CopyData;
        Step::Wait {
            after: env
                .config
                .retry
                .delay(self.data.failures, ctx.runtime().rng.as_ref()),
            waiting_for: format!("retry of the copy of {}: {reason}", self.data.region),
        }
    }

    /// Retry: a DataNode unreachable. Stop: a newer epoch. Back to `CopyData`: the source
    /// grew meanwhile, the digests differ (at most [`MAX_COPY_FAILURES`] times), or the
    /// source's DataNode was removed for good. Fail: a replica is missing.
    async fn verify(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let env = RegionEnv::of(ctx)?;
        let (region, target) = (self.data.region, self.target()?);
        let copy_from = self
            .data
            .copy_from
            .ok_or_else(|| ProcedureError::Data("verify without a copy source".into()))?;
        if let Some(task) = self.data.ack {
            // Ack after persist: this state, past the copy's result, is durable.
            env.ack(ctx, target, task).await?;
            self.data.ack = None;
        }
        if ctx.state().read(|s| s.is_abandoned(region, copy_from)) {
            // Its DataNode was removed for good: it will never answer, and the forced removal
            // waits for this group. Copy on from another live replica (the copy resumes after
            // the bytes the target has, once they match). Found by the simulator.
            self.data.state = MigrateRegionState::CopyData;
            return Ok(Step::Continue);
        }
        let (Some(to), Some(from)) = (
            RegionEnv::location(ctx, target),
            RegionEnv::location(ctx, copy_from),
        ) else {
            return Ok(self.fail(format!("{target} or {copy_from} is no longer registered")));
        };
        let ours = match env.clients.client(&to).region_digest(region, None).await {
            Ok(digest) => digest,
            Err(e) => return self.call_failed(ctx, env, target, "a digest", e),
        };
        let theirs = match env
            .clients
            .client(&from)
            .region_digest(region, Some(ours.len))
            .await
        {
            Ok(digest) => digest,
            Err(e) => return self.call_failed(ctx, env, copy_from, "a digest", e),
        };
        self.data.unreachable = 0;
        if theirs.len == ours.len && theirs.crc32c == ours.crc32c {
            if theirs.region_len > ours.len {
                // Written to since the copy read its end: copy the rest.
                self.data.state = MigrateRegionState::CopyData;
                return Ok(Step::Continue);
            }
            tracing::info!(procedure = %ctx.procedure_id(), %region, %target, from = %copy_from,
                bytes = ours.len, crc32c = ours.crc32c, "copy verified");
            self.data.copied = Some(ours);
            self.data.state = MigrateRegionState::Publish;
            return Ok(Step::Continue);
        }
        let reason = format!(
            "digest of {region} on {target} ({} bytes, crc {:#010x}) differs from {copy_from}'s \
             ({} bytes, crc {:#010x})",
            ours.len, ours.crc32c, theirs.len, theirs.crc32c
        );
        Ok(self.copy_failed(ctx, env, reason))
    }

    /// Retry: commit failures. Fail (and undo): the group went away.
    async fn publish(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let (region, target) = (self.data.region, self.target()?);
        let add = AddRegionLocation {
            region,
            data_node: target,
        };
        if let Err(rejection) = ctx.propose(ConfigPlan::AddRegionLocation(add)).await? {
            return Ok(self.fail(format!("the copy cannot be published: {rejection}")));
        }
        tracing::info!(procedure = %ctx.procedure_id(), %region, data_node = %target,
            "migrated replica published");
        self.data.state = match self.data.mode {
            MigrationMode::Move => MigrateRegionState::RemoveSource,
            MigrationMode::Repair => MigrateRegionState::Finish,
        };
        Ok(Step::Continue)
    }

    fn remove_source(&mut self) -> Step {
        self.data.state = MigrateRegionState::Finish;
        Step::SpawnChildren(vec![Box::new(RemoveRegionGroupProcedure::replicas(
            self.data.database.clone(),
            self.data.region,
            vec![self.data.source],
        ))])
    }

    /// Deletes a target replica that may exist and was never published.
    fn undo(&mut self, ctx: &ProcedureContext) -> Step {
        self.data.state = MigrateRegionState::Finish;
        let region = self.data.region;
        let Some(target) = self.data.target else {
            return Step::Continue;
        };
        let leftover = ctx.state().read(|s| {
            s.footprint(region).contains(&target)
                && !s
                    .region_group(region)
                    .is_some_and(|g| g.replicas.contains(&target))
        });
        if !leftover {
            return Step::Continue;
        }
        Step::SpawnChildren(vec![Box::new(RemoveRegionGroupProcedure::replicas(
            self.data.database.clone(),
            region,
            vec![target],
        ))])
    }

    /// Abort: the migration failed (after its target was deleted), or the source's removal
    /// failed (the group then has one replica more than its RF, visibly).
    fn finish(&self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(failure) = &self.data.failure {
            let undone = match first_failed_child(ctx, "removal of the target replica") {
                Some(e) => format!("; {e}"),
                None if ctx.children().is_empty() => String::new(),
                None => "; the target replica was deleted".into(),
            };
            return Err(ProcedureError::Abort(format!("{failure}{undone}")));
        }
        if let Some(failed) = first_failed_child(ctx, "removal of the source replica") {
            return Err(failed);
        }
        let output = MigrateRegionOutput {
            region: self.data.region,
            from: self.data.source,
            to: self
                .data
                .skipped
                .is_none()
                .then_some(self.data.target)
                .flatten(),
            bytes: self.data.copied.map_or(0, |c| c.len),
            crc32c: self.data.copied.map_or(0, |c| c.crc32c),
            skipped: self.data.skipped.clone(),
        };
        if let Some(reason) = &self.data.skipped {
            tracing::info!(procedure = %ctx.procedure_id(), region = %self.data.region,
                "nothing to migrate: {reason}");
        }
        Ok(Step::Done(encode_data(&output)?))
    }

    fn call_failed(
        &mut self,
        ctx: &ProcedureContext,
        env: &RegionEnv,
        node: DataNodeId,
        what: &str,
        error: ApiError,
    ) -> Result<Step, ProcedureError> {
        match CallFailure::of(env, node, what, error) {
            CallFailure::Stop(e) => Err(e),
            CallFailure::Abort(e) => Ok(self.fail(e.to_string())),
            CallFailure::Retry(error) => {
                self.data.unreachable = self.data.unreachable.saturating_add(1);
                Ok(Step::Wait {
                    after: env
                        .config
                        .retry
                        .delay(self.data.unreachable, ctx.runtime().rng.as_ref()),
                    waiting_for: format!(
                        "DataNode {node} for the migration of {}: {error}",
                        self.data.region
                    ),
                })
            }
        }
    }
}

/// The number of replicas a group of `kind` in a database of `schema` should have.
pub(crate) fn replication_factor(schema: &crate::model::DatabaseSchema, kind: RegionKind) -> usize {
    let factor = match kind {
        RegionKind::Schema => schema.schema_replication_factor,
        RegionKind::Data => schema.data_replication_factor,
    };
    usize::from(factor.get())
}

/// Why `target` cannot take a new replica of `region`, if it cannot.
fn check_target(state: &ClusterState, region: RegionId, target: DataNodeId) -> Result<(), String> {
    match state.data_nodes.get(&target) {
        None => return Err(format!("target {target} is not registered")),
        Some(n) if n.status != DataNodeStatus::Running => {
            return Err(format!("target {target} is {}, not running", n.status));
        }
        Some(_) => {}
    }
    if state.footprint(region).contains(&target) {
        return Err(format!(
            "{target} already holds (or may hold) a replica of {region}"
        ));
    }
    Ok(())
}

#[async_trait]
impl Procedure for MigrateRegionProcedure {
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
        // Only the group: see the module docs for why not the database.
        vec![LockKey {
            resource: LockResource::RegionGroup(self.data.region),
            mode: LockMode::Exclusive,
        }]
    }

    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if matches!(
            self.data.state,
            MigrateRegionState::CreateTarget
                | MigrateRegionState::CopyData
                | MigrateRegionState::Verify
        ) && let Some(target) = self.data.target
            && ctx.state().read(|s| {
                s.is_abandoned(self.data.region, target)
                    && !s.footprint(self.data.region).contains(&target)
            })
        {
            // The target was removed for good meanwhile: nothing there can be finished.
            return Ok(self.fail(format!("target {target} was removed for good")));
        }
        match self.data.state {
            MigrateRegionState::Prepare => self.prepare(ctx),
            MigrateRegionState::CreateTarget => self.create_target(ctx).await,
            MigrateRegionState::CopyData => self.copy_data(ctx).await,
            MigrateRegionState::Verify => self.verify(ctx).await,
            MigrateRegionState::Publish => self.publish(ctx).await,
            MigrateRegionState::RemoveSource => Ok(self.remove_source()),
            MigrateRegionState::Undo => Ok(self.undo(ctx)),
            MigrateRegionState::Finish => self.finish(ctx),
        }
    }
}

impl ProcedureType for MigrateRegionProcedure {
    const TYPE_CODE: u32 = MIGRATE_REGION;
    const TYPE_NAME: &'static str = "MigrateRegion";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

#[cfg(test)]
#[path = "migrate_region/tests.rs"]
mod tests;
