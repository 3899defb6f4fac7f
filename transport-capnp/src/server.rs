//! The serving side: accept loop, login, and the capnp servers that hand each call to the
//! node's own [`Spawner`] and wait for the owned reply on a channel.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use capnp_rpc::RpcSystem;
use futures_lite::FutureExt;
use shoal_core::api::{ApiError, ConfigNodeApi, DataNodeApi};
use shoal_core::runtime::{BoxFuture, Spawner};

use crate::auth::{Access, Gate, LoginLimiter, LoginRateLimit, Role, ServerSecrets};
use crate::error::TransportError;
use crate::limits::{Admission, ConnectionLimits, ConnectionSlot, ConnectionStats, StatsCounters};
use crate::runtime::{LocalEx, RpcRuntime, WireLimits};
use crate::shoal_capnp::{bootstrap, config_node, config_node_group, data_node, raft};
use crate::tls::{Accepted, BoxRead, BoxWrite, ServerTls};
use crate::wire::{ReceiveLimits, ServerNetwork};

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
    /// Limits on incoming messages once a connection has logged in.
    pub limits: WireLimits,
    /// Limits before login, and caps on connections.
    pub connections: ConnectionLimits,
    /// Rate limit of failed logins per source address.
    pub login_rate: LoginRateLimit,
    /// Where the node logic of each incoming call runs (never on the RPC thread). Default:
    /// smol's global executor.
    pub spawner: Arc<dyn Spawner>,
    /// A connection that has not logged in by then (TLS handshake included) is closed, so
    /// idle unauthenticated connections cannot pile up.
    pub login_timeout: Duration,
    /// Serve TLS only (`None`: plaintext).
    pub tls: Option<Arc<ServerTls>>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            limits: WireLimits::default(),
            connections: ConnectionLimits::default(),
            login_rate: LoginRateLimit::default(),
            spawner: Arc::new(SmolGlobalSpawner),
            login_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

/// A running server. Dropping it stops accepting and closes its connections;
/// [`ServerHandle::shutdown`] also waits until that is done.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stop: async_channel::Sender<()>,
    stopped: async_channel::Receiver<()>,
    stats: Arc<StatsCounters>,
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

    /// The server's connection counters now.
    pub fn stats(&self) -> ConnectionStats {
        self.stats.snapshot()
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
    /// with the secret of their role (`secrets`; a plain string is one secret shared by
    /// every role).
    pub fn serve(
        &self,
        address: &str,
        secrets: impl Into<ServerSecrets>,
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
        let stats = Arc::new(StatsCounters::default());
        let tls = options.tls.is_some();
        let shared = ServerShared {
            secrets: secrets.into(),
            apis,
            spawner: options.spawner,
            limits: options.limits,
            connections: options.connections,
            login_timeout: options.login_timeout,
            tls: options.tls,
            stats: stats.clone(),
            login_rate: options.login_rate,
            snapshot_assembly: RefCell::new(None),
        };
        self.run(move |ex| {
            let ex2 = ex.clone();
            ex.spawn(accept_loop(listener, shared, stop_rx, stopped_tx, ex2))
                .detach();
        })?;
        tracing::info!(%local_addr, tls, "serving Cap'n Proto RPC");
        Ok(ServerHandle {
            local_addr,
            stop,
            stopped,
            stats,
            _runtime: self.clone(),
        })
    }
}

/// What every connection of one server shares (built on the caller's thread, then lives on
/// the RPC thread).
struct ServerShared {
    secrets: ServerSecrets,
    apis: ServedApis,
    spawner: Arc<dyn Spawner>,
    limits: WireLimits,
    connections: ConnectionLimits,
    login_timeout: Duration,
    tls: Option<Arc<ServerTls>>,
    stats: Arc<StatsCounters>,
    login_rate: LoginRateLimit,
    /// The Raft snapshot being received (one per node: a new transfer replaces it).
    snapshot_assembly: RefCell<Option<crate::raft::snapshot::Assembly>>,
}

/// The RPC-thread-only state of one server.
struct ServerLocal {
    shared: Rc<ServerShared>,
    admission: Admission,
    logins: LoginLimiter,
}

