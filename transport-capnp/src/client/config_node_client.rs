//! `ConfigNodeApi` for a remote ConfigNode over Cap'n Proto.

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, ClusterStatus, ConfigNodeApi, CreateDatabaseRequest, DataNodeHeartbeat, DatabaseInfo,
    OrphanInfo, ProcedureInfo, RegionGroupInfo,
};
use shoal_core::model::{DataNodeId, DatabaseName, Epoch, ProcedureId, RegionId};
use shoal_core::state::DataNodeInfo;

use super::{ClientOptions, Connection, call_error};
use crate::codec::{self, malformed, not_in_schema, read_error};
use crate::error::TransportError;
use crate::runtime::RpcRuntime;
use crate::shoal_capnp::{
    cluster_status_reply, create_database_reply, data_node_heartbeat_reply, delete_database_reply,
    get_procedure_reply, list_data_nodes_reply, list_databases_reply, list_orphans_reply,
    list_procedures_reply, list_region_groups_reply, procedure_id_reply, register_data_node_reply,
};

/// A remote ConfigNode (admin clients and DataNodes use it). Cheap to clone; clones share
/// one connection.
#[derive(Clone)]
pub struct CapnpConfigNodeClient {
    conn: Connection,
}

impl std::fmt::Debug for CapnpConfigNodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnpConfigNodeClient")
            .field("address", &self.conn.address())
            .finish()
    }
}

impl CapnpConfigNodeClient {
    /// A client of the ConfigNode at `address` (`host:port`), running on `runtime`.
    /// Connects on the first call.
    pub fn new(
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            conn: Connection::new(runtime, address, options)?,
        })
    }

    fn timeout(&self) -> std::time::Duration {
        self.conn.options().call_timeout
    }
}

#[async_trait]
impl ConfigNodeApi for CapnpConfigNodeClient {
    async fn create_database(
        &self,
        request: CreateDatabaseRequest,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.start_create_database_request();
                let mut p = req.get();
                p.set_name(request.name.as_str());
                p.set_schema_rf(request.schema_replication_factor.get());
                p.set_data_rf(request.data_replication_factor.get());
                p.set_data_region_groups(request.data_region_groups);
                p.set_schema_region_groups(request.schema_region_groups);
                codec::write_opt_text(p.init_request_key(), request_key.as_deref());
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    create_database_reply::ProcedureId(id) => Ok(ProcedureId(id)),
                    create_database_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.delete_database_request();
                let mut p = req.get();
                p.set_name(name.as_str());
                codec::write_opt_text(p.init_request_key(), request_key.as_deref());
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    delete_database_reply::ProcedureId(id) => Ok(ProcedureId(id)),
                    delete_database_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.migrate_region_request();
                let mut p = req.get();
                codec::write_region_id(p.reborrow().init_region(), region);
                p.set_from(from.0);
                codec::write_opt_u32(p.reborrow().init_to(), to.map(|t| t.0));
                codec::write_opt_text(p.init_request_key(), request_key.as_deref());
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    procedure_id_reply::ProcedureId(id) => Ok(ProcedureId(id)),
                    procedure_id_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.remove_data_node_request();
                let mut p = req.get();
                p.set_id(id.0);
                p.set_force(force);
                codec::write_opt_text(p.init_request_key(), request_key.as_deref());
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    procedure_id_reply::ProcedureId(id) => Ok(ProcedureId(id)),
                    procedure_id_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let req = remote.config_node.list_orphans_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    list_orphans_reply::Orphans(list) => list
                        .map_err(malformed)?
                        .iter()
                        .map(codec::read_orphan)
                        .collect(),
                    list_orphans_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let req = remote.config_node.cluster_status_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    cluster_status_reply::Status(status) => {
                        let status = status.map_err(malformed)?;
                        Ok(ClusterStatus {
                            epoch: Epoch(status.get_epoch()),
                            queued_creates: status.get_queued_creates(),
                            legacy_deletions: status.get_legacy_deletions(),
                        })
                    }
                    cluster_status_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let req = remote.config_node.list_databases_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    list_databases_reply::Databases(list) => list
                        .map_err(malformed)?
                        .iter()
                        .map(codec::read_database_info)
                        .collect(),
                    list_databases_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn list_region_groups(
        &self,
        database: Option<DatabaseName>,
    ) -> Result<Vec<RegionGroupInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.list_region_groups_request();
                req.get()
                    .set_database(database.as_ref().map_or("", DatabaseName::as_str));
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    list_region_groups_reply::Groups(list) => list
                        .map_err(malformed)?
                        .iter()
                        .map(codec::read_region_group)
                        .collect(),
                    list_region_groups_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn list_data_nodes(&self) -> Result<Vec<DataNodeInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let req = remote.config_node.list_data_nodes_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    list_data_nodes_reply::DataNodes(list) => list
                        .map_err(malformed)?
                        .iter()
                        .map(codec::read_data_node)
                        .collect(),
                    list_data_nodes_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let req = remote.config_node.list_procedures_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    list_procedures_reply::Procedures(list) => list
                        .map_err(malformed)?
                        .iter()
                        .map(codec::read_procedure)
                        .collect(),
                    list_procedures_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.get_procedure_request();
                req.get().set_id(id.0);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    get_procedure_reply::Found(p) => {
                        Ok(Some(codec::read_procedure(p.map_err(malformed)?)?))
                    }
                    get_procedure_reply::NotFound(()) => Ok(None),
                    get_procedure_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.register_data_node_request();
                codec::write_opt_u32(req.get().init_known_id(), known_id.map(|id| id.0));
                req.get().set_address(address.as_str());
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    register_data_node_reply::Id(id) => Ok(DataNodeId(id)),
                    register_data_node_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.config_node.data_node_heartbeat_request();
                req.get().set_id(heartbeat.id.0);
                codec::write_heartbeat_report(req.get().init_report(), &heartbeat.report);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    data_node_heartbeat_reply::Epoch(epoch) => Ok(Epoch(epoch)),
                    data_node_heartbeat_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }
}
