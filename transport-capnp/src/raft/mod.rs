//! Raft between the ConfigNodes of a group over Cap'n Proto: [`CapnpRaftTransport`]
//! implements shoal-consensus-raft's `RaftTransport` (the sending side); the serving side is
//! the `Raft` capability a node offers to logins that may act as its ConfigNode peers.
//!
//! Calls share the node's one RPC thread and one reusable connection per peer address, as
//! every other client does. Snapshots travel in checksummed chunks ([`snapshot`]); the
//! receiver checks each chunk and the whole before the snapshot is installed.

pub(crate) mod codec;
pub(crate) mod snapshot;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use shoal_consensus_raft::state_machine::RaftSnapshot;
use shoal_consensus_raft::types::Vote;
use shoal_consensus_raft::{NodeId, RaftTransport, ShoalRaft, TransportError as RaftError};
use shoal_core::api::ApiError;

use crate::client::{ClientOptions, Connection, Remote, call_error};
use crate::codec::{malformed, not_in_schema};
use crate::error::TransportError;
use crate::runtime::RpcRuntime;
use crate::shoal_capnp::{raft, snapshot_chunk, snapshot_chunk_reply};

/// Deadlines and sizes of Raft calls.
#[derive(Debug, Clone)]
pub struct RaftCallOptions {
    /// Deadline of an append-entries call (heartbeats included).
    pub append_timeout: Duration,
    /// Deadline of a vote request.
    pub vote_timeout: Duration,
    /// Deadline of one snapshot chunk that is not the last.
    pub chunk_timeout: Duration,
    /// Deadline of the last chunk, which also installs the snapshot on the receiver.
    pub install_timeout: Duration,
    /// Bytes per snapshot chunk.
    pub chunk_size: usize,
}

impl Default for RaftCallOptions {
    fn default() -> Self {
        Self {
            append_timeout: Duration::from_secs(2),
            vote_timeout: Duration::from_secs(1),
            chunk_timeout: Duration::from_secs(10),
            install_timeout: Duration::from_secs(60),
            chunk_size: 1 << 20,
        }
    }
}

/// The largest snapshot a receiver assembles.
pub(crate) const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;

/// Raft messages from node `from` to its peers over Cap'n Proto, one cached connection per
/// peer address on the node's RPC thread.
pub struct CapnpRaftTransport {
    runtime: RpcRuntime,
    options: ClientOptions,
    calls: RaftCallOptions,
    from: NodeId,
    connections: Mutex<BTreeMap<String, Connection>>,
    transfers: AtomicU64,
}

impl std::fmt::Debug for CapnpRaftTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CapnpRaftTransport")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl CapnpRaftTransport {
    /// The sending side of node `from`, logging in to peers with `options`.
    pub fn new(
        runtime: &RpcRuntime,
        from: NodeId,
        options: ClientOptions,
        calls: RaftCallOptions,
    ) -> Self {
        Self {
            runtime: runtime.clone(),
            options,
            calls,
            from,
            connections: Mutex::new(BTreeMap::new()),
            transfers: AtomicU64::new(0),
        }
    }

    fn connection(&self, to: NodeId, addr: &str) -> Result<Connection, RaftError> {
        let mut connections = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(conn) = connections.get(addr) {
            return Ok(conn.clone());
        }
        let conn = Connection::new(&self.runtime, addr, self.options.clone()).map_err(
            |e: TransportError| RaftError::Remote {
                node: to,
                message: e.to_string(),
            },
        )?;
        connections.insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// Runs `call` against peer `to`'s `Raft` capability with `timeout`.
    async fn call<T, F, Fut>(
        &self,
        to: NodeId,
        addr: &str,
        timeout: Duration,
        call: F,
    ) -> Result<T, RaftError>
    where
        T: Send + 'static,
        F: FnOnce(raft::Client) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, ApiError>> + 'static,
    {
        let conn = self.connection(to, addr)?;
        conn.call(timeout, move |remote: Remote| async move {
            let raft = remote.raft.ok_or_else(|| {
                ApiError::Refused("the peer offers no Raft capability (an older node?)".into())
            })?;
            call(raft).await
        })
        .await
        .map_err(|e| raft_error(to, e))
    }
}

/// A failed call as the Raft transport's error: unreachable and timed-out peers are retried
/// by Raft; anything the peer answered is its failure.
fn raft_error(to: NodeId, error: ApiError) -> RaftError {
    match error {
        ApiError::Unreachable(_) => RaftError::Unreachable(to),
        ApiError::Timeout(_) => RaftError::Timeout(to),
        other => RaftError::Remote {
            node: to,
            message: other.to_string(),
        },
    }
}

