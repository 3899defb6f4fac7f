//! The ConfigNode and DataNode processes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use shoal_core::api::{ConfigNodeApi, DataNodeHeartbeat, HeartbeatReport};
use shoal_core::confignode::orphans::OrphanPolicy;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::DataNodeId;
use shoal_runtime_smol::smol_runtime;
use shoal_transport_capnp::{ClientOptions, Role, RpcRuntime, ServedApis, ServerOptions};

use crate::clients::CapnpDataNodeClients;
use crate::error::CliError;
use crate::follow::ConfigNodes;
use crate::metrics::MetricsSource;
use crate::process::{ensure_dir, start_metrics, write_atomically, write_listen_addr};
use crate::raft::{GroupFlags, MemberWire, run_member, runs_replicated};
use crate::replay::ThreadedDecoder;
use crate::security::{NodeSecurityArgs, NodeTls};
use crate::service::ConfigNodeService;
use crate::storage::{StoreOptions, open_confignode_stores, open_datanode_stores};

/// File in a DataNode's data directory holding the id the ConfigNode gave it.
pub const NODE_ID_FILE: &str = "node.id";

/// A ConfigNode process's settings.
#[derive(Debug, Clone)]
pub struct ConfigNodeSettings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Secrets (default: DATA_DIR/internal.secret and admin.secret, generated if absent;
    /// the members of a group must share them), TLS and connection limits.
    pub security: NodeSecurityArgs,
    /// Orphan reconciliation: grace period and whether orphans are deleted.
    pub orphans: OrphanPolicy,
    /// Group membership flags (`--peers`, `--join`, ...); empty: a single ConfigNode, unless
    /// the data directory already belongs to a group member.
    pub group: GroupFlags,
    /// Where to serve Prometheus metrics and the status page (`None`: nowhere).
    pub metrics_listen: Option<String>,
}

/// Runs a ConfigNode until `stop` yields.
pub fn run_confignode(
    settings: ConfigNodeSettings,
    stop: async_channel::Receiver<()>,
) -> Result<(), CliError> {
    ensure_dir(&settings.data_dir)?;
    let secrets = settings.security.confignode_secrets(&settings.data_dir)?;
    let tls = settings.security.node_tls()?;
    let config = ConfigNodeConfig {
        orphans: settings.orphans.clone(),
        ..ConfigNodeConfig::default()
    };
    if runs_replicated(&settings.data_dir, &settings.group) {
        let wire = MemberWire {
            client: ClientOptions::new(Role::ConfigNode, secrets.internal.clone())
                .with_tls(tls.as_ref().map(|t| t.client.clone())),
            secrets: secrets.server,
            server: server_options(&settings.security, tls.as_ref()),
        };
        return run_member(
            &settings.data_dir,
            &settings.listen,
            &settings.group,
            wire,
            config,
            settings.metrics_listen.as_deref(),
            stop,
        );
    }
    if settings.metrics_listen.is_some() {
        crate::metrics::install_sink();
    }
    let stores = open_confignode_stores(&settings.data_dir, &StoreOptions::default())?;
    let runtime = smol_runtime();
    let rpc = RpcRuntime::start("confignode")?;
    let consensus = Arc::new(
        LocalConsensus::new(stores.log, stores.snapshots)
            .with_replay_decoder(Arc::new(ThreadedDecoder::per_core())),
    );
    let clients = Arc::new(CapnpDataNodeClients::new(
        rpc.clone(),
        ClientOptions::new(Role::ConfigNode, secrets.internal.clone())
            .with_tls(tls.as_ref().map(|t| t.client.clone())),
    ));
    let node = ConfigNode::new(
        consensus.clone() as Arc<dyn Consensus>,
        clients,
        runtime,
        config,
    )
    .map_err(|e| CliError::Node(format!("ConfigNode: {e}")))?;
    smol::block_on(async {
        // A single ConfigNode always leads: campaigning replays the stored log.
        let epoch = consensus
            .campaign()
            .await
            .map_err(|e| CliError::Node(format!("cannot take leadership: {e}")))?;
        node.start();
        let _metrics = start_metrics(
            settings.metrics_listen.as_deref(),
            &settings.data_dir,
            || MetricsSource::ConfigNode(node.clone()),
        )?;
        let api: Arc<dyn ConfigNodeApi> = Arc::new(ConfigNodeService::new(node.clone()));
        let server = rpc.serve(
            &settings.listen,
            &secrets.server,
            ServedApis::config_node(api),
            server_options(&settings.security, tls.as_ref()),
        )?;
        let addr = server.local_addr();
        write_listen_addr(&settings.data_dir, addr)?;
        tracing::info!(%addr, %epoch, data_dir = %settings.data_dir.display(), "ConfigNode listening");
        let snapshots = smol::spawn(snapshot_loop(consensus.clone()));
        // A poisoned log (a failed fsync) cannot be retried in place: step down and exit
        // non-zero, so a supervisor restarts the process and recovery runs from disk.
        let failed = async { Some(node.failed().await) };
        let stopped = async {
            let _ = stop.recv().await;
            None
        };
        let failure = failed.or(stopped).await;
        tracing::info!("ConfigNode shutting down");
        snapshots.cancel().await;
        server.shutdown().await;
        node.shutdown().await;
        match failure {
            Some(error) => Err(CliError::Node(format!(
                "ConfigNode stopped: its consensus log failed ({error}); restart it to recover"
            ))),
            None => Ok(()),
        }
    })
}

