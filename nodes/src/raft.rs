//! A ConfigNode in a replicated group (Raft, shoal-consensus-raft over Cap'n Proto).
//!
//! A data directory becomes a group member's once `DATA_DIR/confignode/raft/node.id` exists;
//! from then on it always runs replicated (never as a single node over a stale log). How the
//! member first gets its id and state:
//! - `--peers A,B,C` (every first member gets the same list): the id is the 1-based position
//!   of this node's address (`--advertise`, else `--listen`) in the list. The first peer
//!   bootstraps the group (if its data directory holds a single ConfigNode's state, it imports
//!   it: see [`import_single_node`]); the others start empty and receive everything from it.
//! - `--join SEED[,SEED...]`: the id is one above the highest member id the group reports;
//!   the node starts empty and asks the leader to add it (learner, catch-up, then voter).
//! - a restart: the id from the file; `--peers`/`--join` only repeat what is already done.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_lite::FutureExt;
use shoal_consensus_raft::{
    ConfigNodeGroupApi, RaftConfig, RaftConsensus, RaftConsensusError, RaftStores, seed_group,
};
use shoal_core::api::ConfigNodeApi;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_transport_capnp::{
    CapnpRaftTransport, ClientOptions, RaftCallOptions, RpcRuntime, ServedApis, ServerOptions,
    ServerSecrets,
};

use crate::clients::CapnpDataNodeClients;
use crate::error::CliError;
use crate::follow::ConfigNodes;
use crate::process::{write_atomically, write_listen_addr};
use crate::replay::ThreadedDecoder;
use crate::service::{ConfigNodeService, LeaderHint};
use crate::storage::{
    StoreOptions, has_single_node_state, open_confignode_stores, open_raft_stores,
};

/// The group's directory under `DATA_DIR/confignode`.
pub const RAFT_DIR: &str = "raft";
/// The member's node id, inside [`RAFT_DIR`].
pub const RAFT_NODE_ID_FILE: &str = "node.id";

/// How a ConfigNode takes part in a group, from its flags.
#[derive(Debug, Clone, Default)]
pub struct GroupFlags {
    /// `--peers`: the first members' addresses, the same list on each.
    pub peers: Vec<String>,
    /// `--join`: addresses of members of the group to join.
    pub join: Vec<String>,
    /// `--advertise`: the address peers and clients reach this node at (default: listen).
    pub advertise: Option<String>,
    /// Raft timing (heartbeat, election timeout range); `None`: the defaults.
    pub timing: Option<RaftTiming>,
}

/// Raft timing knobs of a ConfigNode process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in this range campaigns.
    pub election_timeout: (Duration, Duration),
}

impl RaftTiming {
    /// Parses `HEARTBEAT_MS:MIN_MS-MAX_MS` (e.g. `50:250-500`).
    pub fn parse(text: &str) -> Result<Self, CliError> {
        let bad = || {
            CliError::Config(format!(
                "raft timing {text:?} is not HEARTBEAT_MS:MIN_MS-MAX_MS (e.g. 50:250-500)"
            ))
        };
        let (heartbeat, range) = text.split_once(':').ok_or_else(bad)?;
        let (min, max) = range.split_once('-').ok_or_else(bad)?;
        let ms = |t: &str| t.trim().parse::<u64>().map_err(|_| bad());
        let (heartbeat, min, max) = (ms(heartbeat)?, ms(min)?, ms(max)?);
        if heartbeat == 0 || min <= heartbeat || max <= min {
            return Err(CliError::Config(format!(
                "raft timing {text:?}: needs 0 < heartbeat < min < max"
            )));
        }
        Ok(Self {
            heartbeat: Duration::from_millis(heartbeat),
            election_timeout: (Duration::from_millis(min), Duration::from_millis(max)),
        })
    }
}

/// The group's directory of the ConfigNode at `data_dir`.
pub fn raft_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("confignode").join(RAFT_DIR)
}

/// Whether the ConfigNode at `data_dir` runs in a group: its data directory is a member's
/// already, or the flags ask for one.
pub fn runs_replicated(data_dir: &Path, flags: &GroupFlags) -> bool {
    raft_dir(data_dir).join(RAFT_NODE_ID_FILE).exists()
        || !flags.peers.is_empty()
        || !flags.join.is_empty()
}

