//! [`ClusterState::apply`]: the one deterministic function that changes ConfigNode metadata.

use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, MaintainQueueId, ProcedureId, RegionId,
    RegionReplicaSet,
};
use crate::plan::{self, ConfigPlan};

use super::{
    AbandonedReplica, ClusterState, DataNodeInfo, DataNodeStatus, DatabaseEntry, LegacyDeletion,
    MAX_RESERVE, PartitionTable, ProcedureRecord, QueuedCreate, RegionFootprint,
    RegionMaintainKind,
};

/// What applying an accepted plan produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum Applied {
    /// The state changed.
    Done,
    /// The plan was valid but already in effect (idempotent re-apply) or retired.
    Unchanged,
    /// A DataNode was registered (or re-registered) under this id.
    DataNodeRegistered(DataNodeId),
    /// Region ids `first..first + count` were reserved.
    RegionIdsReserved { first: u32, count: u32 },
    /// Region-maintain tasks were queued under these ids.
    TasksOffered(Vec<MaintainQueueId>),
    /// A procedure was recorded; `existing` when its request key matched an earlier one.
    ProcedureSubmitted {
        id: ProcedureId,
        /// Whether the request key matched an earlier submission.
        existing: bool,
    },
    /// A procedure transition was recorded, spawning these children.
    ProcedureUpdated {
        /// Ids of the spawned children, in spawn order.
        children: Vec<ProcedureId>,
    },
}

/// Why a plan was refused. The state is unchanged by a refused plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum Rejection {
    /// A database with this name exists.
    #[error("database {0} already exists")]
    DatabaseExists(DatabaseName),
    /// No database with this name.
    #[error("database {0} does not exist")]
    DatabaseNotFound(DatabaseName),
    /// The database is being deleted; nothing new may be added to it.
    #[error("database {0} is being deleted")]
    DatabaseDeleting(DatabaseName),
    /// The database must be marked deleting before it is dropped.
    #[error("database {0} is not marked deleting")]
    DatabaseNotDeleting(DatabaseName),
    /// Dropping the database would orphan region groups.
    #[error("database {name} still has {groups} region groups")]
    RegionGroupsRemain {
        name: DatabaseName,
        /// How many groups remain.
        groups: usize,
    },
    /// No DataNode with this id.
    #[error("unknown DataNode {0}")]
    UnknownDataNode(DataNodeId),
    /// No published region group with this id.
    #[error("unknown region group {0}")]
    UnknownRegion(RegionId),
    /// The region id was never reserved, or is published with other replicas.
    #[error("region {0} was not reserved or conflicts with a published group")]
    RegionConflict(RegionId),
    /// No procedure with this id.
    #[error("unknown procedure {0}")]
    UnknownProcedure(ProcedureId),
    /// An [`plan::UpdateProcedure`] expected another record version (it is stale).
    #[error("procedure {id} is at version {current}, update expected {expected}")]
    ProcedureVersionMismatch {
        id: ProcedureId,
        /// The version the update expected.
        expected: u64,
        current: u64,
    },
    /// Only finished procedures may be deleted.
    #[error("procedure {0} has not finished")]
    ProcedureNotFinished(ProcedureId),
    /// A finished procedure's record never changes again (a commit of unknown outcome
    /// must not revive it).
    #[error("procedure {0} has finished; its record is immutable")]
    ProcedureFinished(ProcedureId),
    /// Region groups' metadata (or their database) cannot be dropped while a DataNode may
    /// still hold one of their replicas.
    #[error("replicas of {region} may remain on {data_nodes:?}")]
    ReplicasRemain {
        /// A region group with a non-empty footprint.
        region: RegionId,
        /// The DataNodes that may still hold its replica.
        data_nodes: Vec<DataNodeId>,
    },
    /// Abandoning this replica would leave a serving group with none, and its database is
    /// not being deleted.
    #[error(
        "{region} would lose its last replica (on {data_node}); only a group being deleted may"
    )]
    LastReplica {
        /// The group.
        region: RegionId,
        /// The DataNode holding its last replica.
        data_node: DataNodeId,
    },
    /// A footprint may not grow onto this DataNode: it is being removed, or its replica of
    /// this region was abandoned (the DataNode is gone for good).
    #[error("{data_node} takes no new replica of {region}: it is being removed or was")]
    DataNodeLeaving {
        region: RegionId,
        data_node: DataNodeId,
    },
    /// The plan's arguments are out of range.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// The outcome of one [`ClusterState::apply`].