/// A node's server options: its connection limits and TLS.
fn server_options(security: &NodeSecurityArgs, tls: Option<&NodeTls>) -> ServerOptions {
    ServerOptions {
        connections: security.connection_limits(),
        tls: tls.map(|t| t.server.clone()),
        ..ServerOptions::default()
    }
}

/// Log entries applied since the last snapshot that trigger a new one.
const SNAPSHOT_EVERY_ENTRIES: u64 = 10_000;
/// How often the snapshot policy is checked.
const SNAPSHOT_CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Keeps the log bounded: every `SNAPSHOT_CHECK_INTERVAL`, snapshots the applied state (and
/// compacts the log) once `SNAPSHOT_EVERY_ENTRIES` entries were applied since the last one.
async fn snapshot_loop(consensus: Arc<LocalConsensus>) {
    let mut last = consensus.applied_index();
    loop {
        smol::Timer::after(SNAPSHOT_CHECK_INTERVAL).await;
        let applied = consensus.applied_index();
        if applied.saturating_sub(last) < SNAPSHOT_EVERY_ENTRIES {
            continue;
        }
        match consensus.take_snapshot().await {
            Ok(index) => {
                tracing::info!(index, "snapshot taken; log compacted");
                last = index;
            }
            Err(e) => tracing::warn!("snapshot failed (will retry): {e}"),
        }
    }
}

/// A DataNode process's settings.
#[derive(Debug, Clone)]
pub struct DataNodeSettings {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Address the ConfigNode reaches it at (`None`: the bound address).
    pub advertise: Option<String>,
    /// The ConfigNodes' addresses (one, or the members of a group: it follows the leader).
    pub confignode: Vec<String>,
    /// Secrets (the internal one required), TLS and connection limits.
    pub security: NodeSecurityArgs,
    /// Deletion rate limit, bytes/s.
    pub delete_rate: Option<u64>,
    /// Where to serve Prometheus metrics (`None`: nowhere).
    pub metrics_listen: Option<String>,
}

/// Runs a DataNode until `stop` yields: serves, then registers with the ConfigNode
/// (retrying until it answers) under the id stored in its data directory, if any. Fails if
/// the stores cannot open (a corrupt task journal is refused, never truncated) or once a
/// task-journal failure has halted the node; a restart reopens the journal.
pub fn run_datanode(
    settings: DataNodeSettings,
    stop: async_channel::Receiver<()>,
) -> Result<(), CliError> {
    ensure_dir(&settings.data_dir)?;
    let secrets = settings.security.datanode_secrets()?;
    let tls = settings.security.node_tls()?;
    if settings.metrics_listen.is_some() {
        crate::metrics::install_sink();
    }
    let runtime = smol_runtime();
    let stores = open_datanode_stores(
        &settings.data_dir,
        &StoreOptions {
            delete_rate: settings.delete_rate,
            clock: runtime.clock.clone(),
            ..StoreOptions::default()
        },
    )?;
    let rpc = RpcRuntime::start("datanode")?;
    smol::block_on(async {
        let node = DataNode::open(
            runtime,
            stores.regions,
            stores.journal,
            DataNodeConfig::default(),
        )
        .await
        .map_err(|e| CliError::Node(format!("DataNode cannot open: {e}")))?;
        // Copy tasks pull regions from other DataNodes over the same transport.
        node.set_peer_clients(Arc::new(CapnpDataNodeClients::new(
            rpc.clone(),
            ClientOptions::new(Role::DataNode, secrets.internal.clone())
                .with_tls(tls.as_ref().map(|t| t.client.clone())),
        )));
        let server = rpc.serve(
            &settings.listen,
            &secrets.server,
            ServedApis::data_node(Arc::new(node.clone())),
            server_options(&settings.security, tls.as_ref()),
        )?;
        let addr = server.local_addr();
        write_listen_addr(&settings.data_dir, addr)?;
        let _metrics = start_metrics(
            settings.metrics_listen.as_deref(),
            &settings.data_dir,
            || MetricsSource::DataNode(node.clone()),
        )?;
        let advertise = settings
            .advertise
            .clone()
            .unwrap_or_else(|| addr.to_string());
        tracing::info!(%addr, %advertise, data_dir = %settings.data_dir.display(), "DataNode listening");
        let confignode = ConfigNodes::new(
            &rpc,
            &settings.confignode,
            ClientOptions::new(Role::DataNode, secrets.internal.clone())
                .with_tls(tls.as_ref().map(|t| t.client.clone())),
        );
        let serve = async {
            let registered = register(&confignode, &settings.data_dir, advertise)
                .or(async {
                    let _ = stop.recv().await;
                    Ok(None)
                })
                .await?;
            if let Some(id) = registered {
                node.set_id(id);
                follow_leader(&confignode, id)
                    .or(async {
                        let _ = stop.recv().await;
                    })
                    .await;
            }
            Ok(())
        };
        // A journal failure halts the node (it answers Unreachable, which callers wait out):
        // exit non-zero so that a supervisor restarts it, reopening the journal.
        let failed = async {
            let error = node.wait_failed().await;
            Err(CliError::Node(format!("DataNode stopped: {error}")))
        };
        let outcome = failed.or(serve).await;
        tracing::info!("DataNode shutting down");
        server.shutdown().await;
        node.halt();
        outcome
    })
}

/// Registers (or re-registers under the stored id) until the ConfigNode answers; stores the
/// id. A refusal (e.g. wrong secret) is fatal; anything retryable is retried.
async fn register(
    confignode: &ConfigNodes,
    data_dir: &Path,
    advertise: String,
) -> Result<Option<DataNodeId>, CliError> {
    let id_path = data_dir.join(NODE_ID_FILE);
    let known_id = read_node_id(&id_path)?;
    let mut delay = Duration::from_millis(100);
    loop {
        match confignode
            .register_data_node(known_id, advertise.clone())
            .await
        {
            Ok(id) => {
                if known_id != Some(id) {
                    write_atomically(&id_path, &format!("{}\n", id.0))?;
                }
                tracing::info!(
                    data_node = %id,
                    %advertise,
                    confignode = confignode.current_address().unwrap_or_default(),
                    "registered with the ConfigNode"
                );
                return Ok(Some(id));
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(error = %e, "ConfigNode not answering yet; retrying");
                smol::Timer::after(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(CliError::Node(format!("registration refused: {e}"))),
        }
    }
}

/// How often a DataNode tells the ConfigNode leader it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// Heartbeats to whichever ConfigNode leads, following leader changes, forever. The leader
/// polls DataNodes itself (that is what marks one unknown); this heartbeat is how a DataNode
/// keeps track of who leads, and it logs each leader change it sees.
async fn follow_leader(confignode: &ConfigNodes, id: DataNodeId) {
    let mut known: Option<(String, u64)> = None;
    loop {
        let heartbeat = DataNodeHeartbeat {
            id,
            report: HeartbeatReport {
                regions: Vec::new(),
                running_tasks: Vec::new(),
            },
        };
        match confignode.data_node_heartbeat(heartbeat).await {
            Ok(epoch) => {
                let leader = confignode.current_address().unwrap_or_default();
                let now = Some((leader.clone(), epoch.0));
                if known != now {
                    tracing::info!(confignode = %leader, %epoch, "following the ConfigNode leader");
                    known = now;
                }
            }
            Err(e) => tracing::debug!(error = %e, "heartbeat to the ConfigNode leader failed"),
        }
        smol::Timer::after(HEARTBEAT_EVERY).await;
    }
}

/// The stored DataNode id, if this node registered before.
fn read_node_id(path: &Path) -> Result<Option<DataNodeId>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .map(|id| Some(DataNodeId(id)))
            .map_err(|_| {
                CliError::Config(format!("{} does not hold a DataNode id", path.display()))
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::io("cannot read", path, e)),
    }
}
