//! The region-lifecycle procedures (DESIGN.md, "Region lifecycle rules").
//!
//! - [`CreateRegionGroupsProcedure`]: reserve ids, place, create replicas synchronously,
//!   publish groups that reached a quorum (queuing a durable create task per missing replica),
//!   tear down the groups that did not.
//! - [`RemoveRegionGroupProcedure`]: delete every replica through asynchronous DataNode tasks
//!   followed to a terminal status, then drop the group.
//! - [`DeleteDatabaseProcedure`]: mark deleting, drop queued creates, remove every group
//!   through children, then drop the database.
//!
//! Type codes are stable and listed here, in one place.

mod create_region_groups;
mod delete_database;
mod env;
mod remove_region_group;
#[cfg(test)]
mod testing;

pub use create_region_groups::{
    CreateRegionGroupsData, CreateRegionGroupsOutput, CreateRegionGroupsProcedure,
    CreateRegionGroupsState, PlannedGroup,
};
pub use delete_database::{DeleteDatabaseData, DeleteDatabaseProcedure, DeleteDatabaseState};
pub use env::{LifecycleConfig, MAX_TASK_SEQ, RegionEnv, task_id_for};
pub use remove_region_group::{
    RemovalScope, RemoveRegionGroupData, RemoveRegionGroupProcedure, RemoveRegionGroupState,
};

use crate::procedure::{ProcedureError, ProcedureRegistry};

/// Type code of [`CreateRegionGroupsProcedure`].
pub const CREATE_REGION_GROUPS: u32 = 100;
/// Type code of [`RemoveRegionGroupProcedure`].
pub const REMOVE_REGION_GROUP: u32 = 101;
/// Type code of [`DeleteDatabaseProcedure`].
pub const DELETE_DATABASE: u32 = 102;

/// Registers the three region-lifecycle procedure types.
pub fn register_region_procedures(registry: &mut ProcedureRegistry) -> Result<(), ProcedureError> {
    registry
        .register::<CreateRegionGroupsProcedure>()?
        .register::<RemoveRegionGroupProcedure>()?
        .register::<DeleteDatabaseProcedure>()?;
    Ok(())
}
