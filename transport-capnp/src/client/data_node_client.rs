//! `DataNodeApi` for a remote DataNode over Cap'n Proto.

use std::time::Duration;

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, RegionChunk,
    RegionDigest, SubmitOutcome, TaskStatus,
};
use shoal_core::model::{Epoch, RegionId, TaskId};

use super::{ClientOptions, Connection, call_error};
use crate::codec::{self, malformed, not_in_schema, read_error};
use crate::error::TransportError;
use crate::runtime::RpcRuntime;
use crate::shoal_capnp::{
    heartbeat_reply, read_region_reply, region_digest_reply, submit_task_reply, task_result_reply,
    unit_reply, write_region_reply,
};

/// A remote DataNode. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct CapnpDataNodeClient {
    conn: Connection,
}

impl std::fmt::Debug for CapnpDataNodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnpDataNodeClient")
            .field("address", &self.conn.address())
            .finish()
    }
}

impl CapnpDataNodeClient {
    /// A client of the DataNode at `address` (`host:port`), running on `runtime`. Connects
    /// on the first call.
    pub fn new(
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            conn: Connection::new(runtime, address, options)?,
        })
    }

    fn timeout(&self) -> Duration {
        self.conn.options().call_timeout
    }
}

/// Reads a `UnitReply`.
pub(crate) fn read_unit(r: capnp::Result<unit_reply::Reader<'_>>) -> Result<(), ApiError> {
    match r.map_err(malformed)?.which().map_err(not_in_schema)? {
        unit_reply::Ok(()) => Ok(()),
        unit_reply::Error(e) => Err(read_error(e)),
    }
}

#[async_trait]
impl DataNodeApi for CapnpDataNodeClient {
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.create_region_request();
                req.get().set_epoch(epoch.0);
                codec::write_create_region(req.get().init_request(), &request);
                let resp = req.send().promise.await.map_err(call_error)?;
                read_unit(resp.get().and_then(|r| r.get_reply()))
            })
            .await
    }

    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.delete_region_request();
                req.get().set_epoch(epoch.0);
                codec::write_region_id(req.get().init_region(), region);
                let resp = req.send().promise.await.map_err(call_error)?;
                read_unit(resp.get().and_then(|r| r.get_reply()))
            })
            .await
    }

    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.write_region_request();
                codec::write_region_id(req.get().init_region(), region);
                req.get().set_bytes(&bytes);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    write_region_reply::NewSize(size) => Ok(size),
                    write_region_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.submit_task_request();
                req.get().set_epoch(epoch.0);
                codec::write_maintain_task(req.get().init_task(), &task);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    submit_task_reply::Accepted(()) => Ok(SubmitOutcome::Accepted),
                    submit_task_reply::Rejected(reason) => {
                        Ok(SubmitOutcome::Rejected(codec::read_text(reason)?))
                    }
                    submit_task_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        // A zero wait means "answer now" on the wire; round a tiny wait up to 1 ms.
        let wait_ms = wait.map_or(0, |w| {
            u64::try_from(w.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let timeout = self.timeout() + wait.unwrap_or_default();
        self.conn
            .call(timeout, move |remote| async move {
                let mut req = remote.data_node.task_result_request();
                req.get().set_task_id(task_id.0);
                req.get().set_wait_ms(wait_ms);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    task_result_reply::Processing(()) => Ok(TaskStatus::Processing),
                    task_result_reply::Success(()) => Ok(TaskStatus::Success),
                    task_result_reply::Fail(reason) => {
                        Ok(TaskStatus::Fail(codec::read_text(reason)?))
                    }
                    task_result_reply::NotExist(()) => Ok(TaskStatus::NotExist),
                    task_result_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.ack_task_request();
                req.get().set_epoch(epoch.0);
                req.get().set_task_id(task_id.0);
                let resp = req.send().promise.await.map_err(call_error)?;
                read_unit(resp.get().and_then(|r| r.get_reply()))
            })
            .await
    }

    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.heartbeat_request();
                req.get().set_epoch(epoch.0);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    heartbeat_reply::Report(report) => codec::read_heartbeat_report(report),
                    heartbeat_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.read_region_request();
                codec::write_region_id(req.get().init_region(), region);
                req.get().set_offset(offset);
                req.get().set_max_len(max_len);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    read_region_reply::Chunk(chunk) => codec::read_region_chunk(chunk),
                    read_region_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.conn
            .call(self.timeout(), move |remote| async move {
                let mut req = remote.data_node.region_digest_request();
                codec::write_region_id(req.get().init_region(), region);
                codec::write_opt_u64(req.get().init_len(), len);
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    region_digest_reply::Digest(digest) => codec::read_region_digest(digest),
                    region_digest_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }
}