pub type ApplyResult = Result<Applied, Rejection>;

impl ClusterState {
    /// Applies `plan`. Deterministic: the same state and plan always give the same result
    /// and the same next state. A rejected plan leaves the state untouched.
    pub fn apply(&mut self, plan: &ConfigPlan) -> ApplyResult {
        match plan {
            ConfigPlan::RegisterDataNode(p) => self.register_data_node(p),
            ConfigPlan::UpdateDataNodeStatus(p) => self.update_data_node_status(p),
            ConfigPlan::UnregisterDataNode(p) => self.unregister_data_node(p),
            ConfigPlan::AbandonReplica(p) => self.abandon_replica(p),
            ConfigPlan::CreateDatabase(p) => self.create_database(p),
            ConfigPlan::SetDatabaseDeleting(p) => self.mark_database_deleting(p),
            ConfigPlan::DeleteDatabase(p) => self.delete_database(&p.name),
            ConfigPlan::CreateRegionGroups(p) => self.create_region_groups(p),
            ConfigPlan::RemoveRegionGroup(p) => self.remove_region_group_unguarded(p),
            ConfigPlan::AddRegionLocation(p) => self.change_location(p.region, p.data_node, true),
            ConfigPlan::RetiredRegionLeaderHint(_) => Ok(Applied::Unchanged),
            ConfigPlan::RemoveRegionLocation(p) => {
                self.change_location(p.region, p.data_node, false)
            }
            ConfigPlan::ReserveRegionIds(p) => self.reserve_region_ids(p),
            ConfigPlan::RecordReplicaFootprints(p) => self.record_footprints(p),
            ConfigPlan::ReplicaDeleted(p) => self.replica_deleted(p),
            ConfigPlan::DropRegionGroup(p) => self.drop_region_group(p),
            ConfigPlan::OfferRegionMaintainTasks(p) => self.offer_tasks(p),
            ConfigPlan::PollRegionMaintainTask(_) => Ok(self.poll_oldest_task()),
            ConfigPlan::DropQueuedCreates(p) => Ok(self.drop_queued_tasks(p)),
            ConfigPlan::ResolveLegacyDeletion(p) => {
                Ok(changed(self.legacy_deletions.remove(&p.id).is_some()))
            }
            ConfigPlan::SubmitProcedure(p) => Ok(self.submit_procedure(p)),
            ConfigPlan::UpdateProcedure(p) => self.update_procedure(p.clone()),
            ConfigPlan::DeleteProcedures(p) => self.delete_procedures(p),
            ConfigPlan::TransitionWithEffect(p) => self.transition_with_effect(p.clone()),
        }
    }

    /// [`ClusterState::apply`] of a plan the caller no longer needs: the same result and the
    /// same next state, but a procedure transition's record moves into the state instead of
    /// being copied (replay applies a million of them).
    pub fn apply_owned(&mut self, plan: ConfigPlan) -> ApplyResult {
        match plan {
            ConfigPlan::UpdateProcedure(p) => self.update_procedure(p),
            ConfigPlan::TransitionWithEffect(p) => self.transition_with_effect(p),
            other => self.apply(&other),
        }
    }

    fn register_data_node(&mut self, p: &plan::RegisterDataNode) -> ApplyResult {
        let location_for = |id| {
            DataNodeLocation::new(id, p.address.clone())
                .map_err(|e| Rejection::Invalid(e.to_string()))
        };
        if let Some(id) = p.known_id {
            let location = location_for(id)?;
            let node = self
                .data_nodes
                .get_mut(&id)
                .ok_or(Rejection::UnknownDataNode(id))?;
            node.location = location;
            // Removing is an operator's decision: a restart (a re-registration) keeps it.
            if node.status != DataNodeStatus::Removing {
                node.status = DataNodeStatus::Running;
            }
            return Ok(Applied::DataNodeRegistered(id));
        }
        // A retried first registration (reply lost) must not allocate a second id.
        if let Some(node) = self
            .data_nodes
            .values()
            .find(|n| n.location.address == p.address)
        {
            return Ok(Applied::DataNodeRegistered(node.location.id));
        }
        let id = DataNodeId(self.next_data_node_id);
        let location = location_for(id)?;
        self.next_data_node_id += 1;
        self.data_nodes.insert(
            id,
            DataNodeInfo {
                location,
                status: DataNodeStatus::Running,
            },
        );
        Ok(Applied::DataNodeRegistered(id))
    }

