//! `ConfigNodeGroupApi` for a remote ConfigNode over Cap'n Proto (the admin CLI's
//! `shoal confignode list|add|remove`, and a ConfigNode asking to join a group).

use std::time::Duration;

use async_trait::async_trait;
use shoal_consensus_raft::{ConfigNodeGroupApi, GroupStatus, NodeId};
use shoal_core::api::ApiError;

use super::data_node_client::read_unit;
use super::{ClientOptions, Connection, Remote, call_error};
use crate::codec::{malformed, not_in_schema, read_error};
use crate::error::TransportError;
use crate::raft::codec::read_group_status;
use crate::runtime::RpcRuntime;
use crate::shoal_capnp::{config_node_group, group_status_reply};

/// How long a membership change may take: adding a voter first catches it up as a learner.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(60);

/// A remote ConfigNode's group API. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct CapnpConfigNodeGroupClient {
    conn: Connection,
}

impl std::fmt::Debug for CapnpConfigNodeGroupClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnpConfigNodeGroupClient")
            .field("address", &self.conn.address())
            .finish()
    }
}

fn group(remote: &Remote) -> Result<config_node_group::Client, ApiError> {
    remote.config_node_group.clone().ok_or_else(|| {
        ApiError::Refused("the ConfigNode offers no group API (an older node?)".into())
    })
}

impl CapnpConfigNodeGroupClient {
    /// A client of the ConfigNode at `address`, running on `runtime`; connects on first use.
    pub fn new(
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            conn: Connection::new(runtime, address, options)?,
        })
    }

    /// The address this client calls.
    pub fn address(&self) -> &str {
        self.conn.address()
    }
}

#[async_trait]
impl ConfigNodeGroupApi for CapnpConfigNodeGroupClient {
    async fn status(&self) -> Result<GroupStatus, ApiError> {
        let timeout = self.conn.options().call_timeout;
        self.conn
            .call(timeout, move |remote| async move {
                let req = group(&remote)?.status_request();
                let resp = req.send().promise.await.map_err(call_error)?;
                let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                match reply.which().map_err(not_in_schema)? {
                    group_status_reply::Status(status) => read_group_status(status),
                    group_status_reply::Error(e) => Err(read_error(e)),
                }
            })
            .await
    }

    async fn add_member(&self, id: NodeId, address: String) -> Result<(), ApiError> {
        self.conn
            .call(MEMBERSHIP_CHANGE_TIMEOUT, move |remote| async move {
                let mut req = group(&remote)?.add_member_request();
                req.get().set_id(id);
                req.get().set_address(address.as_str());
                let resp = req.send().promise.await.map_err(call_error)?;
                read_unit(resp.get().and_then(|r| r.get_reply()))
            })
            .await
    }

    async fn remove_member(&self, id: NodeId) -> Result<(), ApiError> {
        self.conn
            .call(MEMBERSHIP_CHANGE_TIMEOUT, move |remote| async move {
                let mut req = group(&remote)?.remove_member_request();
                req.get().set_id(id);
                let resp = req.send().promise.await.map_err(call_error)?;
                read_unit(resp.get().and_then(|r| r.get_reply()))
            })
            .await
    }
}
