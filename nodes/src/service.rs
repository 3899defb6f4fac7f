//! Core's [`ConfigNodeApi`] over a local [`ConfigNode`]: what the ConfigNode process serves
//! over Cap'n Proto.

use std::sync::Arc;

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, ConfigNodeApi, CreateDatabaseRequest, DataNodeHeartbeat, DatabaseInfo, OrphanInfo,
    ProcedureInfo, RegionGroupInfo,
};
use shoal_core::confignode::{ConfigNode, ConfigNodeError};
use shoal_core::model::{DataNodeId, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionId};
use shoal_core::procedure::{self, ProcedureView};
use shoal_core::state::DataNodeInfo;

/// The message a not-leading ConfigNode answers with (retryable).
pub const NOT_LEADER: &str = "this ConfigNode is not the leader (yet)";

/// Serves a [`ConfigNode`] as a [`ConfigNodeApi`].
#[derive(Debug, Clone)]
pub struct ConfigNodeService {
    node: Arc<ConfigNode>,
}

impl ConfigNodeService {
    /// Serves `node`.
    pub fn new(node: Arc<ConfigNode>) -> Self {
        Self { node }
    }

    fn with_notes(&self, mut info: ProcedureInfo) -> ProcedureInfo {
        info.notes = self.node.procedure_notes(info.id);
        info
    }
}

/// The wire form of a service error: bad requests are refused, leadership gaps and log
/// failures are retryable remote failures.
pub fn api_error(error: ConfigNodeError) -> ApiError {
    match error {
        ConfigNodeError::NotLeader => ApiError::Remote {
            message: NOT_LEADER.into(),
            retryable: true,
        },
        ConfigNodeError::Invalid(_)
        | ConfigNodeError::Rejected(_)
        | ConfigNodeError::UnknownProcedure(_) => ApiError::Refused(error.to_string()),
        ConfigNodeError::Procedure(error) => ApiError::Remote {
            retryable: error.is_retryable(),
            message: error.to_string(),
        },
    }
}

/// The admin view of a procedure's status.
pub fn procedure_info(info: &procedure::ProcedureInfo) -> ProcedureInfo {
    ProcedureInfo {
        id: info.id,
        type_name: info.type_name.clone(),
        state_name: info.state_name.clone(),
        status: info.status.name().to_string(),
        finished: matches!(
            info.status,
            ProcedureView::Succeeded | ProcedureView::Failed | ProcedureView::RolledBack
        ),
        parent: info.parent,
        children: info.children.clone(),
        submitted_at_ms: info.submitted_at_ms,
        updated_at_ms: info.updated_at_ms,
        attempts: info.attempts,
        last_error: info.last_error.clone(),
        waiting_for: info.waiting_for.clone(),
        notes: Vec::new(),
    }
}

#[async_trait]
impl ConfigNodeApi for ConfigNodeService {
    async fn create_database(
        &self,
        request: CreateDatabaseRequest,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        let schema = DatabaseSchema {
            name: request.name,
            schema_replication_factor: request.schema_replication_factor,
            data_replication_factor: request.data_replication_factor,
        };
        self.node
            .create_database(
                schema,
                request.schema_region_groups,
                request.data_region_groups,
                request_key,
            )
            .await
            .map_err(api_error)
    }

    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.node
            .delete_database(name, request_key)
            .await
            .map_err(api_error)
    }

    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError> {
        Ok(self
            .node
            .list_databases()
            .into_iter()
            .map(|db| DatabaseInfo {
                schema: db.entry.schema,
                deleting: db.entry.deleting,
                schema_region_groups: db.schema_region_groups,
                data_region_groups: db.data_region_groups,
            })
            .collect())
    }

    async fn list_region_groups(
        &self,
        database: Option<DatabaseName>,
    ) -> Result<Vec<RegionGroupInfo>, ApiError> {
        Ok(self
            .node
            .list_region_groups(database.as_ref())
            .into_iter()
            .map(|(database, replica_set)| RegionGroupInfo {
                database,
                replica_set,
            })
            .collect())
    }

    async fn list_data_nodes(&self) -> Result<Vec<DataNodeInfo>, ApiError> {
        Ok(self.node.list_data_nodes())
    }

    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError> {
        Ok(self
            .node
            .list_procedures()
            .iter()
            .map(|p| self.with_notes(procedure_info(p)))
            .collect())
    }

    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError> {
        Ok(self
            .node
            .get_procedure(id)
            .as_ref()
            .map(|p| self.with_notes(procedure_info(p))))
    }

    async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.node
            .migrate_region(region, from, to, request_key)
            .await
            .map_err(api_error)
    }

    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.node
            .remove_data_node(id, force, request_key)
            .await
            .map_err(api_error)
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError> {
        self.node.list_orphans().map_err(api_error)
    }

    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError> {
        self.node
            .register_data_node(known_id, address)
            .await
            .map_err(api_error)
    }

    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError> {
        // The leader polls DataNodes itself; a pushed heartbeat only learns the epoch.
        let _ = heartbeat;
        let leadership = self.node.consensus().leadership().get();
        if leadership.is_leader {
            Ok(leadership.epoch)
        } else {
            Err(api_error(ConfigNodeError::NotLeader))
        }
    }
}

#[cfg(test)]
mod tests;
