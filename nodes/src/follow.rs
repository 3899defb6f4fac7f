//! Following the leader of a ConfigNode group: [`Following`] holds a client per known
//! ConfigNode address and sends each call to the one believed to lead. A follower's typed
//! `NotLeader { leader }` answer moves the call to the address it names (learned on the fly if
//! it was not given); `NotLeader` without a hint, or an unreachable node, moves it to the next
//! address. A call gives up once every address was tried without an answer, returning the last
//! error (retryable), so the caller's own retry loop paces the next round.
//!
//! [`ConfigNodes`] is core's `ConfigNodeApi` over a [`Following`] of Cap'n Proto clients: what
//! the admin CLI and DataNodes use, whether they were given one address or several.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use shoal_consensus_raft::{ConfigNodeGroupApi, GroupStatus, NodeId};
use shoal_core::api::{
    ApiError, ConfigNodeApi, CreateDatabaseRequest, DataNodeHeartbeat, DatabaseInfo, OrphanInfo,
    ProcedureInfo, RegionGroupInfo,
};
use shoal_core::model::{DataNodeId, DatabaseName, Epoch, ProcedureId, RegionId};
use shoal_core::state::DataNodeInfo;
use shoal_transport_capnp::{
    CapnpConfigNodeClient, CapnpConfigNodeGroupClient, ClientOptions, RpcRuntime,
};

use crate::error::CliError;

/// Parses a comma-separated list of addresses (`a:1,b:2`): trimmed, empties dropped,
/// duplicates removed (first wins); at least one.
pub fn parse_addresses(text: &str) -> Result<Vec<String>, CliError> {
    let mut out: Vec<String> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        if !part.is_empty() && !out.iter().any(|a| a == part) {
            out.push(part.to_string());
        }
    }
    if out.is_empty() {
        return Err(CliError::Config(format!(
            "no ConfigNode address in {text:?}"
        )));
    }
    Ok(out)
}

type Dial<C> = Box<dyn Fn(&str) -> Option<Arc<C>> + Send + Sync>;

struct Targets<C: ?Sized> {
    /// Known addresses and their clients, given ones first, learned ones after.
    known: Vec<(String, Arc<C>)>,
    /// The index of the address believed to lead.
    current: usize,
}

/// Clients of every known ConfigNode of a group, calls going to the leader. See the module
/// docs.
pub struct Following<C: ?Sized> {
    targets: Mutex<Targets<C>>,
    dial: Dial<C>,
}

impl<C: ?Sized> std::fmt::Debug for Following<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let targets = self.targets.lock().unwrap_or_else(|p| p.into_inner());
        let addresses: Vec<&String> = targets.known.iter().map(|(a, _)| a).collect();
        f.debug_struct("Following")
            .field("addresses", &addresses)
            .finish()
    }
}