    fn update_data_node_status(&mut self, p: &plan::UpdateDataNodeStatus) -> ApplyResult {
        let node = self
            .data_nodes
            .get_mut(&p.id)
            .ok_or(Rejection::UnknownDataNode(p.id))?;
        if p.only_from.is_some_and(|from| from != node.status) {
            return Ok(Applied::Unchanged);
        }
        node.status = p.status;
        Ok(Applied::Done)
    }

    fn unregister_data_node(&mut self, p: &plan::UnregisterDataNode) -> ApplyResult {
        let Some(node) = self.data_nodes.get(&p.id) else {
            return Ok(Applied::Unchanged);
        };
        if node.status != DataNodeStatus::Removing {
            return Err(Rejection::Invalid(format!(
                "{} is {}, not being removed",
                p.id, node.status
            )));
        }
        // Nothing that may still hold (or be about to hold) a replica there may remain.
        let remaining = self
            .footprints
            .iter()
            .find(|(_, f)| f.data_nodes.contains_key(&p.id))
            .map(|(region, _)| *region)
            .or_else(|| {
                self.create_queue
                    .values()
                    .find(|c| c.target == p.id)
                    .map(|c| c.group.region)
            })
            .or_else(|| {
                self.legacy_deletions
                    .values()
                    .find(|d| d.target == p.id)
                    .map(|d| d.group.region)
            });
        if let Some(region) = remaining {
            return Err(Rejection::ReplicasRemain {
                region,
                data_nodes: vec![p.id],
            });
        }
        self.data_nodes.remove(&p.id);
        Ok(Applied::Done)
    }

    fn abandon_replica(&mut self, p: &plan::AbandonReplica) -> ApplyResult {
        let Some(footprint) = self.footprints.get(&p.region) else {
            return Ok(Applied::Unchanged);
        };
        let Some(generation) = footprint.data_nodes.get(&p.data_node).copied() else {
            return Ok(Applied::Unchanged);
        };
        let database = footprint.database.clone();
        let deleting = self.databases.get(&database).is_none_or(|d| d.deleting);
        if let Some(group) = self.region_group(p.region)
            && group.replicas == [p.data_node]
            && !deleting
        {
            return Err(Rejection::LastReplica {
                region: p.region,
                data_node: p.data_node,
            });
        }
        if let Some(footprint) = self.footprints.get_mut(&p.region) {
            footprint.data_nodes.remove(&p.data_node);
            if footprint.data_nodes.is_empty() {
                self.footprints.remove(&p.region);
            }
        }
        if let Some(group) = self
            .partition_tables
            .values_mut()
            .find_map(|t| t.groups.get_mut(&p.region))
        {
            group.replicas.retain(|n| *n != p.data_node);
        }
        self.create_queue
            .retain(|_, t| !(t.group.region == p.region && t.target == p.data_node));
        self.abandoned_replicas.entry(p.region).or_default().insert(
            p.data_node,
            AbandonedReplica {
                database,
                generation,
                by: p.by,
                deletions: p.deletions.clone(),
            },
        );
        Ok(Applied::Done)
    }

    fn create_database(&mut self, p: &plan::CreateDatabase) -> ApplyResult {
        let name = &p.schema.name;
        if let Some(entry) = self.databases.get(name) {
            if p.created_by.is_some() && entry.created_by == p.created_by {
                return Ok(Applied::Unchanged);
            }
            return Err(if entry.deleting {
                Rejection::DatabaseDeleting(name.clone())
            } else {
                Rejection::DatabaseExists(name.clone())
            });
        }
        self.databases.insert(
            name.clone(),
            DatabaseEntry {
                schema: p.schema.clone(),
                deleting: false,
                created_by: p.created_by,
            },
        );
        self.partition_tables
            .insert(name.clone(), PartitionTable::default());
        Ok(Applied::Done)
    }

    fn mark_database_deleting(&mut self, p: &plan::SetDatabaseDeleting) -> ApplyResult {
        let entry = self
            .databases
            .get_mut(&p.name)
            .ok_or_else(|| Rejection::DatabaseNotFound(p.name.clone()))?;
        if entry.deleting == p.deleting {
            return Ok(Applied::Unchanged);
        }
        entry.deleting = p.deleting;
        Ok(Applied::Done)
    }