async fn accept_loop(
    listener: smol::net::TcpListener,
    shared: ServerShared,
    stop: async_channel::Receiver<()>,
    stopped: async_channel::Sender<()>,
    ex: LocalEx,
) {
    let server = Rc::new(ServerLocal {
        admission: Admission::new(shared.connections, shared.stats.clone()),
        logins: LoginLimiter::new(shared.login_rate),
        shared: Rc::new(shared),
    });
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
        // Past a cap the connection is closed at once: dropping the stream closes it.
        let Ok(slot) = server.admission.admit() else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = serve_connection(stream, peer, server.clone(), Rc::new(slot));
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

/// How one connection ended.
enum Ended {
    Closed,
    NoLoginInTime,
    Failed(String),
}

async fn serve_connection(
    stream: smol::net::TcpStream,
    peer: SocketAddr,
    server: Rc<ServerLocal>,
    slot: Rc<ConnectionSlot>,
) {
    let shared = server.shared.clone();
    let login_deadline = {
        let slot = slot.clone();
        async move {
            smol::Timer::after(shared.login_timeout).await;
            if slot.is_authenticated() {
                std::future::pending::<()>().await;
            }
            Ended::NoLoginInTime
        }
    };
    let session = async {
        let (reader, writer, tls_required) = match &server.shared.tls {
            None => {
                let (r, w) = plain_halves(stream);
                (r, w, false)
            }
            Some(tls) => match tls.accept(stream).await {
                Ok(Accepted::Tls(stream)) => {
                    let (r, w) = futures_lite::io::split(*stream);
                    (Box::new(r) as BoxRead, Box::new(w) as BoxWrite, false)
                }
                // Answered in plaintext: its login is refused with a line saying why.
                Ok(Accepted::Plaintext(stream)) => {
                    server.shared.stats.tls_handshake_failed();
                    tracing::warn!(%peer, "plaintext client on a TLS port: refusing its login");
                    let (r, w) = plain_halves(stream);
                    (r, w, true)
                }
                Err(e) => {
                    server.shared.stats.tls_handshake_failed();
                    return Ended::Failed(format!("TLS handshake failed: {e}"));
                }
            },
        };
        let limits = Rc::new(ReceiveLimits::new(
            server.shared.connections.pre_login,
            server.shared.connections.max_pre_login_messages,
            server.shared.limits,
        ));
        let network = ServerNetwork::new(reader, writer, limits.clone());
        let bootstrap: bootstrap::Client = capnp_rpc::new_client(BootstrapServer {
            server: server.clone(),
            peer,
            slot: slot.clone(),
            limits,
            tls_required,
        });
        match RpcSystem::new(Box::new(network), Some(bootstrap.client)).await {
            Ok(()) => Ended::Closed,
            Err(e) => Ended::Failed(e.to_string()),
        }
    };
    match session.or(login_deadline).await {
        Ended::Closed => tracing::debug!(%peer, "connection closed"),
        Ended::NoLoginInTime => tracing::debug!(%peer, "no login in time: connection closed"),
        // A malformed or oversized message ends this connection only. Before login this is
        // what any stranger can cause, so it is not worth a WARN each.
        Ended::Failed(e) if slot.is_authenticated() => {
            tracing::warn!(%peer, error = %e, "connection failed")
        }
        Ended::Failed(e) => tracing::debug!(%peer, error = %e, "connection failed before login"),
    }
}

fn plain_halves(stream: smol::net::TcpStream) -> (BoxRead, BoxWrite) {
    (
        Box::new(futures_lite::io::BufReader::new(stream.clone())),
        Box::new(futures_lite::io::BufWriter::new(stream)),
    )
}

/// The only capability a fresh connection sees.
struct BootstrapServer {
    server: Rc<ServerLocal>,
    peer: SocketAddr,
    slot: Rc<ConnectionSlot>,
    limits: Rc<ReceiveLimits>,
    /// A plaintext client on a TLS port: every login is refused, saying so.
    tls_required: bool,
}

impl BootstrapServer {
    /// Checks a login; `Ok(role)` when it may proceed.
    fn check_login(&self, role_code: u8, given: Result<&str, ()>) -> Result<Role, ApiError> {
        let shared = &self.server.shared;
        if self.tls_required {
            return Err(ApiError::Refused(
                "this node requires TLS: connect with --tls-ca (and a client certificate if \
                 it asks for one)"
                    .into(),
            ));
        }
        let ip = self.peer.ip();
        if let Gate::Throttled(wait) = self.server.logins.gate(ip) {
            shared.stats.login_throttled();
            return Err(ApiError::Remote {
                message: format!(
                    "too many failed logins from {ip}; try again in {} ms",
                    wait.as_millis().max(1)
                ),
                retryable: true,
            });
        }
        let refuse = |why: String| {
            shared.stats.login_failed();
            self.server.logins.failed(ip, &why);
            Err(ApiError::Refused(why))
        };
        let Some(role) = Role::from_code(role_code) else {
            return refuse(
                "login names no role: this node needs a client of this release (roles \
                 ConfigNode, DataNode, admin; see the README's Security section)"
                    .into(),
            );
        };
        let Some(secret) = shared.secrets.for_role(role) else {
            return refuse(format!("this node accepts no logins as {role}"));
        };
        if !given.is_ok_and(|given| secret.matches(given)) {
            return refuse(format!(
                "wrong {} secret (login as {role})",
                role.secret_kind().name()
            ));
        }
        Ok(role)
    }
}

impl bootstrap::Server for BootstrapServer {
    async fn login(
        self: CapRc<Self>,
        params: bootstrap::LoginParams,
        mut results: bootstrap::LoginResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let text = params.get_secret()?;
        let given = text.to_str().map_err(|_| ());
        let checked = self.check_login(params.get_role(), given);
        let reply = results.get().init_reply();
        let role = match checked {
            Ok(role) => role,
            Err(e) => {
                crate::codec::write_error(reply.init_error(), &e);
                return Ok(());
            }
        };
        self.slot.logged_in();
        self.limits.logged_in();
        tracing::debug!(peer = %self.peer, %role, "logged in");
        let shared = self.server.shared.clone();
        let data_node: data_node::Client =
            capnp_rpc::new_client(data_node_server::DataNodeServer::new(shared.clone(), role));
        let config_node: config_node::Client = capnp_rpc::new_client(
            config_node_server::ConfigNodeServer::new(shared.clone(), role),
        );
        let raft: raft::Client = capnp_rpc::new_client(raft_server::RaftCap::new(
            shared.clone(),
            role.may(Access::Peer),
        ));
        let group: config_node_group::Client =
            capnp_rpc::new_client(raft_server::GroupCap::new(shared, role));
        let mut services = reply.init_services();
        services.set_data_node(data_node);
        services.set_config_node(config_node);
        services.set_raft(raft);
        services.set_config_node_group(group);
        Ok(())
    }
}

impl ServerShared {
    /// Refuses a call that `role` may not make.
    pub(crate) fn authorize(
        &self,
        role: Role,
        access: Access,
        method: &str,
    ) -> Result<(), ApiError> {
        if role.may(access) {
            Ok(())
        } else {
            Err(ApiError::Refused(format!(
                "a login as {role} may not call {method}"
            )))
        }
    }

    /// Counts one served call of `method` by outcome, through core's metrics seam (this
    /// crate knows no metrics library).
    pub(crate) fn record_served<T>(method: &'static str, outcome: &Result<T, ApiError>) {
        use shoal_core::metrics::{MetricEvent, Outcome, record};
        let outcome = match outcome {
            Ok(_) => Outcome::Success,
            Err(e) if e.is_retryable() => Outcome::Retry,
            Err(_) => Outcome::Failure,
        };
        record(MetricEvent::Rpc { method, outcome });
    }

    /// Runs `call` as a task of this RPC thread and waits for its reply: no hand-off to
    /// another thread and back, for short calls that only await (the DataNode's task
    /// protocol: a table lookup, a journal record staged and its shared flush). Like
    /// [`ServerShared::dispatch`], the call runs to completion even if the client goes. Never
    /// for calls that compute for long: they would hold up every connection of the node.
    async fn dispatch_here<T: Send + 'static>(
        &self,
        call: BoxFuture<Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let Some(local) = crate::runtime::this_rpc_thread() else {
            return self.dispatch(call).await;
        };
        let (tx, rx) = async_channel::bounded(1);
        local
            .spawn(async move {
                let _ = tx.send(call.await).await;
            })
            .detach();
        rx.recv().await.unwrap_or_else(|_| {
            Err(ApiError::Remote {
                message: "the node dropped the call without replying".into(),
                retryable: true,
            })
        })
    }

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
