//! [`DeleteDatabaseProcedure`]: delete a database and every region it owns.
//!
//! Mark it deleting (new region groups, footprints and writes are refused from then on) →
//! drop its queued create tasks → one child [`RemoveRegionGroupProcedure`] per region group
//! it owns, published or not (a failed creation's group exists only as a footprint) → drop
//! the partition table and schema, which the state machine allows only once no group and no
//! footprint of the database remains. The database lock is exclusive, so creations of
//! region groups in the same database run strictly before or after.

use std::collections::BTreeSet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::coded_enum;
use crate::model::{DatabaseName, RegionId};
use crate::plan::{ConfigPlan, DeleteDatabase, SetDatabaseDeleting};
use crate::procedure::{
    Procedure, ProcedureContext, ProcedureError, ProcedureType, StateId, Step, decode_data,
    encode_data,
};
use crate::state::{LockKey, LockMode, LockResource, Rejection};

use super::env::{drop_queued_creates, first_failed_child};
use super::{DELETE_DATABASE, RemoveRegionGroupProcedure};

/// Rounds of child removals after which a deletion gives up (groups keep reappearing).
const MAX_ROUNDS: u32 = 5;

coded_enum! {
    /// States of [`DeleteDatabaseProcedure`].
    pub enum DeleteDatabaseState {
        /// Mark the database deleting.
        MarkDeleting = 1,
        /// Drop the database's queued create tasks.
        DropQueuedCreates = 2,
        /// Spawn one removal per region group.
        RemoveRegionGroups = 3,
        /// Drop the partition table and schema.
        DropDatabase = 4,
    }
}

/// Persistent data of [`DeleteDatabaseProcedure`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct DeleteDatabaseData {
    pub state: DeleteDatabaseState,
    pub name: DatabaseName,
    /// Groups handed to child removals (for status and the final check).
    pub groups: Vec<RegionId>,
    /// Rounds of child removals spawned (more than one only if groups reappeared; at most
    /// `MAX_ROUNDS`).
    pub rounds: u32,
}

/// Deletes a database. See the module docs.
#[derive(Debug, Clone)]
pub struct DeleteDatabaseProcedure {
    data: DeleteDatabaseData,
}

impl DeleteDatabaseProcedure {
    /// Deletes `name`.
    pub fn new(name: DatabaseName) -> Self {
        Self {
            data: DeleteDatabaseData {
                state: DeleteDatabaseState::MarkDeleting,
                name,
                groups: Vec::new(),
                rounds: 0,
            },
        }
    }

    /// The persistent data.
    pub fn data(&self) -> &DeleteDatabaseData {
        &self.data
    }

    /// Done: the database is gone already (a deletion queued behind another of the same
    /// database: deleting something already gone is a success).
    async fn mark_deleting(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        // Deletions and creations of one name hold its database lock exclusively and run in
        // submission order, so whatever database has the name now is the one this request
        // meant in that order.
        let plan = SetDatabaseDeleting {
            name: self.data.name.clone(),
            deleting: true,
        };
        match ctx.propose(ConfigPlan::SetDatabaseDeleting(plan)).await? {
            Ok(_) => {}
            Err(Rejection::DatabaseNotFound(name)) => {
                tracing::info!(procedure = %ctx.procedure_id(), database = %name,
                    "database already deleted");
                return Ok(Step::Done(Vec::new()));
            }
            Err(rejection) => return Err(rejection.into()),
        }
        self.data.state = DeleteDatabaseState::DropQueuedCreates;
        Ok(Step::Continue)
    }

    /// Retry: commit failures.
    async fn drop_queued_creates(
        &mut self,
        ctx: &ProcedureContext,
    ) -> Result<Step, ProcedureError> {
        let name = &self.data.name;
        drop_queued_creates(ctx, |create| &create.database == name).await?;
        self.data.state = DeleteDatabaseState::RemoveRegionGroups;
        Ok(Step::Continue)
    }

    fn remove_region_groups(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        let name = self.data.name.clone();
        let groups: Vec<RegionId> = ctx.state().read(|s| {
            let published = s
                .partition_tables
                .get(&name)
                .into_iter()
                .flat_map(|t| t.groups.keys().copied());
            let footprints = s.footprints_of(&name).map(|(region, _)| region);
            let all: BTreeSet<RegionId> = published.chain(footprints).collect();
            all.into_iter().collect()
        });
        self.data.state = DeleteDatabaseState::DropDatabase;
        if groups.is_empty() {
            return Ok(Step::Continue);
        }
        if self.data.rounds >= MAX_ROUNDS {
            return Err(ProcedureError::Abort(format!(
                "region groups {groups:?} remain after {MAX_ROUNDS} rounds of removals"
            )));
        }
        self.data.groups = groups.clone();
        self.data.rounds += 1;
        Ok(Step::SpawnChildren(
            groups
                .into_iter()
                .map(|region| {
                    Box::new(RemoveRegionGroupProcedure::group(name.clone(), region))
                        as Box<dyn Procedure>
                })
                .collect(),
        ))
    }

    /// Abort: a child removal failed (the database stays marked deleting, visibly).
    async fn drop_database(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        if let Some(failed) = first_failed_child(ctx, "region group removal") {
            return Err(failed);
        }
        let plan = DeleteDatabase {
            name: self.data.name.clone(),
        };
        match ctx.propose(ConfigPlan::DeleteDatabase(plan)).await? {
            Ok(_) => {}
            Err(Rejection::RegionGroupsRemain { .. } | Rejection::ReplicasRemain { .. }) => {
                // Cannot happen while the lock and the deleting mark hold; converge anyway.
                self.data.state = DeleteDatabaseState::RemoveRegionGroups;
                return Ok(Step::Continue);
            }
            Err(rejection) => return Err(rejection.into()),
        }
        tracing::info!(
            procedure = %ctx.procedure_id(), database = %self.data.name,
            groups = self.data.groups.len(), "database deleted"
        );
        Ok(Step::Done(Vec::new()))
    }
}

#[async_trait]
impl Procedure for DeleteDatabaseProcedure {
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
        vec![LockKey {
            resource: LockResource::Database(self.data.name.clone()),
            mode: LockMode::Exclusive,
        }]
    }

    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError> {
        match self.data.state {
            DeleteDatabaseState::MarkDeleting => self.mark_deleting(ctx).await,
            DeleteDatabaseState::DropQueuedCreates => self.drop_queued_creates(ctx).await,
            DeleteDatabaseState::RemoveRegionGroups => self.remove_region_groups(ctx),
            DeleteDatabaseState::DropDatabase => self.drop_database(ctx).await,
        }
    }
}

impl ProcedureType for DeleteDatabaseProcedure {
    const TYPE_CODE: u32 = DELETE_DATABASE;
    const TYPE_NAME: &'static str = "DeleteDatabase";

    fn decode(data: &[u8]) -> Result<Self, ProcedureError> {
        Ok(Self {
            data: decode_data(data)?,
        })
    }
}

#[cfg(test)]
mod tests;
