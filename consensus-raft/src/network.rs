//! How Raft messages travel between ConfigNodes: a small [`RaftTransport`] seam under
//! openraft's network traits.
//!
//! [`RaftNetwork`] implements openraft's `RaftNetworkFactory` over any `RaftTransport`; the
//! receiving side hands each incoming call to that node's [`RaftServer`]. Phase 1 has one
//! transport, [`crate::inproc::InprocTransport`] (function calls through channels with
//! injectable partitions, drops and delays). A Cap'n Proto transport implements the same trait
//! by encoding these three calls (snapshots in checksummed chunks, reassembled into the bytes
//! before `RaftServer::install_snapshot`), without touching the rest of this crate.

use std::sync::Arc;

use async_trait::async_trait;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, Raft};

use crate::state_machine::{RaftSnapshot, StateMachine};
use crate::types::{NodeId, ShoalRaft, Vote};

/// A Raft message that did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The target could not be reached (down, partitioned, unknown): nothing ran there.
    #[error("raft peer {0} unreachable")]
    Unreachable(NodeId),
    /// No answer in time: the call may or may not have run.
    #[error("raft call to {0} timed out")]
    Timeout(NodeId),
    /// The target failed while handling the call (its Raft stopped).
    #[error("raft peer {node} failed: {message}")]
    Remote {
        /// The target.
        node: NodeId,
        /// Its error.
        message: String,
    },
}

impl TransportError {
    /// Whether sending again may succeed (Raft itself retries every message).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Unreachable(_) | TransportError::Timeout(_) => true,
            TransportError::Remote { .. } => false,
        }
    }
}

/// Carries Raft's three calls to a peer. `to` is the peer's id, `addr` its address as the
/// membership records it.
#[async_trait]
pub trait RaftTransport: Send + Sync + 'static {
    /// Replicates entries (or a heartbeat).
    async fn append_entries(
        &self,
        to: NodeId,
        addr: &str,
        request: AppendEntriesRequest<ShoalRaft>,
    ) -> Result<AppendEntriesResponse<ShoalRaft>, TransportError>;
    /// Asks for a vote.
    async fn vote(
        &self,
        to: NodeId,
        addr: &str,
        request: VoteRequest<ShoalRaft>,
    ) -> Result<VoteResponse<ShoalRaft>, TransportError>;
    /// Sends a whole snapshot (the leader's vote proves who sends it).
    async fn install_snapshot(
        &self,
        to: NodeId,
        addr: &str,
        vote: Vote,
        snapshot: RaftSnapshot,
    ) -> Result<SnapshotResponse<ShoalRaft>, TransportError>;
}

/// One node's handler for incoming Raft calls; what a transport's server side calls.
#[derive(Clone)]
pub struct RaftServer {
    id: NodeId,
    raft: Raft<ShoalRaft, StateMachine>,
}

impl RaftServer {
    pub(crate) fn new(id: NodeId, raft: Raft<ShoalRaft, StateMachine>) -> Self {
        Self { id, raft }
    }

    fn remote(&self, error: impl std::fmt::Display) -> TransportError {
        TransportError::Remote {
            node: self.id,
            message: error.to_string(),
        }
    }

    /// Handles an incoming append-entries call.
    pub async fn append_entries(
        &self,
        request: AppendEntriesRequest<ShoalRaft>,
    ) -> Result<AppendEntriesResponse<ShoalRaft>, TransportError> {
        self.raft
            .append_entries(request)
            .await
            .map_err(|e| self.remote(e))
    }

    /// Handles an incoming vote request.
    pub async fn vote(
        &self,
        request: VoteRequest<ShoalRaft>,
    ) -> Result<VoteResponse<ShoalRaft>, TransportError> {
        self.raft.vote(request).await.map_err(|e| self.remote(e))
    }

    /// Handles a whole incoming snapshot.
    pub async fn install_snapshot(
        &self,
        vote: Vote,
        snapshot: RaftSnapshot,
    ) -> Result<SnapshotResponse<ShoalRaft>, TransportError> {
        self.raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| self.remote(e))
    }
}

/// openraft's network factory over a [`RaftTransport`].
#[derive(Clone)]
pub struct RaftNetwork {
    transport: Arc<dyn RaftTransport>,
}

impl RaftNetwork {
    /// A factory sending through `transport`.
    pub fn new(transport: Arc<dyn RaftTransport>) -> Self {
        Self { transport }
    }
}

/// A connection to one peer.
pub struct PeerClient {
    transport: Arc<dyn RaftTransport>,
    to: NodeId,
    addr: String,
}

fn rpc_error(error: TransportError) -> RPCError<ShoalRaft> {
    match error {
        TransportError::Unreachable(_) | TransportError::Timeout(_) => {
            RPCError::Unreachable(Unreachable::new(&error))
        }
        TransportError::Remote { .. } => RPCError::Network(NetworkError::new(&error)),
    }
}

impl RaftNetworkFactory<ShoalRaft> for RaftNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            transport: self.transport.clone(),
            to: target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetworkV2<ShoalRaft> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<ShoalRaft>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<ShoalRaft>, RPCError<ShoalRaft>> {
        self.transport
            .append_entries(self.to, &self.addr, rpc)
            .await
            .map_err(rpc_error)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ShoalRaft>,
        _option: RPCOption,
    ) -> Result<VoteResponse<ShoalRaft>, RPCError<ShoalRaft>> {
        self.transport
            .vote(self.to, &self.addr, rpc)
            .await
            .map_err(rpc_error)
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: RaftSnapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<ShoalRaft>, StreamingError<ShoalRaft>> {
        let send = self
            .transport
            .install_snapshot(self.to, &self.addr, vote, snapshot);
        futures_lite::pin!(send);
        futures_lite::pin!(cancel);
        let outcome =
            futures_lite::future::or(async { Ok(send.await) }, async { Err(cancel.await) }).await;
        match outcome {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(error)) => Err(match error {
                TransportError::Unreachable(_) | TransportError::Timeout(_) => {
                    StreamingError::Unreachable(Unreachable::new(&error))
                }
                TransportError::Remote { .. } => StreamingError::Network(NetworkError::new(&error)),
            }),
            Err(closed) => Err(StreamingError::Closed(closed)),
        }
    }
}