#[async_trait]
impl RaftTransport for CapnpRaftTransport {
    async fn append_entries(
        &self,
        to: NodeId,
        addr: &str,
        request: AppendEntriesRequest<ShoalRaft>,
    ) -> Result<AppendEntriesResponse<ShoalRaft>, RaftError> {
        self.call(
            to,
            addr,
            self.calls.append_timeout,
            move |raft| async move {
                let mut req = raft.append_entries_request();
                codec::write_append_request(req.get(), &request);
                let resp = req.send().promise.await.map_err(call_error)?;
                codec::read_append_reply(resp.get().and_then(|r| r.get_reply()))
            },
        )
        .await
    }

    async fn vote(
        &self,
        to: NodeId,
        addr: &str,
        request: VoteRequest<ShoalRaft>,
    ) -> Result<VoteResponse<ShoalRaft>, RaftError> {
        self.call(to, addr, self.calls.vote_timeout, move |raft| async move {
            let mut req = raft.vote_request();
            codec::write_vote(req.get().init_vote(), &request.vote);
            codec::write_opt_log_id(req.get().init_last_log_id(), request.last_log_id.as_ref());
            req.get()
                .set_leadership_transfer(request.leadership_transfer);
            let resp = req.send().promise.await.map_err(call_error)?;
            codec::read_vote_reply(resp.get().and_then(|r| r.get_reply()))
        })
        .await
    }

    async fn install_snapshot(
        &self,
        to: NodeId,
        addr: &str,
        vote: Vote,
        snapshot: RaftSnapshot,
    ) -> Result<SnapshotResponse<ShoalRaft>, RaftError> {
        let last = snapshot.meta.last_log_id.map_or(0, |id| id.index);
        let nonce = self.transfers.fetch_add(1, Ordering::Relaxed);
        let transfer_id = format!("{}-{}-{last}-{nonce}", self.from, vote.leader_id.term);
        let parts = snapshot::chunks(&transfer_id, &snapshot.snapshot, self.calls.chunk_size);
        tracing::info!(
            to,
            bytes = snapshot.snapshot.len(),
            chunks = parts.len(),
            %transfer_id,
            "sending a raft snapshot"
        );
        for chunk in parts {
            let timeout = if chunk.last {
                self.calls.install_timeout
            } else {
                self.calls.chunk_timeout
            };
            let installed = self
                .call(to, addr, timeout, move |raft| async move {
                    let mut req = raft.snapshot_chunk_request();
                    codec::write_vote(req.get().init_vote(), &vote);
                    write_chunk(req.get().init_chunk(), &chunk);
                    let resp = req.send().promise.await.map_err(call_error)?;
                    let reply = resp.get().and_then(|r| r.get_reply()).map_err(malformed)?;
                    match reply.which().map_err(not_in_schema)? {
                        snapshot_chunk_reply::Received(()) => Ok(None),
                        snapshot_chunk_reply::Installed(vote) => Ok(Some(codec::read_vote(vote)?)),
                        snapshot_chunk_reply::Error(e) => Err(crate::codec::read_error(e)),
                    }
                })
                .await?;
            if let Some(vote) = installed {
                return Ok(SnapshotResponse::new(vote));
            }
        }
        Err(RaftError::Remote {
            node: to,
            message: format!("snapshot transfer {transfer_id} was never confirmed installed"),
        })
    }
}

fn write_chunk(mut b: snapshot_chunk::Builder<'_>, chunk: &snapshot::Chunk) {
    b.set_transfer_id(chunk.transfer_id.as_str());
    b.set_offset(chunk.offset);
    b.set_data(&chunk.data);
    b.set_data_crc(chunk.data_crc);
    b.set_total_length(chunk.total_length);
    b.set_total_crc(chunk.total_crc);
    b.set_last(chunk.last);
}

/// Reads a snapshot chunk.
pub(crate) fn read_chunk(
    r: capnp::Result<snapshot_chunk::Reader<'_>>,
) -> Result<snapshot::Chunk, ApiError> {
    let r = r.map_err(malformed)?;
    Ok(snapshot::Chunk {
        transfer_id: crate::codec::read_text(r.get_transfer_id())?,
        offset: r.get_offset(),
        data: r.get_data().map_err(malformed)?.to_vec(),
        data_crc: r.get_data_crc(),
        total_length: r.get_total_length(),
        total_crc: r.get_total_crc(),
        last: r.get_last(),
    })
}
