//! Core's [`ConfigNodeApi`] over a local [`ConfigNode`]: what the ConfigNode process serves
//! over Cap'n Proto.

use std::sync::Arc;

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, ClusterStatus, ConfigNodeApi, CreateDatabaseRequest, DataNodeHeartbeat, DatabaseInfo,
    OrphanInfo, ProcedureInfo, RegionGroupInfo,
};
use shoal_core::confignode::{ConfigNode, ConfigNodeError};
use shoal_core::model::{DataNodeId, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionId};
use shoal_core::state::DataNodeInfo;

/// The message a single ConfigNode that does not lead yet answers with (retryable).
pub const NOT_LEADER: &str = "this ConfigNode is not the leader (yet)";

/// Who leads a replicated group, as this member knows it: the leader's address.
pub type LeaderHint = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Serves a [`ConfigNode`] as a [`ConfigNodeApi`].
#[derive(Clone)]
pub struct ConfigNodeService {
    node: Arc<ConfigNode>,
    /// `Some` in a replicated group: only the leader answers, a follower answers the typed
    /// `NotLeader` naming the leader. `None`: a single ConfigNode (its one wire form for "not
    /// leading yet" stays the retryable remote failure older clients know).
    leader_hint: Option<LeaderHint>,
}

impl std::fmt::Debug for ConfigNodeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigNodeService")
            .field("node", &self.node)
            .field("replicated", &self.leader_hint.is_some())
            .finish()
    }
}

impl ConfigNodeService {
    /// Serves `node`, a single ConfigNode.
    pub fn new(node: Arc<ConfigNode>) -> Self {
        Self {
            node,
            leader_hint: None,
        }
    }

    /// Serves `node`, a member of a replicated group whose leader `leader_hint` names.
    /// Every call on a member that does not lead is answered `NotLeader { leader }`, reads
    /// included: a client follows the hint and reads what the leader has committed.
    pub fn replicated(node: Arc<ConfigNode>, leader_hint: LeaderHint) -> Self {
        Self {
            node,
            leader_hint: Some(leader_hint),
        }
    }

    /// The wire form of `error` from this node.
    fn error(&self, error: ConfigNodeError) -> ApiError {
        match (&error, &self.leader_hint) {
            (ConfigNodeError::NotLeader, Some(hint)) => ApiError::NotLeader { leader: hint() },
            _ => api_error(error),
        }
    }

    /// `info` with the ConfigNode's notes on its procedure (e.g. abandoned deletions).
    fn with_notes(&self, mut info: ProcedureInfo) -> ProcedureInfo {
        info.notes = self.node.procedure_notes(info.id);
        info
    }

    /// In a replicated group, refuses a call on a member that does not lead.
    fn leading(&self) -> Result<(), ApiError> {
        match &self.leader_hint {
            Some(hint) if !self.node.consensus().leadership().get().is_leader => {
                Err(ApiError::NotLeader { leader: hint() })
            }
            _ => Ok(()),
        }
    }
}

/// The wire form of a single ConfigNode's error: bad requests are refused, leadership gaps
/// and log failures are retryable remote failures.
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
        self.leading()?;
        self.node
            .create_database(
                schema,
                request.schema_region_groups,
                request.data_region_groups,
                request_key,
            )
            .await
            .map_err(|e| self.error(e))
    }

    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.leading()?;
        self.node
            .delete_database(name, request_key)
            .await
            .map_err(|e| self.error(e))
    }

    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError> {
        self.leading()?;
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
        self.leading()?;
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
        self.leading()?;
        Ok(self.node.list_data_nodes())
    }

    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError> {
        self.leading()?;
        Ok(self
            .node
            .list_procedures()
            .into_iter()
            .map(|p| self.with_notes(p))
            .collect())
    }

    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError> {
        self.leading()?;
        Ok(self.node.get_procedure(id).map(|p| self.with_notes(p)))
    }

    async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.leading()?;
        self.node
            .migrate_region(region, from, to, request_key)
            .await
            .map_err(|e| self.error(e))
    }

    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.leading()?;
        self.node
            .remove_data_node(id, force, request_key)
            .await
            .map_err(|e| self.error(e))
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        self.leading()?;
        let epoch = self.node.consensus().leadership().get().epoch;
        let (queued_creates, legacy_deletions) = self
            .node
            .consensus()
            .state()
            .read(|s| (s.create_queue.len() as u64, s.legacy_deletions.len() as u64));
        Ok(ClusterStatus {
            epoch,
            queued_creates,
            legacy_deletions,
        })
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError> {
        self.leading()?;
        self.node.list_orphans().map_err(|e| self.error(e))
    }

    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError> {
        self.leading()?;
        self.node
            .register_data_node(known_id, address)
            .await
            .map_err(|e| self.error(e))
    }

    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError> {
        // The leader polls DataNodes itself; a pushed heartbeat only learns the epoch.
        let _ = heartbeat;
        let leadership = self.node.consensus().leadership().get();
        if leadership.is_leader {
            Ok(leadership.epoch)
        } else {
            Err(self.error(ConfigNodeError::NotLeader))
        }
    }
}

#[cfg(test)]
mod tests;
