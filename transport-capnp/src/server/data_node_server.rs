//! The capnp `DataNode` server: decode, hand to the node's `DataNodeApi`, encode the reply.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use shoal_core::api::{ApiError, DataNodeApi, SubmitOutcome, TaskStatus};
use shoal_core::model::{Epoch, TaskId};
use shoal_core::runtime::BoxFuture;

use super::ServerShared;
use crate::auth::{Access, Role};
use crate::codec::{self, write_error};
use crate::shoal_capnp::{data_node, unit_reply};

/// Longest long-poll a server honours: a client cannot park a call on the node forever.
pub(crate) const MAX_LONG_POLL: Duration = Duration::from_secs(300);

/// Serves one connection's DataNode capability.
pub(crate) struct DataNodeServer {
    shared: Rc<ServerShared>,
    /// The role the connection logged in with; every call is checked against it.
    role: Role,
}

impl DataNodeServer {
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
        F: FnOnce(Arc<dyn DataNodeApi>, D) -> BoxFuture<Result<T, ApiError>>,
    {
        self.call_on(Where::NodeExecutor, access, method, decoded, f)
            .await
    }

    /// [`DataNodeServer::call`] for the task protocol (submit, result, ack): short calls
    /// that only await, run on this RPC thread (three per task, where the hand-off to the
    /// node's executor and back cost more than the call).
    async fn task_call<D, T, F>(
        &self,
        access: Access,
        method: &'static str,
        decoded: Result<D, ApiError>,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn DataNodeApi>, D) -> BoxFuture<Result<T, ApiError>>,
    {
        self.call_on(Where::RpcThread, access, method, decoded, f)
            .await
    }

    async fn call_on<D, T, F>(
        &self,
        at: Where,
        access: Access,
        method: &'static str,
        decoded: Result<D, ApiError>,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn DataNodeApi>, D) -> BoxFuture<Result<T, ApiError>>,
    {
        let outcome =
            async {
                self.shared.authorize(self.role, access, method)?;
                let api =
                    self.shared.apis.data_node.clone().ok_or_else(|| {
                        ApiError::Refused("this node serves no DataNode API".into())
                    })?;
                let decoded = decoded?;
                match at {
                    Where::NodeExecutor => self.shared.dispatch(f(api, decoded)).await,
                    Where::RpcThread => self.shared.dispatch_here(f(api, decoded)).await,
                }
            }
            .await;
        ServerShared::record_served(method, &outcome);
        outcome
    }
}

/// Where a call runs.
#[derive(Clone, Copy)]
enum Where {
    /// On the node's executor (the default).
    NodeExecutor,
    /// On the RPC thread that received it.
    RpcThread,
}

pub(crate) fn write_unit(mut b: unit_reply::Builder<'_>, outcome: Result<(), ApiError>) {
    match outcome {
        Ok(()) => b.set_ok(()),
        Err(e) => write_error(b.init_error(), &e),
    }
}

