//! The capnp `ConfigNode` server: decode, hand to the node's `ConfigNodeApi`, encode the
//! reply.

use std::rc::Rc;
use std::sync::Arc;

use capnp::capability::Rc as CapRc;
use shoal_core::api::{ApiError, ConfigNodeApi, CreateDatabaseRequest};
use shoal_core::model::{DataNodeId, ProcedureId};
use shoal_core::runtime::BoxFuture;

use super::ServerShared;
use super::data_node_server::write_unit;
use crate::auth::{Access, Role};
use crate::codec::{self, len32, write_error};
use crate::shoal_capnp::config_node;

/// Serves one connection's ConfigNode capability.
pub(crate) struct ConfigNodeServer {
    shared: Rc<ServerShared>,
    /// The role the connection logged in with; every call is checked against it.
    role: Role,
}

impl ConfigNodeServer {
    pub(crate) fn new(shared: Rc<ServerShared>, role: Role) -> Self {
        Self { shared, role }
    }

    /// Hands a decoded request to the node. A role without `access`, a decode error and a
    /// missing API short-circuit, in that order: a refused role learns nothing more.
    async fn call<D, T, F>(
        &self,
        access: Access,
        method: &'static str,
        decoded: Result<D, ApiError>,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn ConfigNodeApi>, D) -> BoxFuture<Result<T, ApiError>>,
    {
        let outcome = async {
            self.shared.authorize(self.role, access, method)?;
            let api =
                self.shared.apis.config_node.clone().ok_or_else(|| {
                    ApiError::Refused("this node serves no ConfigNode API".into())
                })?;
            let decoded = decoded?;
            self.shared.dispatch(f(api, decoded)).await
        }
        .await;
        ServerShared::record_served(method, &outcome);
        outcome
    }
}

/// Decodes the parameters shared by `createDatabase` and `startCreateDatabase`.
fn read_create_database(
    name: capnp::Result<capnp::text::Reader<'_>>,
    schema_rf: u8,
    data_rf: u8,
    data_region_groups: u32,
    schema_region_groups: u32,
) -> Result<CreateDatabaseRequest, ApiError> {
    Ok(CreateDatabaseRequest {
        name: codec::read_request_database_name(name)?,
        schema_replication_factor: codec::read_request_rf(schema_rf)?,
        data_replication_factor: codec::read_request_rf(data_rf)?,
        data_region_groups,
        schema_region_groups,
    })
}