    fn delete_database(&mut self, name: &DatabaseName) -> ApplyResult {
        let Some(entry) = self.databases.get(name) else {
            // Re-applied after a crash: already gone.
            return Ok(Applied::Unchanged);
        };
        if !entry.deleting {
            return Err(Rejection::DatabaseNotDeleting(name.clone()));
        }
        let groups = self
            .partition_tables
            .get(name)
            .map_or(0, |t| t.groups.len());
        if groups > 0 {
            return Err(Rejection::RegionGroupsRemain {
                name: name.clone(),
                groups,
            });
        }
        // A group never published (a failed creation's) may still have replicas.
        if let Some((region, footprint)) = self.footprints_of(name).next() {
            return Err(Rejection::ReplicasRemain {
                region,
                data_nodes: footprint.data_nodes.keys().copied().collect(),
            });
        }
        self.databases.remove(name);
        self.partition_tables.remove(name);
        self.create_queue.retain(|_, t| &t.database != name);
        Ok(Applied::Done)
    }

    fn create_region_groups(&mut self, p: &plan::CreateRegionGroups) -> ApplyResult {
        let entry = self
            .databases
            .get(&p.database)
            .ok_or_else(|| Rejection::DatabaseNotFound(p.database.clone()))?;
        if entry.deleting {
            return Err(Rejection::DatabaseDeleting(p.database.clone()));
        }
        let mut new = Vec::new();
        for group in &p.groups {
            if group.region.id >= self.next_region_id {
                return Err(Rejection::RegionConflict(group.region));
            }
            if let Some(node) = group
                .replicas
                .iter()
                .find(|n| !self.data_nodes.contains_key(n))
            {
                return Err(Rejection::UnknownDataNode(*node));
            }
            // A group is first published only onto DataNodes that stay (a re-run of a publish
            // keeps the stored replica set, whatever it names).
            if self.database_of(group.region).is_none()
                && let Some(node) = self.leaving(group)
            {
                return Err(Rejection::DataNodeLeaving {
                    region: group.region,
                    data_node: node,
                });
            }
            match self.database_of(group.region) {
                // Published before, in this database: a re-run of the same publish. The
                // stored replica set stays (the region cleaner may have completed it since).
                Some(db) if db == &p.database => {}
                Some(_) => return Err(Rejection::RegionConflict(group.region)),
                None => {
                    if self
                        .footprints
                        .get(&group.region)
                        .is_some_and(|f| f.database != p.database)
                    {
                        return Err(Rejection::RegionConflict(group.region));
                    }
                    new.push(group);
                }
            }
        }
        if new.is_empty() {
            return Ok(Applied::Unchanged);
        }
        for group in new {
            self.add_to_footprint(&p.database, group.region, group.replicas.iter().copied());
            self.partition_tables
                .entry(p.database.clone())
                .or_default()
                .groups
                .insert(group.region, group.clone());
        }
        Ok(Applied::Done)
    }

    /// Old logs only (see [`ConfigPlan::RemoveRegionGroup`]): drops the group, its queued
    /// creates and its footprint, whatever the footprint holds.
    fn remove_region_group_unguarded(&mut self, p: &plan::RemoveRegionGroup) -> ApplyResult {
        let removed = self
            .partition_tables
            .get_mut(&p.database)
            .and_then(|table| table.groups.remove(&p.region));
        // Queued creates for a dropped group would resurrect it.
        self.create_queue.retain(|_, t| t.group.region != p.region);
        let forgot = self.footprints.remove(&p.region).is_some();
        Ok(changed(removed.is_some() || forgot))
    }

    fn drop_region_group(&mut self, p: &plan::DropRegionGroup) -> ApplyResult {
        if let Some(footprint) = self.footprints.get(&p.region) {
            return Err(Rejection::ReplicasRemain {
                region: p.region,
                data_nodes: footprint.data_nodes.keys().copied().collect(),
            });
        }
        let removed = self
            .partition_tables
            .get_mut(&p.database)
            .and_then(|table| table.groups.remove(&p.region));
        self.create_queue.retain(|_, t| t.group.region != p.region);
        Ok(changed(removed.is_some()))
    }

