//! The calling side: one connection per client, owned by a task on the RPC thread, reached
//! through an async channel of owned calls.
//!
//! The connection task connects lazily, logs in, reuses the connection for every call
//! (calls pipeline: many may be in flight), notices when it breaks, and reconnects on a
//! later call with exponential backoff; during a backoff window calls fail fast with the
//! last connection error instead of piling up.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::{RpcSystem, rpc_twoparty_capnp::Side, twoparty};
use futures_lite::FutureExt;
use shoal_core::api::ApiError;

use crate::codec;
use crate::error::TransportError;
use crate::runtime::{LocalEx, RpcRuntime, WireLimits};
use crate::shoal_capnp::{bootstrap, config_node, data_node, login_reply};

mod config_node_client;
mod data_node_client;

pub use config_node_client::CapnpConfigNodeClient;
pub use data_node_client::CapnpDataNodeClient;

/// How a client connects and calls.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The cluster secret presented at login.
    pub secret: String,
    /// Deadline of one call, including connecting if needed. A long-poll call gets its
    /// wait on top of this.
    pub call_timeout: Duration,
    /// Deadline of connecting and logging in.
    pub connect_timeout: Duration,
    /// First delay before reconnecting after a failed connection; doubles per failure.
    pub reconnect_min: Duration,
    /// Longest delay between reconnection attempts.
    pub reconnect_max: Duration,
    /// Limits on incoming replies.
    pub limits: WireLimits,
}

impl ClientOptions {
    /// Default timeouts and limits with `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            secret: secret.into(),
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
    broken: Rc<Cell<bool>>,
    // Dropping the last clone ends the connection's RPC system and closes the socket.
    _rpc: Rc<smol::Task<()>>,
}

type LocalBoxFuture = Pin<Box<dyn Future<Output = ()>>>;
type CallFn = Box<dyn FnOnce(Result<Remote, ApiError>) -> LocalBoxFuture + Send>;

/// A reusable connection to one node. Cheap to clone (clones share the connection).
#[derive(Clone)]
pub(crate) struct Connection {
    address: String,
    options: ClientOptions,
    calls: async_channel::Sender<CallFn>,
    // Keeps the RPC thread alive while the client is.
    _runtime: RpcRuntime,
}

impl Connection {
    /// A connection to `address`; nothing is dialled until the first call.
    pub(crate) fn new(
        runtime: &RpcRuntime,
        address: &str,
        options: ClientOptions,
    ) -> Result<Self, TransportError> {
        let (calls, incoming) = async_channel::unbounded::<CallFn>();
        let actor_address = address.to_string();
        let actor_options = options.clone();
        runtime.run(move |ex| {
            let ex2 = ex.clone();
            ex.spawn(connection_task(actor_address, actor_options, incoming, ex2))
                .detach();
        })?;
        Ok(Self {
            address: address.to_string(),
            options,
            calls,
            _runtime: runtime.clone(),
        })
    }

    /// The address this connection dials.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The options it was made with.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Runs `call` on the RPC thread against the connected capabilities, with `timeout`
    /// covering connecting and the call; only the owned result crosses back.
    pub(crate) async fn call<T, F, Fut>(&self, timeout: Duration, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Remote) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, ApiError>> + 'static,
    {
        let (reply_tx, reply_rx) = async_channel::bounded(1);
        let job: CallFn = Box::new(move |remote| {
            Box::pin(async move {
                let result = match remote {
                    Err(e) => Err(e),
                    Ok(remote) => {
                        let broken = remote.broken.clone();
                        // Dropping the call on timeout cancels it on the wire too.
                        let result = call(remote)
                            .or(async move {
                                smol::Timer::after(timeout).await;
                                Err(ApiError::Timeout(timeout))
                            })
                            .await;
                        if matches!(result, Err(ApiError::Unreachable(_))) {
                            broken.set(true);
                        }
                        result
                    }
                };
                let _ = reply_tx.try_send(result);
            })
        });
        if self.calls.try_send(job).is_err() {
            return Err(ApiError::Unreachable("the RPC thread has stopped".into()));
        }
        async {
            reply_rx.recv().await.unwrap_or_else(|_| {
                Err(ApiError::Unreachable(
                    "the RPC thread stopped before replying".into(),
                ))
            })
        }
        .or(async {
            // Backstop in case the RPC thread itself is stuck.
            smol::Timer::after(timeout).await;
            Err(ApiError::Timeout(timeout))
        })
        .await
    }
}

/// Reconnection pacing after failed connection attempts.
struct Backoff {
    min: Duration,
    max: Duration,
    next_delay: Duration,
    retry_at: Option<Instant>,
    last_error: Option<ApiError>,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            next_delay: min,
            retry_at: None,
            last_error: None,
        }
    }

    /// The error to fail a call with while still inside the backoff window.
    fn blocked(&self) -> Option<ApiError> {
        match (self.retry_at, &self.last_error) {
            (Some(at), Some(error)) if Instant::now() < at => Some(error.clone()),
            _ => None,
        }
    }

    fn failed(&mut self, error: ApiError) {
        self.retry_at = Some(Instant::now() + self.next_delay);
        self.next_delay = (self.next_delay * 2).min(self.max);
        self.last_error = Some(error);
    }

    fn succeeded(&mut self) {
        self.next_delay = self.min;
        self.retry_at = None;
        self.last_error = None;
    }
}

async fn connection_task(
    address: String,
    options: ClientOptions,
    incoming: async_channel::Receiver<CallFn>,
    ex: LocalEx,
) {
    let mut remote: Option<Remote> = None;
    let mut backoff = Backoff::new(options.reconnect_min, options.reconnect_max);
    while let Ok(call) = incoming.recv().await {
        if remote.as_ref().is_some_and(|r| r.broken.get()) {
            tracing::debug!(%address, "connection broken; will reconnect");
            remote = None;
        }
        if remote.is_none() {
            if let Some(error) = backoff.blocked() {
                ex.spawn(call(Err(error))).detach();
                continue;
            }
            let connected = connect(&address, &options, &ex)
                .or(async {
                    smol::Timer::after(options.connect_timeout).await;
                    Err(ApiError::Unreachable(format!(
                        "{address}: no connection within {:?}",
                        options.connect_timeout
                    )))
                })
                .await;
            match connected {
                Ok(r) => {
                    tracing::debug!(%address, "connected");
                    backoff.succeeded();
                    remote = Some(r);
                }
                Err(error) => {
                    tracing::debug!(%address, %error, "connection failed");
                    backoff.failed(error.clone());
                    ex.spawn(call(Err(error))).detach();
                    continue;
                }
            }
        }
        if let Some(r) = &remote {
            ex.spawn(call(Ok(r.clone()))).detach();
        }
    }
}

/// Dials `address`, starts the RPC system and logs in.
async fn connect(address: &str, options: &ClientOptions, ex: &LocalEx) -> Result<Remote, ApiError> {
    let stream = smol::net::TcpStream::connect(address)
        .await
        .map_err(|e| ApiError::Unreachable(format!("{address}: {e}")))?;
    let _ = stream.set_nodelay(true);
    let reader = futures_lite::io::BufReader::new(stream.clone());
    let writer = futures_lite::io::BufWriter::new(stream);
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
    request.get().set_secret(options.secret.as_str());
    let response = request.send().promise.await.map_err(call_error)?;
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