impl data_node::Server for DataNodeServer {
    async fn create_region(
        self: CapRc<Self>,
        params: data_node::CreateRegionParams,
        mut results: data_node::CreateRegionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_create_region(p.get_request()).map(|r| (Epoch(p.get_epoch()), r));
        let outcome = self
            .call(
                Access::DataNodeControl,
                "DataNode.createRegion",
                decoded,
                |api, (epoch, request)| {
                    Box::pin(async move { api.create_region(epoch, request).await })
                },
            )
            .await;
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn delete_region(
        self: CapRc<Self>,
        params: data_node::DeleteRegionParams,
        mut results: data_node::DeleteRegionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_region_id(p.get_region()).map(|r| (Epoch(p.get_epoch()), r));
        let outcome = self
            .call(
                Access::DataNodeControl,
                "DataNode.deleteRegion",
                decoded,
                |api, (epoch, region)| {
                    Box::pin(async move { api.delete_region(epoch, region).await })
                },
            )
            .await;
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn write_region(
        self: CapRc<Self>,
        params: data_node::WriteRegionParams,
        mut results: data_node::WriteRegionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_region_id(p.get_region()).and_then(|region| {
            let bytes = p.get_bytes().map_err(codec::malformed)?.to_vec();
            Ok((region, bytes))
        });
        let outcome = self
            .call(
                Access::DataNodeWrite,
                "DataNode.writeRegion",
                decoded,
                |api, (region, bytes)| {
                    Box::pin(async move { api.write_region(region, bytes).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(size) => reply.set_new_size(size),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn submit_task(
        self: CapRc<Self>,
        params: data_node::SubmitTaskParams,
        mut results: data_node::SubmitTaskResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_maintain_task(p.get_task()).map(|t| (Epoch(p.get_epoch()), t));
        let outcome = self
            .task_call(
                Access::DataNodeControl,
                "DataNode.submitTask",
                decoded,
                |api, (epoch, task)| Box::pin(async move { api.submit_task(epoch, task).await }),
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(SubmitOutcome::Accepted) => reply.set_accepted(()),
            Ok(SubmitOutcome::Rejected(reason)) => reply.set_rejected(reason.as_str()),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn task_result(
        self: CapRc<Self>,
        params: data_node::TaskResultParams,
        mut results: data_node::TaskResultResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let task_id = TaskId(p.get_task_id());
        let wait = match p.get_wait_ms() {
            0 => None,
            ms => Some(Duration::from_millis(ms).min(MAX_LONG_POLL)),
        };
        let outcome = self
            .task_call(
                Access::DataNodeControl,
                "DataNode.taskResult",
                Ok((task_id, wait)),
                |api, (task_id, wait)| {
                    Box::pin(async move { api.task_result(task_id, wait).await })
                },
            )
            .await;
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(TaskStatus::Processing) => reply.set_processing(()),
            Ok(TaskStatus::Success) => reply.set_success(()),
            Ok(TaskStatus::Fail(reason)) => reply.set_fail(reason.as_str()),
            Ok(TaskStatus::NotExist) => reply.set_not_exist(()),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn ack_task(
        self: CapRc<Self>,
        params: data_node::AckTaskParams,
        mut results: data_node::AckTaskResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = Ok((Epoch(p.get_epoch()), TaskId(p.get_task_id())));
        let outcome = self
            .task_call(
                Access::DataNodeControl,
                "DataNode.ackTask",
                decoded,
                |api, (epoch, task_id)| Box::pin(async move { api.ack_task(epoch, task_id).await }),
            )
            .await;
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn heartbeat(
        self: CapRc<Self>,
        params: data_node::HeartbeatParams,
        mut results: data_node::HeartbeatResults,
    ) -> Result<(), capnp::Error> {
        let epoch = Epoch(params.get()?.get_epoch());
        let outcome = self
            .call(
                Access::DataNodeControl,
                "DataNode.heartbeat",
                Ok(epoch),
                |api, epoch| Box::pin(async move { api.heartbeat(epoch).await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(report) => codec::write_heartbeat_report(reply.init_report(), &report),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn read_region(
        self: CapRc<Self>,
        params: data_node::ReadRegionParams,
        mut results: data_node::ReadRegionResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_region_id(p.get_region())
            .map(|region| (region, p.get_offset(), p.get_max_len()));
        let outcome = self
            .call(
                Access::DataNodeRead,
                "DataNode.readRegion",
                decoded,
                |api, (region, offset, max_len)| {
                    Box::pin(async move { api.read_region(region, offset, max_len).await })
                },
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(chunk) => codec::write_region_chunk(reply.init_chunk(), &chunk),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn region_digest(
        self: CapRc<Self>,
        params: data_node::RegionDigestParams,
        mut results: data_node::RegionDigestResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let decoded = codec::read_region_id(p.get_region())
            .and_then(|region| Ok((region, codec::read_opt_u64(p.get_len())?)));
        let outcome = self
            .call(
                Access::DataNodeRead,
                "DataNode.regionDigest",
                decoded,
                |api, (region, len)| Box::pin(async move { api.region_digest(region, len).await }),
            )
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(digest) => codec::write_region_digest(reply.init_digest(), &digest),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }
}