    fn change_location(&mut self, region: RegionId, node: DataNodeId, add: bool) -> ApplyResult {
        if add && !self.data_nodes.contains_key(&node) {
            return Err(Rejection::UnknownDataNode(node));
        }
        let (database, group) = self
            .partition_tables
            .iter_mut()
            .find_map(|(db, t)| t.groups.get_mut(&region).map(|g| (db.clone(), g)))
            .ok_or(Rejection::UnknownRegion(region))?;
        let present = group.replicas.contains(&node);
        match (add, present) {
            (true, false) => {
                group.replicas.push(node);
                group.replicas.sort();
            }
            (false, true) => group.replicas.retain(|n| *n != node),
            _ => return Ok(Applied::Unchanged),
        }
        if add {
            // Normally recorded before the create; kept true for any writer.
            self.add_to_footprint(&database, region, [node]);
        }
        Ok(Applied::Done)
    }

    fn reserve_region_ids(&mut self, p: &plan::ReserveRegionIds) -> ApplyResult {
        if p.count == 0 || p.count > MAX_RESERVE {
            return Err(Rejection::Invalid(format!(
                "reserve count {} outside 1..={MAX_RESERVE}",
                p.count
            )));
        }
        if let Some(owner) = p.for_procedure
            && let Some((first, count)) = self.region_reservations.get(&(owner, p.kind))
        {
            if *count != p.count {
                return Err(Rejection::Invalid(format!(
                    "{owner} already reserved {count} {} region ids",
                    p.kind
                )));
            }
            return Ok(Applied::RegionIdsReserved {
                first: *first,
                count: *count,
            });
        }
        let first = self.next_region_id;
        let next = first
            .checked_add(p.count)
            .ok_or_else(|| Rejection::Invalid("region id space exhausted".into()))?;
        self.next_region_id = next;
        if let Some(owner) = p.for_procedure {
            self.region_reservations
                .insert((owner, p.kind), (first, p.count));
        }
        Ok(Applied::RegionIdsReserved {
            first,
            count: p.count,
        })
    }

    /// A DataNode of `group` that is not yet in its footprint and must not enter it: one
    /// being removed (planned or forced), or one whose replica of this region was abandoned
    /// (gone for good) — so a creation step that re-runs after a forced removal cannot put
    /// the node it lost back. A node already in the footprint may be re-recorded (a re-run
    /// step; nothing changes).
    fn leaving(&self, group: &RegionReplicaSet) -> Option<DataNodeId> {
        let recorded = self.footprints.get(&group.region);
        group.replicas.iter().copied().find(|n| {
            let new = !recorded.is_some_and(|f| f.data_nodes.contains_key(n));
            let removing = self
                .data_nodes
                .get(n)
                .is_some_and(|d| d.status == DataNodeStatus::Removing);
            new && (removing || self.is_abandoned(group.region, *n))
        })
    }

    fn record_footprints(&mut self, p: &plan::RecordReplicaFootprints) -> ApplyResult {
        match self.databases.get(&p.database) {
            None => return Err(Rejection::DatabaseNotFound(p.database.clone())),
            // A deletion has started: no create may be sent into this database any more.
            Some(entry) if entry.deleting => {
                return Err(Rejection::DatabaseDeleting(p.database.clone()));
            }
            Some(_) => {}
        }
        for group in &p.groups {
            if group.region.id >= self.next_region_id {
                return Err(Rejection::RegionConflict(group.region));
            }
            if let Some(node) = group
                .replicas
                .iter()
                .find(|n| !self.data_nodes.contains_key(n))
            {
                return Err(Rejection::UnknownDataNode(*node));
            }
            if let Some(node) = self.leaving(group) {
                return Err(Rejection::DataNodeLeaving {
                    region: group.region,
                    data_node: node,
                });
            }
            let other_database = self
                .footprints
                .get(&group.region)
                .is_some_and(|f| f.database != p.database)
                || self
                    .database_of(group.region)
                    .is_some_and(|db| db != &p.database);
            if other_database {
                return Err(Rejection::RegionConflict(group.region));
            }
        }
        let mut added = false;
        for group in &p.groups {
            added |=
                self.add_to_footprint(&p.database, group.region, group.replicas.iter().copied());
        }
        Ok(changed(added))
    }

