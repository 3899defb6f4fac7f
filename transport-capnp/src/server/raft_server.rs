//! The capnp `Raft` server (ConfigNode peers only) and the `ConfigNodeGroup` server (admins):
//! decode, hand to the node's Raft handler or group API on the node's spawner, encode.

use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use shoal_consensus_raft::RaftServer;
use shoal_consensus_raft::state_machine::snapshot_from_bytes;
use shoal_core::api::ApiError;
use shoal_core::runtime::BoxFuture;

use super::ServerShared;
use super::data_node_server::write_unit;
use crate::auth::{Access, Role};
use crate::codec::write_error;
use crate::raft::snapshot::Assembly;
use crate::raft::{MAX_SNAPSHOT_BYTES, codec, read_chunk};
use crate::shoal_capnp::{config_node_group, raft};

/// A Raft handler's failure as an error on the wire (the sender's Raft retries).
fn remote(error: impl std::fmt::Display) -> ApiError {
    ApiError::Remote {
        message: error.to_string(),
        retryable: true,
    }
}

/// Serves one connection's `Raft` capability. `allowed` is decided at login: a login that may
/// not act as a ConfigNode peer gets a capability whose every call is refused.
pub(crate) struct RaftCap {
    shared: Rc<ServerShared>,
    allowed: bool,
}

impl RaftCap {
    pub(crate) fn new(shared: Rc<ServerShared>, allowed: bool) -> Self {
        Self { shared, allowed }
    }

    fn server(&self) -> Result<RaftServer, ApiError> {
        if !self.allowed {
            return Err(ApiError::Refused(
                "only ConfigNode peers may send Raft messages".into(),
            ));
        }
        self.shared
            .apis
            .raft
            .clone()
            .ok_or_else(|| ApiError::Refused("this node is not in a Raft group".into()))
    }

    async fn call<D, T, F>(
        &self,
        method: &'static str,
        decoded: Result<D, ApiError>,
        f: F,
    ) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(RaftServer, D) -> BoxFuture<Result<T, ApiError>>,
    {
        let outcome = async {
            let server = self.server()?;
            let decoded = decoded?;
            self.shared.dispatch(f(server, decoded)).await
        }
        .await;
        ServerShared::record_served(method, &outcome);
        outcome
    }
}

impl raft::Server for RaftCap {
    async fn append_entries(
        self: CapRc<Self>,
        params: raft::AppendEntriesParams,
        mut results: raft::AppendEntriesResults,
    ) -> Result<(), capnp::Error> {
        let decoded = codec::read_append_request(params.get()?);
        let outcome = self
            .call("Raft.appendEntries", decoded, |server, request| {
                Box::pin(async move { server.append_entries(request).await.map_err(remote) })
            })
            .await;
        codec::write_append_reply(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn vote(
        self: CapRc<Self>,
        params: raft::VoteParams,
        mut results: raft::VoteResults,
    ) -> Result<(), capnp::Error> {
        let decoded = codec::read_vote_request(params.get()?);
        let outcome = self
            .call("Raft.vote", decoded, |server, request| {
                Box::pin(async move { server.vote(request).await.map_err(remote) })
            })
            .await;
        codec::write_vote_reply(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn snapshot_chunk(
        self: CapRc<Self>,
        params: raft::SnapshotChunkParams,
        mut results: raft::SnapshotChunkResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let outcome = async {
            let server = self.server()?;
            let vote = codec::read_vote(p.get_vote())?;
            let chunk = read_chunk(p.get_chunk())?;
            // Chunks of every connection meet in one assembly per node: a leader that
            // reconnected mid-transfer starts over at offset 0 anyway.
            let whole = {
                let mut slot = self.shared.snapshot_assembly.borrow_mut();
                Assembly::accept(&mut slot, chunk, MAX_SNAPSHOT_BYTES)?
            };
            let Some(bytes) = whole else {
                return Ok(None);
            };
            let snapshot = snapshot_from_bytes(bytes).map_err(|e| ApiError::Remote {
                message: format!("received snapshot does not decode: {e}"),
                retryable: true,
            })?;
            let installed = self
                .shared
                .dispatch(Box::pin(async move {
                    server
                        .install_snapshot(vote, snapshot)
                        .await
                        .map_err(remote)
                }))
                .await?;
            Ok(Some(installed.vote))
        }
        .await;
        ServerShared::record_served("Raft.snapshotChunk", &outcome);
        let mut reply = results.get().init_reply();
        match outcome {
            Ok(None) => reply.set_received(()),
            Ok(Some(vote)) => codec::write_vote(reply.init_installed(), &vote),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }
}

/// Serves one connection's `ConfigNodeGroup` capability to the login's `role`: admins and
/// ConfigNode peers (a joining ConfigNode asks the leader to add it) may use it.
pub(crate) struct GroupCap {
    shared: Rc<ServerShared>,
    role: Role,
}

impl GroupCap {
    pub(crate) fn new(shared: Rc<ServerShared>, role: Role) -> Self {
        Self { shared, role }
    }

    async fn call<T, F>(&self, method: &'static str, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(
            std::sync::Arc<dyn shoal_consensus_raft::ConfigNodeGroupApi>,
        ) -> BoxFuture<Result<T, ApiError>>,
    {
        let outcome = async {
            self.shared
                .authorize(self.role, Access::Membership, "ConfigNodeGroup")?;
            let api = self.shared.apis.group.clone().ok_or_else(|| {
                ApiError::Refused("this ConfigNode runs alone, not in a Raft group".into())
            })?;
            self.shared.dispatch(f(api)).await
        }
        .await;
        ServerShared::record_served(method, &outcome);
        outcome
    }
}

impl config_node_group::Server for GroupCap {
    async fn status(
        self: CapRc<Self>,
        _params: config_node_group::StatusParams,
        mut results: config_node_group::StatusResults,
    ) -> Result<(), capnp::Error> {
        let outcome = self
            .call("ConfigNodeGroup.status", |api| {
                Box::pin(async move { api.status().await })
            })
            .await;
        let reply = results.get().init_reply();
        match outcome {
            Ok(status) => codec::write_group_status(reply.init_status(), &status),
            Err(e) => write_error(reply.init_error(), &e),
        }
        Ok(())
    }

    async fn add_member(
        self: CapRc<Self>,
        params: config_node_group::AddMemberParams,
        mut results: config_node_group::AddMemberResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let id = p.get_id();
        let outcome = match crate::codec::read_text(p.get_address()) {
            Ok(address) => {
                self.call("ConfigNodeGroup.addMember", move |api| {
                    Box::pin(async move { api.add_member(id, address).await })
                })
                .await
            }
            Err(e) => Err(e),
        };
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }

    async fn remove_member(
        self: CapRc<Self>,
        params: config_node_group::RemoveMemberParams,
        mut results: config_node_group::RemoveMemberResults,
    ) -> Result<(), capnp::Error> {
        let id = params.get()?.get_id();
        let outcome = self
            .call("ConfigNodeGroup.removeMember", move |api| {
                Box::pin(async move { api.remove_member(id).await })
            })
            .await;
        write_unit(results.get().init_reply(), outcome);
        Ok(())
    }
}