impl config_node::Server for ConfigNodeServer {
    async fn create_database(
        self: CapRc<Self>,
        params: config_node::CreateDatabaseParams,
        mut results: config_node::CreateDatabaseResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = read_create_database(
            p.get_name(),
            p.get_schema_rf(),
            p.get_data_rf(),
            p.get_data_region_groups(),
            p.get_schema_region_groups(),
        );
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.createDatabase",
                decoded,
                |api, request| {
                    Box::pin(async move { api.create_database(request, None).await.map(|_| ()) })
                },
            )
            .await;
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn start_create_database(
        self: CapRc<Self>,
        params: config_node::StartCreateDatabaseParams,
        mut results: config_node::StartCreateDatabaseResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = read_create_database(
            p.get_name(),
            p.get_schema_rf(),
            p.get_data_rf(),
            p.get_data_region_groups(),
            p.get_schema_region_groups(),
        )
        .and_then(|request| Ok((request, codec::read_opt_text(p.get_request_key())?)));
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.startCreateDatabase",
                decoded,
                |api, (request, key)| {
                    Box::pin(async move { api.create_database(request, key).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(id) => reply.set_procedure_id(id.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn delete_database(
        self: CapRc<Self>,
        params: config_node::DeleteDatabaseParams,
        mut results: config_node::DeleteDatabaseResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_request_database_name(p.get_name())
            .and_then(|name| Ok((name, codec::read_opt_text(p.get_request_key())?)));
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.deleteDatabase",
                decoded,
                |api, (name, key)| Box::pin(async move { api.delete_database(name, key).await }),
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(id) => reply.set_procedure_id(id.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn list_databases(
        self: CapRc<Self>,
        _params: config_node::ListDatabasesParams,
        mut results: config_node::ListDatabasesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.listDatabases",
                Ok(()),
                |api, ()| Box::pin(async move { api.list_databases().await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(databases) => {
                let mut list = reply.init_databases(len32(databases.len()));
                for (i, db) in databases.iter().enumerate() {
                    codec::write_database_info(list.reborrow().get(len32(i)), db);
                }
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn list_region_groups(
        self: CapRc<Self>,
        params: config_node::ListRegionGroupsParams,
        mut results: config_node::ListRegionGroupsResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        // An empty name means every database.
        let decoded = match p.get_database().map(|t| t.is_empty()) {
            Ok(true) => Ok(None),
            _ => codec::read_request_database_name(p.get_database()).map(Some),
        };
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.listRegionGroups",
                decoded,
                |api, database| Box::pin(async move { api.list_region_groups(database).await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(groups) => {
                let mut list = reply.init_groups(len32(groups.len()));
                for (i, group) in groups.iter().enumerate() {
                    codec::write_region_group(list.reborrow().get(len32(i)), group);
                }
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn list_data_nodes(
        self: CapRc<Self>,
        _params: config_node::ListDataNodesParams,
        mut results: config_node::ListDataNodesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.listDataNodes",
                Ok(()),
                |api, ()| Box::pin(async move { api.list_data_nodes().await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(nodes) => {
                let mut list = reply.init_data_nodes(len32(nodes.len()));
                for (i, node) in nodes.iter().enumerate() {
                    codec::write_data_node(list.reborrow().get(len32(i)), node);
                }
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn list_procedures(
        self: CapRc<Self>,
        _params: config_node::ListProceduresParams,
        mut results: config_node::ListProceduresResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.listProcedures",
                Ok(()),
                |api, ()| Box::pin(async move { api.list_procedures().await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(procedures) => {
                let mut list = reply.init_procedures(len32(procedures.len()));
                for (i, procedure) in procedures.iter().enumerate() {
                    codec::write_procedure(list.reborrow().get(len32(i)), procedure);
                }
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn get_procedure(
        self: CapRc<Self>,
        params: config_node::GetProcedureParams,
        mut results: config_node::GetProcedureResults,
    ) -> Result<(), capnp::Error> {
        let id = ProcedureId(params.get()?.get_id());
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.getProcedure",
                Ok(id),
                |api, id| Box::pin(async move { api.get_procedure(id).await }),
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(Some(procedure)) => codec::write_procedure(reply.init_found(), &procedure),
            Ok(None) => reply.set_not_found(()),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn register_data_node(
        self: CapRc<Self>,
        params: config_node::RegisterDataNodeParams,
        mut results: config_node::RegisterDataNodeResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_opt_u32(p.get_known_id())
            .and_then(|known| Ok((known.map(DataNodeId), codec::read_text(p.get_address())?)));
        let outcome = self
            .call(
                Access::Registration,
                "ConfigNode.registerDataNode",
                decoded,
                |api, (known, address)| {
                    Box::pin(async move { api.register_data_node(known, address).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(id) => reply.set_id(id.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn data_node_heartbeat(
        self: CapRc<Self>,
        params: config_node::DataNodeHeartbeatParams,
        mut results: config_node::DataNodeHeartbeatResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_data_node_heartbeat(p.get_id(), p.get_report());
        let outcome = self
            .call(
                Access::Registration,
                "ConfigNode.dataNodeHeartbeat",
                decoded,
                |api, heartbeat| Box::pin(async move { api.data_node_heartbeat(heartbeat).await }),
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(epoch) => reply.set_epoch(epoch.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn migrate_region(
        self: CapRc<Self>,
        params: config_node::MigrateRegionParams,
        mut results: config_node::MigrateRegionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_region_id(p.get_region()).and_then(|region| {
            Ok((
                region,
                DataNodeId(p.get_from()),
                codec::read_opt_u32(p.get_to())?.map(DataNodeId),
                codec::read_opt_text(p.get_request_key())?,
            ))
        });
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.migrateRegion",
                decoded,
                |api, (region, from, to, key)| {
                    Box::pin(async move { api.migrate_region(region, from, to, key).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(id) => reply.set_procedure_id(id.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn remove_data_node(
        self: CapRc<Self>,
        params: config_node::RemoveDataNodeParams,
        mut results: config_node::RemoveDataNodeResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_opt_text(p.get_request_key())
            .map(|key| (DataNodeId(p.get_id()), p.get_force(), key));
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.removeDataNode",
                decoded,
                |api, (id, force, key)| {
                    Box::pin(async move { api.remove_data_node(id, force, key).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(id) => reply.set_procedure_id(id.0),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn list_orphans(
        self: CapRc<Self>,
        _params: config_node::ListOrphansParams,
        mut results: config_node::ListOrphansResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.listOrphans",
                Ok(()),
                |api, ()| Box::pin(async move { api.list_orphans().await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(orphans) => {
                let mut list = reply.init_orphans(len32(orphans.len()));
                for (i, orphan) in orphans.iter().enumerate() {
                    codec::write_orphan(list.reborrow().get(len32(i)), orphan);
                }
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn cluster_status(
        self: CapRc<Self>,
        _params: config_node::ClusterStatusParams,
        mut results: config_node::ClusterStatusResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call(
                Access::Admin,
                "ConfigNode.clusterStatus",
                Ok(()),
                |api, ()| Box::pin(async move { api.cluster_status().await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(status) => {
                let mut b = reply.init_status();
                b.set_epoch(status.epoch.0);
                b.set_queued_creates(status.queued_creates);
                b.set_legacy_deletions(status.legacy_deletions);
            }
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }
}