impl<C: ?Sized + Send + Sync + 'static> Following<C> {
    /// Follows the group at `addresses` (at least one), making clients with `dial` (`None`:
    /// no client can be made now, e.g. the RPC thread stopped; the address is skipped).
    pub fn new(
        addresses: &[String],
        dial: impl Fn(&str) -> Option<Arc<C>> + Send + Sync + 'static,
    ) -> Self {
        let known = addresses
            .iter()
            .filter_map(|a| dial(a).map(|c| (a.clone(), c)))
            .collect();
        Self {
            targets: Mutex::new(Targets { known, current: 0 }),
            dial: Box::new(dial),
        }
    }

    fn targets(&self) -> MutexGuard<'_, Targets<C>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every known address, given ones first.
    pub fn addresses(&self) -> Vec<String> {
        self.targets()
            .known
            .iter()
            .map(|(a, _)| a.clone())
            .collect()
    }

    /// The address calls go to now (the leader, as far as this client knows).
    pub fn current_address(&self) -> Option<String> {
        let targets = self.targets();
        targets.known.get(targets.current).map(|(a, _)| a.clone())
    }

    fn current(&self) -> Option<(usize, String, Arc<C>)> {
        let targets = self.targets();
        let index = targets.current.min(targets.known.len().checked_sub(1)?);
        let (address, client) = &targets.known[index];
        Some((index, address.clone(), client.clone()))
    }

    /// Points calls at `address`, learning it if it is new. False if no client can be made.
    fn prefer(&self, address: &str) -> bool {
        let mut targets = self.targets();
        if let Some(index) = targets.known.iter().position(|(a, _)| a == address) {
            targets.current = index;
            return true;
        }
        let Some(client) = (self.dial)(address) else {
            return false;
        };
        targets.known.push((address.to_string(), client));
        targets.current = targets.known.len() - 1;
        true
    }

    /// Moves past `index` (if it is still the current one) to the next address.
    fn advance_from(&self, index: usize) {
        let mut targets = self.targets();
        if targets.current == index && !targets.known.is_empty() {
            targets.current = (index + 1) % targets.known.len();
        }
    }

    /// Runs `call` against the leader; see the module docs.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: Fn(Arc<C>) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut last = ApiError::Unreachable("no ConfigNode address to call".into());
        // "No leader known" says more than one node being down: it is kept as the error to
        // report over a later unreachable node.
        let mut no_leader: Option<ApiError> = None;
        // Addresses tried without a hint in this call; a hint resets nothing (it names a
        // node that may answer), but the loop is bounded either way.
        let mut unhinted = 0;
        let mut hops = 0;
        loop {
            let Some((index, address, client)) = self.current() else {
                return Err(last);
            };
            let known = self.targets().known.len();
            if unhinted >= known || hops > 2 * known + 2 {
                return Err(no_leader.unwrap_or(last));
            }
            hops += 1;
            match call(client).await {
                Ok(value) => return Ok(value),
                Err(ApiError::NotLeader {
                    leader: Some(leader),
                }) if leader != address && self.prefer(&leader) => {
                    tracing::debug!(from = %address, to = %leader, "following the ConfigNode leader");
                    last = ApiError::NotLeader {
                        leader: Some(leader),
                    };
                }
                // No hint (an election), or the node is gone: try the next one.
                Err(error @ (ApiError::NotLeader { .. } | ApiError::Unreachable(_))) => {
                    self.advance_from(index);
                    unhinted += 1;
                    if matches!(error, ApiError::NotLeader { .. }) {
                        no_leader = Some(error.clone());
                    }
                    last = error;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// core's `ConfigNodeApi` (and the group API) over the ConfigNodes at some addresses,
/// following the leader. One address behaves as a plain client of that node.
#[derive(Debug)]
pub struct ConfigNodes {
    api: Following<dyn ConfigNodeApi>,
    group: Following<dyn ConfigNodeGroupApi>,
}

impl ConfigNodes {
    /// Clients of the ConfigNodes at `addresses` on `runtime`, logging in with `options`.
    pub fn new(runtime: &RpcRuntime, addresses: &[String], options: ClientOptions) -> Self {
        let (rt, opts) = (runtime.clone(), options.clone());
        let api = Following::new(addresses, move |address: &str| {
            CapnpConfigNodeClient::new(&rt, address, opts.clone())
                .ok()
                .map(|c| Arc::new(c) as Arc<dyn ConfigNodeApi>)
        });
        let rt = runtime.clone();
        let group = Following::new(addresses, move |address: &str| {
            CapnpConfigNodeGroupClient::new(&rt, address, options.clone())
                .ok()
                .map(|c| Arc::new(c) as Arc<dyn ConfigNodeGroupApi>)
        });
        Self { api, group }
    }

    /// The addresses as given (and learned), comma-separated, for messages.
    pub fn describe(&self) -> String {
        self.api.addresses().join(",")
    }

    /// The address admin calls go to now.
    pub fn current_address(&self) -> Option<String> {
        self.api.current_address()
    }

    /// The group API, following the leader.
    pub fn group(&self) -> &Following<dyn ConfigNodeGroupApi> {
        &self.group
    }

    /// The status of the group as the ConfigNode at `address` sees it (not following).
    pub async fn status_at(
        &self,
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<GroupStatus, ApiError> {
        let client = CapnpConfigNodeGroupClient::new(runtime, address, options)
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        client.status().await
    }
}

#[async_trait]
impl ConfigNodeApi for ConfigNodes {
    async fn create_database(
        &self,
        request: CreateDatabaseRequest,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.api
            .call(|c| {
                let (request, key) = (request.clone(), request_key.clone());
                async move { c.create_database(request, key).await }
            })
            .await
    }

    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.api
            .call(|c| {
                let (name, key) = (name.clone(), request_key.clone());
                async move { c.delete_database(name, key).await }
            })
            .await
    }

    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError> {
        self.api
            .call(|c| async move { c.list_databases().await })
            .await
    }

    async fn list_region_groups(
        &self,
        database: Option<DatabaseName>,
    ) -> Result<Vec<RegionGroupInfo>, ApiError> {
        self.api
            .call(|c| {
                let database = database.clone();
                async move { c.list_region_groups(database).await }
            })
            .await
    }

    async fn list_data_nodes(&self) -> Result<Vec<DataNodeInfo>, ApiError> {
        self.api
            .call(|c| async move { c.list_data_nodes().await })
            .await
    }

    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError> {
        self.api
            .call(|c| async move { c.list_procedures().await })
            .await
    }

    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError> {
        self.api
            .call(|c| async move { c.get_procedure(id).await })
            .await
    }

    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError> {
        self.api
            .call(|c| {
                let address = address.clone();
                async move { c.register_data_node(known_id, address).await }
            })
            .await
    }

    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError> {
        self.api
            .call(|c| {
                let heartbeat = heartbeat.clone();
                async move { c.data_node_heartbeat(heartbeat).await }
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
        self.api
            .call(|c| {
                let key = request_key.clone();
                async move { c.migrate_region(region, from, to, key).await }
            })
            .await
    }

    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.api
            .call(|c| {
                let key = request_key.clone();
                async move { c.remove_data_node(id, force, key).await }
            })
            .await
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError> {
        self.api
            .call(|c| async move { c.list_orphans().await })
            .await
    }
}

#[async_trait]
impl ConfigNodeGroupApi for Following<dyn ConfigNodeGroupApi> {
    async fn status(&self) -> Result<GroupStatus, ApiError> {
        self.call(|c| async move { c.status().await }).await
    }

    async fn add_member(&self, id: NodeId, address: String) -> Result<(), ApiError> {
        self.call(|c| {
            let address = address.clone();
            async move { c.add_member(id, address).await }
        })
        .await
    }

    async fn remove_member(&self, id: NodeId) -> Result<(), ApiError> {
        self.call(|c| async move { c.remove_member(id).await })
            .await
    }
}

#[cfg(test)]
mod tests;