    fn replica_deleted(&mut self, p: &plan::ReplicaDeleted) -> ApplyResult {
        let mut done = false;
        if let Some(footprint) = self.footprints.get_mut(&p.region) {
            done |= footprint.data_nodes.remove(&p.data_node).is_some();
            if footprint.data_nodes.is_empty() {
                self.footprints.remove(&p.region);
            }
        }
        if let Some(group) = self
            .partition_tables
            .values_mut()
            .find_map(|t| t.groups.get_mut(&p.region))
            && group.replicas.contains(&p.data_node)
        {
            group.replicas.retain(|n| *n != p.data_node);
            done = true;
        }
        // A queued create of the deleted replica would bring it back.
        let before = self.create_queue.len();
        self.create_queue
            .retain(|_, t| !(t.group.region == p.region && t.target == p.data_node));
        done |= before != self.create_queue.len();
        Ok(changed(done))
    }

    /// Adds `nodes` to `region`'s footprint, each new one under the next creation
    /// generation; whether anything was new.
    fn add_to_footprint(
        &mut self,
        database: &DatabaseName,
        region: RegionId,
        nodes: impl IntoIterator<Item = DataNodeId>,
    ) -> bool {
        let mut last = self.last_generation;
        let footprint = self
            .footprints
            .entry(region)
            .or_insert_with(|| RegionFootprint {
                database: database.clone(),
                data_nodes: Default::default(),
            });
        let mut added = false;
        for node in nodes {
            if let std::collections::btree_map::Entry::Vacant(entry) =
                footprint.data_nodes.entry(node)
            {
                last += 1;
                entry.insert(last);
                added = true;
            }
        }
        if footprint.data_nodes.is_empty() {
            self.footprints.remove(&region);
        }
        self.last_generation = last;
        added
    }

    fn offer_tasks(&mut self, p: &plan::OfferRegionMaintainTasks) -> ApplyResult {
        for task in &p.tasks {
            if task.kind == RegionMaintainKind::Create
                && let Some(entry) = self.databases.get(&task.database)
                && entry.deleting
            {
                return Err(Rejection::DatabaseDeleting(task.database.clone()));
            }
        }
        let mut ids = Vec::with_capacity(p.tasks.len());
        for task in &p.tasks {
            let id = MaintainQueueId(self.next_queue_id);
            self.next_queue_id += 1;
            let (database, group, target) =
                (task.database.clone(), task.region.clone(), task.target.id);
            // A queued create is about to be sent; a legacy deletion names a replica that
            // exists. Either way the DataNode may hold a replica.
            self.add_to_footprint(&database, group.region, [target]);
            match task.kind {
                RegionMaintainKind::Create => {
                    // A re-offered create (a step re-run after a crash) must not queue twice.
                    let queued = self
                        .create_queue
                        .iter()
                        .find(|(_, t)| t.group.region == group.region && t.target == target);
                    match queued {
                        Some((existing, _)) => ids.push(*existing),
                        None => {
                            ids.push(id);
                            let create = QueuedCreate {
                                database,
                                group,
                                target,
                            };
                            self.create_queue.insert(id, create);
                        }
                    }
                }
                RegionMaintainKind::LegacyDelete => {
                    tracing::warn!(
                        queued = %id, region = %group.region, data_node = %target,
                        "legacy delete task kept as a pending legacy deletion"
                    );
                    ids.push(id);
                    let deletion = LegacyDeletion {
                        database,
                        group,
                        target,
                    };
                    self.legacy_deletions.insert(id, deletion);
                }
            }
        }
        Ok(Applied::TasksOffered(ids))
    }

    /// The pre-procedure drainer's "poll the oldest task": its queue held creates and
    /// legacy deletes alike, which now live in two maps sharing one id space.
    fn poll_oldest_task(&mut self) -> Applied {
        let oldest_create = self.create_queue.keys().next().copied();
        let oldest_delete = self.legacy_deletions.keys().next().copied();
        match (oldest_create, oldest_delete) {
            (Some(create), Some(delete)) if delete < create => {
                self.legacy_deletions.remove(&delete);
            }
            (Some(create), _) => {
                self.create_queue.remove(&create);
            }
            (None, Some(delete)) => {
                self.legacy_deletions.remove(&delete);
            }
            (None, None) => return Applied::Unchanged,
        }
        Applied::Done
    }