fn read_node_id(path: &Path) -> Result<Option<u64>, CliError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            text.trim().parse().map(Some).map_err(|_| {
                CliError::Config(format!("{} does not hold a node id", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(CliError::io("cannot read", path, e)),
    }
}

/// Makes `dir` a member's directory holding `id`, atomically: prepared under a temporary
/// name (by `prepare`, given it and its stores) and renamed into place, so a crash leaves
/// either no member directory or a whole one.
fn create_member_dir(
    dir: &Path,
    id: u64,
    prepare: impl FnOnce(&Path, &RaftStores) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let tmp = dir.with_extension("creating");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| CliError::io("cannot remove", &tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| CliError::io("cannot create", &tmp, e))?;
    {
        let stores = open_raft_stores(&tmp)?;
        prepare(&tmp, &stores)?;
    }
    write_atomically(&tmp.join(RAFT_NODE_ID_FILE), &format!("{id}\n"))?;
    std::fs::rename(&tmp, dir).map_err(|e| CliError::io("cannot rename into", dir, e))?;
    if let Some(parent) = dir.parent()
        && let Ok(handle) = std::fs::File::open(parent)
    {
        let _ = handle.sync_all();
    }
    Ok(())
}

/// The first members of a `--peers` group: id (1-based position) → address.
pub fn peer_members(peers: &[String]) -> BTreeMap<u64, String> {
    (1u64..).zip(peers.iter().cloned()).collect()
}

/// Reads the single-node state at `data_dir` (its snapshot and log, replayed) and seeds the
/// new group's first member with it, epoch floor at the old node's last epoch; then moves
/// the old log and snapshots aside (`confignode/imported-single-node/`), so that nothing ever
/// starts a single ConfigNode over them again.
pub fn import_single_node(
    data_dir: &Path,
    stores: &RaftStores,
    members: &BTreeMap<u64, String>,
) -> Result<(), CliError> {
    let old = open_confignode_stores(data_dir, &StoreOptions::default())?;
    let epoch = old.log.current_term();
    let local = LocalConsensus::new(old.log.clone(), old.snapshots.clone())
        .with_replay_decoder(Arc::new(ThreadedDecoder::per_core()));
    let state = smol::block_on(async {
        local
            .load()
            .await
            .map_err(|e| CliError::Node(format!("cannot read the single-node log: {e}")))?;
        Ok::<_, CliError>(local.state().snapshot())
    })?;
    tracing::warn!(
        applied = local.applied_index(),
        epoch,
        databases = state.databases.len(),
        procedures = state.procedures.len(),
        "importing this data directory's single-node ConfigNode state into the new group"
    );
    smol::block_on(seed_group(stores, members, &state, epoch))
        .map_err(|e| CliError::Node(format!("cannot seed the group: {e}")))
}

/// Moves a single ConfigNode's log and snapshots out of the way once they were imported.
fn set_imported_aside(data_dir: &Path) {
    let cn = data_dir.join("confignode");
    let aside = cn.join("imported-single-node");
    for name in ["log", "snapshots"] {
        let from = cn.join(name);
        if from.exists() {
            let moved = std::fs::create_dir_all(&aside)
                .and_then(|()| std::fs::rename(&from, aside.join(name)));
            if let Err(e) = moved {
                tracing::warn!(path = %from.display(), error = %e, "could not move the imported single-node files aside");
            }
        }
    }
}

/// What a member does once it runs.
enum Then {
    /// Nothing: it is (or will be made) a member by others.
    Nothing,
    /// Bootstraps the group with these first members (refused harmlessly once initialized).
    Bootstrap(BTreeMap<u64, String>),
    /// Asks the group at these addresses to add it.
    Join(Vec<String>),
}

/// Sets up this member's directory (see the module docs); returns its id and what to do once
/// it runs.
fn prepare(
    data_dir: &Path,
    flags: &GroupFlags,
    advertise: &str,
    rpc: &RpcRuntime,
    client: &ClientOptions,
) -> Result<(u64, Then), CliError> {
    let dir = raft_dir(data_dir);
    let id_path = dir.join(RAFT_NODE_ID_FILE);
    if let Some(id) = read_node_id(&id_path)? {
        let then = if !flags.join.is_empty() {
            Then::Join(flags.join.clone())
        } else if id == 1 && !flags.peers.is_empty() {
            Then::Bootstrap(peer_members(&flags.peers))
        } else {
            Then::Nothing
        };
        return Ok((id, then));
    }
    let imported = has_single_node_state(data_dir)?;
    if !flags.peers.is_empty() {
        let position = flags
            .peers
            .iter()
            .position(|p| p == advertise)
            .ok_or_else(|| {
                CliError::Config(format!(
                    "this ConfigNode's address {advertise} is not among --peers {} (set --advertise)",
                    flags.peers.join(",")
                ))
            })?;
        let id = position as u64 + 1;
        let members = peer_members(&flags.peers);
        if id == 1 && imported {
            create_member_dir(&dir, id, |_, stores| {
                import_single_node(data_dir, stores, &members)
            })?;
            set_imported_aside(data_dir);
            return Ok((id, Then::Nothing));
        }
        if imported {
            return Err(CliError::Config(format!(
                "{} holds a single ConfigNode's state; only the first of --peers imports one \
                 (list this node first, or start it on an empty data directory)",
                data_dir.display()
            )));
        }
        create_member_dir(&dir, id, |_, _| Ok(()))?;
        let then = if id == 1 {
            Then::Bootstrap(members)
        } else {
            Then::Nothing
        };
        return Ok((id, then));
    }
    if imported {
        return Err(CliError::Config(format!(
            "{} holds a single ConfigNode's state: a group is made from it with --peers (this \
             node first), not joined",
            data_dir.display()
        )));
    }
    // --join: one id above every member the group knows.
    let seeds = ConfigNodes::new(rpc, &flags.join, client.clone());
    let status = smol::block_on(seeds.group().status()).map_err(|e| {
        CliError::Node(format!(
            "cannot read the group at {}: {e}",
            flags.join.join(",")
        ))
    })?;
    if let Some(member) = status.members.iter().find(|m| m.address == advertise) {
        return Err(CliError::Config(format!(
            "{advertise} is already member {} of the group; remove it first (`shoal confignode \
             remove {}`) to join again with an empty data directory",
            member.id, member.id
        )));
    }
    let id = status.members.iter().map(|m| m.id).max().unwrap_or(0) + 1;
    create_member_dir(&dir, id, |_, _| Ok(()))?;
    Ok((id, Then::Join(flags.join.clone())))
}

/// Asks the group at `seeds` to add this member, following the leader and retrying what a
/// retry may fix, until it is a voter. A refusal (e.g. a change that would lose quorum) is
/// returned.
async fn join(
    consensus: &RaftConsensus,
    seeds: ConfigNodes,
    id: u64,
    advertise: String,
) -> Result<(), CliError> {
    let mut delay = Duration::from_millis(200);
    loop {
        if consensus.voters().contains(&id) {
            return Ok(());
        }
        match seeds.group().add_member(id, advertise.clone()).await {
            Ok(()) => {
                tracing::info!(node = id, "joined the ConfigNode group");
                return Ok(());
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(error = %e, "not added to the group yet; retrying");
                smol::Timer::after(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(CliError::Node(format!(
                    "the group at {} refused to add this ConfigNode: {e}",
                    seeds.describe()
                )));
            }
        }
    }
}

/// The leader's address as `consensus` knows it, for followers' `NotLeader` answers (never
/// this node itself).
fn leader_hint(consensus: Arc<RaftConsensus>) -> LeaderHint {
    Arc::new(move || {
        consensus
            .leader_hint()
            .filter(|h| h.id != consensus.id() && !h.addr.is_empty())
            .map(|h| h.addr)
    })
}

/// How a group member talks on the wire: as a client of its peers and DataNodes (the
/// ConfigNode role, the internal secret, TLS), and as a server.
pub struct MemberWire {
    /// Options of its outgoing connections (peers, DataNodes).
    pub client: ClientOptions,
    /// The secrets its server checks.
    pub secrets: ServerSecrets,
    /// Its server's connection limits and TLS.
    pub server: ServerOptions,
}

/// Runs a member of a replicated group until `stop` yields or its consensus fails; see the
/// module docs. Its address is part of the group's membership, so it must be a real one:
/// `--advertise`, or a `--listen` address with a fixed port.
pub fn run_member(
    data_dir: &Path,
    listen: &str,
    flags: &GroupFlags,
    wire: MemberWire,
    config: ConfigNodeConfig,
    metrics_listen: Option<&str>,
    stop: async_channel::Receiver<()>,
) -> Result<(), CliError> {
    if metrics_listen.is_some() {
        crate::metrics::install_sink();
    }
    let rpc = RpcRuntime::start("confignode")?;
    let client = wire.client;
    let advertise = flags
        .advertise
        .clone()
        .unwrap_or_else(|| listen.to_string());
    if advertise.ends_with(":0") {
        return Err(CliError::Config(format!(
            "a ConfigNode in a group needs a fixed address (got {advertise}): give --listen a \
             port, or set --advertise"
        )));
    }
    let (id, then) = prepare(data_dir, flags, &advertise, &rpc, &client)?;
    let stores = open_raft_stores(&raft_dir(data_dir))?;
    let mut raft_config = RaftConfig::default();
    if let Some(timing) = flags.timing {
        raft_config.heartbeat_interval = timing.heartbeat;
        raft_config.election_timeout = timing.election_timeout;
    }
    let transport = CapnpRaftTransport::new(&rpc, id, client.clone(), RaftCallOptions::default());
    let runtime = shoal_runtime_smol::smol_runtime();
    smol::block_on(async {
        let consensus = Arc::new(
            RaftConsensus::start(id, raft_config, stores, Arc::new(transport))
                .await
                .map_err(|e| CliError::Node(format!("cannot start Raft: {e}")))?,
        );
        let clients = Arc::new(CapnpDataNodeClients::new(rpc.clone(), client.clone()));
        let node = ConfigNode::new(
            consensus.clone() as Arc<dyn Consensus>,
            clients,
            runtime,
            config,
        )
        .map_err(|e| CliError::Node(format!("ConfigNode: {e}")))?;
        node.start();
        let _metrics = crate::process::start_metrics(metrics_listen, data_dir, || {
            crate::metrics::MetricsSource::ConfigNode(node.clone())
        })?;
        let api: Arc<dyn ConfigNodeApi> = Arc::new(ConfigNodeService::replicated(
            node.clone(),
            leader_hint(consensus.clone()),
        ));
        let apis = ServedApis {
            config_node: Some(api),
            raft: Some(consensus.server()),
            group: Some(consensus.clone() as Arc<dyn ConfigNodeGroupApi>),
            ..ServedApis::default()
        };
        let server = rpc.serve(listen, &wire.secrets, apis, wire.server)?;
        let addr = server.local_addr();
        write_listen_addr(data_dir, addr)?;
        tracing::info!(%addr, %advertise, node = id, data_dir = %data_dir.display(), "ConfigNode (replicated) listening");
        let joining = match then {
            Then::Nothing => None,
            Then::Bootstrap(members) => {
                match consensus.bootstrap(members).await {
                    Ok(()) => tracing::info!("bootstrapped the ConfigNode group"),
                    Err(RaftConsensusError::AlreadyInitialized) => {}
                    Err(e) => {
                        return Err(CliError::Node(format!("cannot bootstrap the group: {e}")));
                    }
                }
                None
            }
            Then::Join(seeds) => Some(ConfigNodes::new(&rpc, &seeds, client.clone())),
        };
        let joined = async {
            if let Some(seeds) = joining {
                join(&consensus, seeds, id, advertise.clone()).await?;
            }
            std::future::pending::<Result<Option<String>, CliError>>().await
        };
        // A fatal consensus failure (a poisoned log): exit non-zero so a supervisor restarts
        // the process and recovery runs from disk.
        let failed = async { Ok(Some(node.failed().await.to_string())) };
        let stopped = async {
            let _ = stop.recv().await;
            Ok(None)
        };
        let outcome = failed.or(stopped).or(joined).await;
        tracing::info!("ConfigNode shutting down");
        server.shutdown().await;
        node.shutdown().await;
        consensus.shutdown().await;
        match outcome? {
            Some(error) => Err(CliError::Node(format!(
                "ConfigNode stopped: its consensus failed ({error}); restart it to recover"
            ))),
            None => Ok(()),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_timing_parses_and_refuses_nonsense() {
        let t = RaftTiming::parse("50:300-600").expect("parse");
        assert_eq!(t.heartbeat, Duration::from_millis(50));
        assert_eq!(
            t.election_timeout,
            (Duration::from_millis(300), Duration::from_millis(600))
        );
        for bad in [
            "",
            "50",
            "50:300",
            "300:50-600",
            "50:600-300",
            "x:1-2",
            "0:1-2",
        ] {
            assert!(RaftTiming::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peers_get_ids_by_position() {
        let members = peer_members(&["a:1".into(), "b:1".into(), "c:1".into()]);
        assert_eq!(members.get(&1).map(String::as_str), Some("a:1"));
        assert_eq!(members.get(&3).map(String::as_str), Some("c:1"));
    }
}
