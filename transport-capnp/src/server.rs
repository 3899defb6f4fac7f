//! The serving side: accept loop, login, and the capnp servers that hand each call to the
//! node's own [`Spawner`] and wait for the owned reply on a channel.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures_lite::FutureExt;
use shoal_core::api::{ApiError, ConfigNodeApi, DataNodeApi};
use shoal_core::runtime::{BoxFuture, Spawner};

use crate::error::TransportError;
use crate::runtime::{LocalEx, RpcRuntime, WireLimits};
use crate::secret::secrets_match;
use crate::shoal_capnp::{bootstrap, config_node, config_node_group, data_node, raft};

mod config_node_server;
mod data_node_server;
mod raft_server;

/// The local APIs a server exposes. A missing one is still offered after login, but every
/// call to it is refused.
#[derive(Clone, Default)]
pub struct ServedApis {
    /// The DataNode API, on DataNodes.
    pub data_node: Option<Arc<dyn DataNodeApi>>,
    /// The ConfigNode API, on ConfigNodes.
    pub config_node: Option<Arc<dyn ConfigNodeApi>>,
    /// Incoming Raft messages, on the ConfigNodes of a replicated group (peers only).
    pub raft: Option<shoal_consensus_raft::RaftServer>,
    /// The group's membership API, on the ConfigNodes of a replicated group.
    pub group: Option<Arc<dyn shoal_consensus_raft::ConfigNodeGroupApi>>,
}

impl ServedApis {
    /// Serves only a DataNode API.
    pub fn data_node(api: Arc<dyn DataNodeApi>) -> Self {
        Self {
            data_node: Some(api),
            ..Self::default()
        }
    }

    /// Serves only a ConfigNode API.
    pub fn config_node(api: Arc<dyn ConfigNodeApi>) -> Self {
        Self {
            config_node: Some(api),
            ..Self::default()
        }
    }
}

/// Spawns onto smol's global executor: the default home of the node logic a call runs.
#[derive(Debug, Clone, Copy, Default)]
struct SmolGlobalSpawner;

impl Spawner for SmolGlobalSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        smol::spawn(future).detach();
    }
}

/// How a server runs.
#[derive(Clone)]
pub struct ServerOptions {
    /// Limits on incoming messages.
    pub limits: WireLimits,
    /// Where the node logic of each incoming call runs (never on the RPC thread). Default:
    /// smol's global executor.
    pub spawner: Arc<dyn Spawner>,
    /// A connection that has not logged in by then is closed, so idle unauthenticated
    /// connections cannot pile up.
    pub login_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            limits: WireLimits::default(),
            spawner: Arc::new(SmolGlobalSpawner),
            login_timeout: Duration::from_secs(10),
        }
    }
}

/// A running server. Dropping it stops accepting and closes its connections;
/// [`ServerHandle::shutdown`] also waits until that is done.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: async_channel::Sender<()>,
    stopped: async_channel::Receiver<()>,
    // Keeps the RPC thread alive while the server is.
    _runtime: RpcRuntime,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl ServerHandle {
    /// The address the server listens on (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection and waits until the listener and all
    /// connections are gone. Calls already handed to the node finish there; their replies
    /// are dropped.
    pub async fn shutdown(self) {
        self.stop.close();
        // Every accept loop and connection task holds a sender clone of `stopped`'s channel:
        // `recv` fails once the last one has exited.
        let _ = self.stopped.recv().await;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.close();
    }
}

impl RpcRuntime {
    /// Listens on `address` (e.g. `127.0.0.1:0`) and serves `apis` to clients that log in
    /// with `secret`.
    pub fn serve(
        &self,
        address: &str,
        secret: &str,
        apis: ServedApis,
        options: ServerOptions,
    ) -> Result<ServerHandle, TransportError> {
        let bind_err = |source| TransportError::Bind {
            address: address.to_string(),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let listener = smol::net::TcpListener::try_from(listener).map_err(bind_err)?;
        let (stop, stop_rx) = async_channel::bounded::<()>(1);
        let (stopped_tx, stopped) = async_channel::bounded::<()>(1);
        let shared = ServerShared {
            secret: secret.to_string(),
            apis,
            spawner: options.spawner,
            snapshot_assembly: RefCell::new(None),
        };
        let limits = options.limits;
        let login_timeout = options.login_timeout;
        self.run(move |ex| {
            let shared = Rc::new(shared);
            let ex2 = ex.clone();
            let settings = ConnectionSettings {
                limits,
                login_timeout,
            };
            ex.spawn(accept_loop(
                listener, shared, settings, stop_rx, stopped_tx, ex2,
            ))
            .detach();
        })?;
        tracing::info!(%local_addr, "serving Cap'n Proto RPC");
        Ok(ServerHandle {
            local_addr,
            stop,
            stopped,
            _runtime: self.clone(),
        })
    }
}

/// What every connection of one server shares (lives on the RPC thread).
struct ServerShared {
    secret: String,
    apis: ServedApis,
    spawner: Arc<dyn Spawner>,
    /// The Raft snapshot being received (one per node: a new transfer replaces it).
    snapshot_assembly: RefCell<Option<crate::raft::snapshot::Assembly>>,
}

/// Per-connection settings of one server.
#[derive(Clone, Copy)]
struct ConnectionSettings {
    limits: WireLimits,
    login_timeout: Duration,
}

async fn accept_loop(
    listener: smol::net::TcpListener,
    shared: Rc<ServerShared>,
    settings: ConnectionSettings,
    stop: async_channel::Receiver<()>,
    stopped: async_channel::Sender<()>,
    ex: LocalEx,
) {
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                let _ = stop.recv().await;
                None
            })
            .await;
        let (stream, peer) = match accepted {
            None => break,
            Some(Ok(accepted)) => accepted,
            Some(Err(e)) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                smol::Timer::after(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(stream, peer, shared.clone(), settings);
        let stop = stop.clone();
        let stopped = stopped.clone();
        ex.spawn(async move {
            connection
                .or(async {
                    let _ = stop.recv().await;
                })
                .await;
            drop(stopped);
        })
        .detach();
    }
    tracing::info!("RPC server stopped accepting");
    drop(stopped);
}

