//! Committed plans per second: a 3-node Raft group on disk (storage-fs), over the in-process
//! network and over Cap'n Proto on loopback TCP (what ConfigNode processes use), next to the
//! single-node `LocalConsensus` over `FsLogStore`, with 1 and 64 concurrent proposers, in the
//! same run. Target: Raft at 64 proposers >= 0.5x single-node.
//!
//! Run: `cargo bench -p shoal-consensus-raft`. Set `SHOAL_BENCH_DIR` to bench another disk
//! (default: a temp dir under `target/`). Every case runs once per round, rounds are
//! interleaved (the disk and cores are shared), and the report is the median over rounds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_consensus_raft::{InprocRaftNetwork, RaftConfig, RaftConsensus, RaftStores};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::model::Epoch;
use shoal_core::plan::{ConfigPlan, RegisterDataNode};
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};

/// Length of one measurement.
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Rounds of all cases (odd, so the median is one round's value).
const ROUNDS: usize = 3;

fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

fn plan(proposer: usize, n: u64) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: format!("dn-{proposer}-{n}:7000"),
    })
}

/// `proposers` tasks propose back to back for `RUN_FOR`; returns committed plans per second.
async fn drive(consensus: Arc<dyn Consensus>, epoch: Epoch, proposers: usize) -> f64 {
    let committed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + RUN_FOR;
    let tasks: Vec<_> = (0..proposers)
        .map(|p| {
            let consensus = consensus.clone();
            let committed = committed.clone();
            smol::spawn(async move {
                let mut n = 0;
                while Instant::now() < deadline {
                    match consensus.propose(epoch, plan(p, n)).await {
                        Ok(_) => {
                            committed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => panic!("proposal failed: {e}"),
                    }
                    n += 1;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
    committed.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn fresh_dir(name: &str) -> PathBuf {
    let dir = bench_root().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// The single-node log with storage-fs's default options, or with its flush linger and commit
/// delay off (`no_linger`): on a shared 2-core machine the linger's spin can cost a lone
/// proposer more than it saves, so both are shown.
fn local_rate(proposers: usize, no_linger: bool) -> f64 {
    let dir = fresh_dir("local");
    let options = if no_linger {
        LogOptions {
            flush_linger: Duration::ZERO,
            commit_delay: Duration::ZERO,
            ..LogOptions::default()
        }
    } else {
        LogOptions::default()
    };
    let rate = smol::block_on(async {
        let log = Arc::new(FsLogStore::open(dir.join("log"), options).expect("log"));
        let snapshots =
            Arc::new(FsSnapshotStore::open(dir.join("snapshots"), 2).expect("snapshots"));
        let consensus = Arc::new(LocalConsensus::new(log, snapshots));
        let epoch = consensus.campaign().await.expect("campaign");
        drive(consensus, epoch, proposers).await
    });
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn raft_rate(proposers: usize) -> f64 {
    let dir = fresh_dir("raft");
    let rate = smol::block_on(async {
        let net = InprocRaftNetwork::new(Duration::from_secs(2));
        let config = RaftConfig {
            snapshot_every: 1_000_000,
            ..RaftConfig::default()
        };
        let mut nodes = BTreeMap::new();
        for id in 1..=3u64 {
            let stores = RaftStores::open_fs(dir.join(format!("node{id}")), LogOptions::default())
                .expect("stores");
            let node = RaftConsensus::start(id, config.clone(), stores, net.transport(id))
                .await
                .expect("start");
            net.host(id, node.server());
            nodes.insert(id, Arc::new(node));
        }
        let members = (1..=3u64).map(|id| (id, format!("cn{id}:7100"))).collect();
        nodes[&1].bootstrap(members).await.expect("bootstrap");
        let (leader, epoch) = loop {
            if let Some((id, l)) = nodes
                .iter()
                .map(|(id, n)| (*id, n.leadership().get()))
                .find(|(_, l)| l.is_leader)
            {
                break (id, l.epoch);
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        };
        let rate = drive(nodes[&leader].clone(), epoch, proposers).await;
        for node in nodes.values() {
            node.shutdown().await;
        }
        rate
    });
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// The same group over Cap'n Proto: each node on its own RPC thread, serving Raft on a
/// loopback port, as `shoal confignode --peers` runs it.
fn raft_capnp_rate(proposers: usize) -> f64 {
    use shoal_transport_capnp::{
        CapnpRaftTransport, ClientOptions, RaftCallOptions, RpcRuntime, ServedApis, ServerOptions,
    };
    const SECRET: &str = "bench";
    let dir = fresh_dir("raft-capnp");
    let rate = smol::block_on(async {
        let config = RaftConfig {
            snapshot_every: 1_000_000,
            ..RaftConfig::default()
        };
        let addrs: BTreeMap<u64, String> = (1..=3u64)
            .map(|id| {
                let port = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("port")
                    .port();
                (id, format!("127.0.0.1:{port}"))
            })
            .collect();
        let mut nodes = BTreeMap::new();
        let mut servers = Vec::new();
        for (id, addr) in &addrs {
            let rpc = RpcRuntime::start(&format!("bench-{id}")).expect("rpc");
            let transport = CapnpRaftTransport::new(
                &rpc,
                *id,
                ClientOptions::new(shoal_transport_capnp::Role::ConfigNode, SECRET),
                RaftCallOptions::default(),
            );
            let stores = RaftStores::open_fs(dir.join(format!("node{id}")), LogOptions::default())
                .expect("stores");
            let node = RaftConsensus::start(*id, config.clone(), stores, Arc::new(transport))
                .await
                .expect("start");
            let apis = ServedApis {
                raft: Some(node.server()),
                ..ServedApis::default()
            };
            servers.push(
                rpc.serve(addr, SECRET, apis, ServerOptions::default())
                    .expect("serve"),
            );
            nodes.insert(*id, Arc::new(node));
        }
        nodes[&1].bootstrap(addrs.clone()).await.expect("bootstrap");
        let (leader, epoch) = loop {
            if let Some((id, l)) = nodes
                .iter()
                .map(|(id, n)| (*id, n.leadership().get()))
                .find(|(_, l)| l.is_leader)
            {
                break (id, l.epoch);
            }
            smol::Timer::after(Duration::from_millis(10)).await;
        };
        let rate = drive(nodes[&leader].clone(), epoch, proposers).await;
        for node in nodes.values() {
            node.shutdown().await;
        }
        for server in servers {
            server.shutdown().await;
        }
        rate
    });
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() {
    let cases = [1usize, 64];
    let mut local: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut local_nl: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut raft: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut wire: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut ratios: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut wire_ratios: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        for &p in &cases {
            let l = local_rate(p, false);
            let nl = local_rate(p, true);
            let r = raft_rate(p);
            let w = raft_capnp_rate(p);
            eprintln!(
                "round {round}: {p:>2} proposers  local {l:>8.0}/s  local(no linger) {nl:>8.0}/s  raft {r:>8.0}/s  raft(capnp) {w:>8.0}/s"
            );
            local.entry(p).or_default().push(l);
            local_nl.entry(p).or_default().push(nl);
            raft.entry(p).or_default().push(r);
            wire.entry(p).or_default().push(w);
            ratios.entry(p).or_default().push(r / l);
            wire_ratios.entry(p).or_default().push(w / l);
        }
    }
    println!("committed plans/s (median of {ROUNDS} rounds, {RUN_FOR:?} each)");
    println!(
        "proposers  local(FsLogStore)  local(no linger)  raft(3, in-proc)  raft(3, capnp TCP)  in-proc/local  capnp/local"
    );
    for &p in &cases {
        println!(
            "{p:>9}  {:>17.0}  {:>16.0}  {:>16.0}  {:>18.0}  {:>13.2}  {:>11.2}",
            median(local[&p].clone()),
            median(local_nl[&p].clone()),
            median(raft[&p].clone()),
            median(wire[&p].clone()),
            median(ratios[&p].clone()),
            median(wire_ratios[&p].clone())
        );
    }
}
