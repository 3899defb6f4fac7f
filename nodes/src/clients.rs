//! [`DataNodeClients`] over Cap'n Proto: one cached [`CapnpDataNodeClient`] per address,
//! all on the node's one RPC thread.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, SubmitOutcome,
    TaskStatus,
};
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::model::{DataNodeLocation, Epoch, RegionId, TaskId};
use shoal_transport_capnp::{CapnpDataNodeClient, ClientOptions, RpcRuntime};

/// Cap'n Proto clients of DataNodes, cached by address.
pub struct CapnpDataNodeClients {
    runtime: RpcRuntime,
    options: ClientOptions,
    cache: Mutex<BTreeMap<String, Arc<dyn DataNodeApi>>>,
}

impl std::fmt::Debug for CapnpDataNodeClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnpDataNodeClients")
            .finish_non_exhaustive()
    }
}

impl CapnpDataNodeClients {
    /// Clients on `runtime` that log in with `options`.
    pub fn new(runtime: RpcRuntime, options: ClientOptions) -> Self {
        Self {
            runtime,
            options,
            cache: Mutex::new(BTreeMap::new()),
        }
    }

    /// The client of the DataNode at `address` (made on first use, then reused).
    pub fn by_address(&self, address: &str) -> Arc<dyn DataNodeApi> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = cache.get(address) {
            return client.clone();
        }
        let client: Arc<dyn DataNodeApi> =
            match CapnpDataNodeClient::new(&self.runtime, address, self.options.clone()) {
                Ok(client) => Arc::new(client),
                // Only a stopped RPC thread fails here; nothing is cached so a later call
                // tries again.
                Err(e) => return Arc::new(Unavailable(e.to_string())),
            };
        cache.insert(address.to_string(), client.clone());
        client
    }
}

impl DataNodeClients for CapnpDataNodeClients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        self.by_address(&location.address)
    }
}

/// A client whose every call fails as unreachable (the transport could not make one).
struct Unavailable(String);

impl Unavailable {
    fn err<T>(&self) -> Result<T, ApiError> {
        Err(ApiError::Unreachable(self.0.clone()))
    }
}

#[async_trait]
impl DataNodeApi for Unavailable {
    async fn create_region(&self, _: Epoch, _: CreateRegionRequest) -> Result<(), ApiError> {
        self.err()
    }
    async fn delete_region(&self, _: Epoch, _: RegionId) -> Result<(), ApiError> {
        self.err()
    }
    async fn write_region(&self, _: RegionId, _: Vec<u8>) -> Result<u64, ApiError> {
        self.err()
    }
    async fn submit_task(&self, _: Epoch, _: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        self.err()
    }
    async fn task_result(&self, _: TaskId, _: Option<Duration>) -> Result<TaskStatus, ApiError> {
        self.err()
    }
    async fn ack_task(&self, _: Epoch, _: TaskId) -> Result<(), ApiError> {
        self.err()
    }
    async fn heartbeat(&self, _: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.err()
    }
}