fn serve_connection(
    stream: smol::net::TcpStream,
    peer: SocketAddr,
    shared: Rc<ServerShared>,
    settings: ConnectionSettings,
) -> impl std::future::Future<Output = ()> {
    let reader = futures_lite::io::BufReader::new(stream.clone());
    let writer = futures_lite::io::BufWriter::new(stream);
    let network = twoparty::VatNetwork::new(
        reader,
        writer,
        Side::Server,
        settings.limits.reader_options(),
    );
    let logged_in = Rc::new(Cell::new(false));
    let bootstrap: bootstrap::Client = capnp_rpc::new_client(BootstrapServer {
        shared,
        peer,
        logged_in: logged_in.clone(),
    });
    let rpc = RpcSystem::new(Box::new(network), Some(bootstrap.client));
    let login_deadline = async move {
        smol::Timer::after(settings.login_timeout).await;
        if logged_in.get() {
            std::future::pending::<()>().await;
        }
        Ok(Err(()))
    };
    async move {
        match async { rpc.await.map(Ok) }.or(login_deadline).await {
            Ok(Ok(())) => tracing::debug!(%peer, "connection closed"),
            Ok(Err(())) => tracing::warn!(%peer, "no login in time: connection closed"),
            // A malformed or oversized message ends this connection only.
            Err(e) => tracing::warn!(%peer, error = %e, "connection failed"),
        }
    }
}

/// The only capability a fresh connection sees.
struct BootstrapServer {
    shared: Rc<ServerShared>,
    peer: SocketAddr,
    logged_in: Rc<Cell<bool>>,
}

impl bootstrap::Server for BootstrapServer {
    async fn login(
        self: CapRc<Self>,
        params: bootstrap::LoginParams,
        mut results: bootstrap::LoginResults,
    ) -> Result<(), capnp::Error> {
        let given = params.get()?.get_secret()?;
        let ok = given
            .to_str()
            .is_ok_and(|given| secrets_match(&self.shared.secret, given));
        let reply = results.get().init_reply();
        if !ok {
            tracing::warn!(peer = %self.peer, "login refused: wrong secret");
            crate::codec::write_error(
                reply.init_error(),
                &ApiError::Refused("wrong cluster secret".into()),
            );
            return Ok(());
        }
        self.logged_in.set(true);
        let data_node: data_node::Client =
            capnp_rpc::new_client(data_node_server::DataNodeServer::new(self.shared.clone()));
        let config_node: config_node::Client = capnp_rpc::new_client(
            config_node_server::ConfigNodeServer::new(self.shared.clone()),
        );
        let raft: raft::Client = capnp_rpc::new_client(raft_server::RaftCap::new(
            self.shared.clone(),
            self.may_act_as_confignode_peer(),
        ));
        let group: config_node_group::Client =
            capnp_rpc::new_client(raft_server::GroupCap::new(self.shared.clone()));
        let mut services = reply.init_services();
        services.set_data_node(data_node);
        services.set_config_node(config_node);
        services.set_raft(raft);
        services.set_config_node_group(group);
        Ok(())
    }
}

impl BootstrapServer {
    /// Whether this (authenticated) login may send Raft messages as a ConfigNode peer. Today
    /// a login proves one thing, the cluster secret, so every login may; when logins carry
    /// roles, this is where the ConfigNode-peer role is required (a refused login still gets
    /// a `Raft` capability, whose every call is refused).
    fn may_act_as_confignode_peer(&self) -> bool {
        self.logged_in.get()
    }
}

impl ServerShared {
    /// Runs `call` on the node's spawner and waits for its owned reply: the bridge between
    /// the RPC thread and the node. The call runs to completion even if the client goes.
    async fn dispatch<T: Send + 'static>(
        &self,
        call: BoxFuture<Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let (tx, rx) = async_channel::bounded(1);
        self.spawner.spawn(
            "shoal-rpc-call",
            Box::pin(async move {
                let _ = tx.send(call.await).await;
            }),
        );
        rx.recv().await.unwrap_or_else(|_| {
            Err(ApiError::Remote {
                message: "the node dropped the call without replying".into(),
                retryable: true,
            })
        })
    }
}