    fn drop_queued_tasks(&mut self, p: &plan::DropQueuedCreates) -> Applied {
        let before = self.create_queue.len();
        for id in &p.ids {
            self.create_queue.remove(id);
        }
        changed(before != self.create_queue.len())
    }

    fn submit_procedure(&mut self, p: &plan::SubmitProcedure) -> Applied {
        if let Some(key) = &p.request_key
            && let Some(id) = self.procedure_request_keys.get(key)
        {
            return Applied::ProcedureSubmitted {
                id: *id,
                existing: true,
            };
        }
        let id = self.allocate_procedure_id();
        let mut record = ProcedureRecord::from_new(id, p.procedure.clone(), None);
        record.request_key = p.request_key.clone();
        if let Some(key) = &p.request_key {
            self.procedure_request_keys.insert(key.clone(), id);
        }
        self.procedures.insert(id, record);
        Applied::ProcedureSubmitted {
            id,
            existing: false,
        }
    }

    /// Why `p` would be refused, if it would (changes nothing).
    fn check_update(&self, p: &plan::UpdateProcedure) -> Result<(), Rejection> {
        let id = p.record.id;
        let stored = self
            .procedures
            .get(&id)
            .ok_or(Rejection::UnknownProcedure(id))?;
        // Checked before the version: under Raft a commit may land after its proposer saw
        // an error, and nothing may bring a finished procedure back to life.
        if stored.status.is_finished() {
            return Err(Rejection::ProcedureFinished(id));
        }
        if let Some(expected) = p.expect_version
            && expected != stored.version
        {
            return Err(Rejection::ProcedureVersionMismatch {
                id,
                expected,
                current: stored.version,
            });
        }
        Ok(())
    }

    fn update_procedure(&mut self, p: plan::UpdateProcedure) -> ApplyResult {
        self.check_update(&p)?;
        let id = p.record.id;
        let Some(stored) = self.procedures.get(&id) else {
            return Err(Rejection::UnknownProcedure(id));
        };
        let mut record = p.record;
        record.version = stored.version + 1;
        // Identity and bookkeeping fields are owned by the state, not by the proposer.
        record.request_key = stored.request_key.clone();
        record.parent = stored.parent;
        record.children = stored.children.clone();
        let mut children = Vec::with_capacity(p.spawn.len());
        for new in p.spawn {
            let child = self.allocate_procedure_id();
            self.procedures
                .insert(child, ProcedureRecord::from_new(child, new, Some(id)));
            children.push(child);
        }
        record.children.extend(children.iter().copied());
        self.procedures.insert(id, record);
        Ok(Applied::ProcedureUpdated { children })
    }

    /// The update's checks, then the effect, then the update: a refusal of either leaves
    /// the state untouched (the effect is checked by applying it, and a rejected plan
    /// changes nothing).
    fn transition_with_effect(&mut self, p: plan::TransitionWithEffect) -> ApplyResult {
        if p.effect.is_procedure_plan() || p.effect.is_retired() {
            return Err(Rejection::Invalid(format!(
                "a transition's effect must be a current metadata plan, not {:?}",
                p.effect.code()
            )));
        }
        self.check_update(&p.update)?;
        self.apply(&p.effect)?;
        self.update_procedure(p.update)
    }

    fn delete_procedures(&mut self, p: &plan::DeleteProcedures) -> ApplyResult {
        // Validate all first so a refused plan changes nothing.
        for id in &p.ids {
            if let Some(record) = self.procedures.get(id)
                && !record.status.is_finished()
            {
                return Err(Rejection::ProcedureNotFinished(*id));
            }
        }
        let mut removed = false;
        for id in &p.ids {
            if let Some(record) = self.procedures.remove(id) {
                removed = true;
                self.region_reservations.retain(|(owner, _), _| owner != id);
                if let Some(key) = record.request_key {
                    self.procedure_request_keys.remove(&key);
                }
            }
        }
        Ok(changed(removed))
    }

    fn allocate_procedure_id(&mut self) -> ProcedureId {
        // Ids start at 1 so 0 never names a real procedure.
        self.next_procedure_id += 1;
        ProcedureId(self.next_procedure_id)
    }
}

/// `Done` if something changed, else `Unchanged`.
fn changed(done: bool) -> Applied {
    if done {
        Applied::Done
    } else {
        Applied::Unchanged
    }
}
