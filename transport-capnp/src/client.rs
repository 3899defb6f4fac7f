//! The calling side: one connection per client, owned by the RPC thread, reached through
//! an async channel of owned calls.
//!
//! A connection is dialled lazily, logs in, and is reused by every call (calls pipeline:
//! many may be in flight). When it breaks, the next call dials again; dials are coalesced and
//! paced by exponential backoff, and a call is only ever failed by an attempt made during it
//! (see [`connection`]).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use shoal_core::api::ApiError;

use crate::auth::{Role, Secret};
use crate::codec;
use crate::runtime::{LocalEx, WireLimits};
use crate::shoal_capnp::{bootstrap, config_node, config_node_group, data_node, login_reply, raft};
use crate::tls::{BoxRead, BoxWrite, ClientTls};

mod config_node_client;
mod connection;
mod data_node_client;
mod group_client;

pub use config_node_client::CapnpConfigNodeClient;
pub(crate) use connection::Connection;
pub use data_node_client::CapnpDataNodeClient;
pub use group_client::CapnpConfigNodeGroupClient;

/// How a client connects and calls.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Who the client logs in as.
    pub role: Role,
    /// The secret of that role, presented at login.
    pub secret: Secret,
    /// TLS (`None`: plaintext).
    pub tls: Option<ClientTls>,
    /// Deadline of one call, including connecting if needed. A long-poll call gets its
    /// wait on top of this.
    pub call_timeout: Duration,
    /// Deadline of connecting and logging in.
    pub connect_timeout: Duration,
    /// First delay before reconnecting after a failed connection; doubles per failure. A
    /// call never fails with an earlier attempt's error: it waits for the next dial, which
    /// comes at the end of this window or halfway to the call's deadline, whichever is first.
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Limits on incoming replies.
    pub limits: WireLimits,
}

impl ClientOptions {
    /// The same, over TLS.
    pub fn with_tls(self, tls: Option<ClientTls>) -> Self {
        Self { tls, ..self }
    }
}

impl ClientOptions {
    /// Default timeouts and limits, logging in as `role` with `secret`, in plaintext.
    pub fn new(role: Role, secret: impl Into<Secret>) -> Self {
        Self {
            role,
            secret: secret.into(),
            tls: None,
            call_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
            limits: WireLimits::default(),
        }
    }
}

/// The logged-in capabilities of one connection (RPC thread only).
#[derive(Clone)]
pub(crate) struct Remote {
    pub(crate) data_node: data_node::Client,
    pub(crate) config_node: config_node::Client,
    /// Raft between ConfigNode peers (`None` from a node that predates it).
    pub(crate) raft: Option<raft::Client>,
    /// The ConfigNode group's membership (`None` from a node that predates it).
    pub(crate) config_node_group: Option<config_node_group::Client>,
    broken: Rc<Cell<bool>>,
    // Dropping the last clone ends the connection's RPC system and closes the socket.
    _rpc: Rc<smol::Task<()>>,
}

/// Dials `address`, starts the RPC system and logs in.
async fn connect(address: &str, options: &ClientOptions, ex: &LocalEx) -> Result<Remote, ApiError> {
    let stream = smol::net::TcpStream::connect(address)
        .await
        .map_err(|e| ApiError::Unreachable(format!("{address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let (reader, writer, tap): (BoxRead, BoxWrite, _) = match &options.tls {
        Some(tls) => {
            let (r, w, tap) = tls.connect(address, stream).await?;
            (r, w, Some(tap))
        }
        None => (
            Box::new(futures_lite::io::BufReader::new(stream.clone())),
            Box::new(futures_lite::io::BufWriter::new(stream)),
            None,
        ),
    };
    let network = twoparty::VatNetwork::new(
        reader,
        writer,
        Side::Client,
        options.limits.reader_options(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: bootstrap::Client = rpc.bootstrap(Side::Server);
    let broken = Rc::new(Cell::new(false));
    let rpc_broken = broken.clone();
    let rpc_address = address.to_string();
    let rpc_task = ex.spawn(async move {
        if let Err(e) = rpc.await {
            tracing::debug!(address = %rpc_address, error = %e, "connection ended");
        }
        rpc_broken.set(true);
    });
    let mut request = bootstrap.login_request();
    request.get().set_secret(options.secret.expose());
    request.get().set_role(options.role.code());
    let response = match request.send().promise.await {
        Ok(response) => response,
        // With TLS 1.3 a server refuses a client certificate after the client's side of the
        // handshake is done: the refusal arrives as the connection's end.
        Err(e) => {
            return Err(tap
                .and_then(|tap| tap.explain(address))
                .unwrap_or_else(|| call_error(e)));
        }
    };
    let reply = response
        .get()
        .and_then(|r| r.get_reply())
        .map_err(codec::malformed)?;
    match reply.which().map_err(codec::not_in_schema)? {
        login_reply::Error(e) => Err(codec::read_error(e)),
        login_reply::Services(services) => {
            let services = services.map_err(codec::malformed)?;
            Ok(Remote {
                data_node: services.get_data_node().map_err(codec::malformed)?,
                config_node: services.get_config_node().map_err(codec::malformed)?,
                raft: services.get_raft().ok(),
                config_node_group: services.get_config_node_group().ok(),
                broken,
                _rpc: Rc::new(rpc_task),
            })
        }
    }
}

/// A Cap'n Proto exception on a call as a typed error. Our servers answer every failure in
/// the reply's error union, so an exception means the connection failed (unreachable, the
/// call may or may not have run) or the peer could not decode the request (malformed).
pub(crate) fn call_error(e: capnp::Error) -> ApiError {
    match e.kind {
        capnp::ErrorKind::Disconnected => {
            ApiError::Unreachable(format!("connection lost (the call may have run): {e}"))
        }
        capnp::ErrorKind::Overloaded => ApiError::Remote {
            message: e.to_string(),
            retryable: true,
        },
        capnp::ErrorKind::Unimplemented => ApiError::Refused(e.to_string()),
        _ => ApiError::Malformed(e.to_string()),
    }
}
