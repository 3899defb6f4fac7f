//! ConfigNode recovery at scale: a snapshot of 100,000 region groups x RF 3 plus 1,000,000
//! log entries after it, on the file stores. Prints how long the real `shoal confignode`
//! process takes from start to serving (its `listen.addr` written, after the log was
//! recovered and replayed), its peak RSS while recovering (VmHWM) against its RSS once
//! serving (VmRSS, 1 s later), and the same split in-process: log open (segment scan),
//! snapshot load + replay.
//!
//! Run: `cargo bench -p shoal-nodes --bench recovery`. `SHOAL_BENCH_GROUPS` (default 100000)
//! and `SHOAL_BENCH_ENTRIES` (default 1000000) size the state; `SHOAL_BENCH_ROUNDS` (default
//! 3) repeats the measurement; `SHOAL_BENCH_DIR` puts the data elsewhere (default
//! `target/bench-tmp/`; it takes about 400 MiB), where later runs reuse it; `SHOAL_BENCH_EXE`
//! times another `shoal` binary's process (e.g. one built from an earlier commit). Targets (issue 17): serving within 2 s;
//! peak RSS <= 2x steady state.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::consensus::LocalConsensus;
use shoal_core::model::{
    DataNodeId, DatabaseName, DatabaseSchema, ProcedureId, RegionId, RegionKind, RegionReplicaSet,
    ReplicationFactor,
};
use shoal_core::plan::{self, ConfigPlan};
use shoal_core::snapshot::{self, Snapshot};
use shoal_core::state::{Applied, ClusterState, NewProcedure, ProcedureStatus};
use shoal_core::storage::{LogStore, SnapshotStore};
use shoal_nodes::replay::ThreadedDecoder;
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
/// Groups per database (the admin API creates at most 4,096 at once).
const GROUPS_PER_DATABASE: u32 = 4_000;
/// Log entries per procedure: one submission, then updates, the last one finishing it.
const ENTRIES_PER_PROCEDURE: u64 = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn apply(state: &mut ClusterState, plan: &ConfigPlan) -> Applied {
    match state.apply(plan) {
        Ok(applied) => applied,
        Err(rejected) => panic!("generated plan rejected: {rejected:?}"),
    }
}

/// The state after registering 3 DataNodes and publishing `groups` data groups x RF 3.
fn big_state(groups: u32) -> ClusterState {
    let mut state = ClusterState::default();
    for i in 1..=3 {
        apply(
            &mut state,
            &ConfigPlan::RegisterDataNode(plan::RegisterDataNode {
                known_id: None,
                address: format!("127.0.0.1:{}", 7070 + i),
            }),
        );
    }
    let nodes: Vec<DataNodeId> = state.data_nodes.keys().copied().collect();
    let rf = ReplicationFactor::new(3).expect("rf");
    let mut left = groups;
    let mut db = 0;
    while left > 0 {
        let count = left.min(GROUPS_PER_DATABASE);
        left -= count;
        let name = DatabaseName::new(format!("db{db}")).expect("name");
        db += 1;
        apply(
            &mut state,
            &ConfigPlan::CreateDatabase(plan::CreateDatabase {
                schema: DatabaseSchema {
                    name: name.clone(),
                    schema_replication_factor: rf,
                    data_replication_factor: rf,
                },
                created_by: None,
            }),
        );
        let first = state.next_region_id;
        apply(
            &mut state,
            &ConfigPlan::ReserveRegionIds(plan::ReserveRegionIds {
                kind: RegionKind::Data,
                count,
                for_procedure: None,
            }),
        );
        let sets: Vec<RegionReplicaSet> = (first..first + count)
            .map(|id| RegionReplicaSet::new(RegionId::new(RegionKind::Data, id), nodes.clone()))
            .collect();
        apply(
            &mut state,
            &ConfigPlan::RecordReplicaFootprints(plan::RecordReplicaFootprints {
                database: name.clone(),
                groups: sets.clone(),
            }),
        );
        apply(
            &mut state,
            &ConfigPlan::CreateRegionGroups(plan::CreateRegionGroups {
                database: name,
                groups: sets,
            }),
        );
    }
    state
}

/// Procedure data of removal-like size (a region, a replica set, task ids, a deleted set).
fn procedure_data(seed: u64) -> Vec<u8> {
    (0..120u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect()
}

/// The next plan of the log's workload: procedures submitted, updated step by step, and
/// finished, `ENTRIES_PER_PROCEDURE` entries each (as removals' steps are).
fn workload_plan(state: &ClusterState, current: Option<ProcedureId>, n: u64) -> ConfigPlan {
    let step = n % ENTRIES_PER_PROCEDURE;
    if step == 0 {
        return ConfigPlan::SubmitProcedure(plan::SubmitProcedure {
            procedure: NewProcedure {
                type_code: 101,
                type_name: "RemoveRegionGroup".into(),
                state_code: 2,
                state_name: "DropQueuedCreates".into(),
                data: procedure_data(n),
                lock_keys: Vec::new(),
                submitted_at_ms: n,
                submitted_unix_ms: 1_795_000_000_000 + n,
            },
            request_key: None,
        });
    }
    let id = current.expect("a procedure was submitted");
    let mut record = state.procedures.get(&id).expect("submitted").clone();
    let expect = record.version;
    record.state_code = 3;
    record.state_name = "DeleteReplicas".into();
    record.data = procedure_data(n);
    record.updated_at_ms = n;
    record.updated_unix_ms = 1_795_000_000_000 + n;
    if step == ENTRIES_PER_PROCEDURE - 1 {
        record.status = ProcedureStatus::Succeeded;
        record.state_name = "DropMetadata".into();
    }
    ConfigPlan::UpdateProcedure(plan::UpdateProcedure {
        record,
        spawn: Vec::new(),
        expect_version: Some(expect),
    })
}

/// Writes the ConfigNode stores of `dir`: the snapshot of `groups` groups, then `entries`
/// log entries after it.
fn generate(dir: &Path, groups: u32, entries: u64) {
    let started = Instant::now();
    let cn = dir.join("confignode");
    let mut state = big_state(groups);
    let last_index = 1_000;
    let snap = snapshot::encode(&Snapshot {
        last_index,
        last_term: 1,
        state: state.clone(),
    })
    .expect("encode snapshot");
    let snap_len = snap.len();
    let snapshots = FsSnapshotStore::open(cn.join("snapshots"), 3).expect("snapshots");
    smol::block_on(snapshots.save(last_index, snap)).expect("save snapshot");
    let log = FsLogStore::open(cn.join("log"), LogOptions::default()).expect("log");
    smol::block_on(async {
        log.claim_term(1).await.expect("term");
        log.compact(last_index)
            .await
            .expect("start the log after the snapshot");
    });
    let mut bytes = 0usize;
    let mut current = None;
    for n in 0..entries {
        let plan = workload_plan(&state, current, n);
        if let Applied::ProcedureSubmitted { id, .. } = apply(&mut state, &plan) {
            current = Some(id);
        }
        let payload = plan.encode().expect("encode plan");
        bytes += payload.len();
        log.append(1, &payload).expect("append");
        if n % 50_000 == 49_999 {
            log.sync_blocking(log.last_index()).expect("sync");
        }
    }
    log.sync_blocking(log.last_index()).expect("sync");
    println!(
        "generated in {:.1} s: snapshot {:.1} MiB ({groups} groups x RF 3), {entries} log entries ({:.1} MiB of payload)",
        started.elapsed().as_secs_f64(),
        snap_len as f64 / (1 << 20) as f64,
        bytes as f64 / (1 << 20) as f64
    );
}

/// VmHWM and VmRSS of `pid` in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// One start of the real ConfigNode on `dir`: (time to serving, peak RSS, RSS once serving).
fn process_recovery(dir: &Path) -> (Duration, f64, f64) {
    let addr_file = dir.join("listen.addr");
    let _ = std::fs::remove_file(&addr_file);
    let log = std::fs::File::create(dir.join("confignode.log")).expect("log file");
    let started = Instant::now();
    let exe = std::env::var("SHOAL_BENCH_EXE").unwrap_or_else(|_| EXE.to_string());
    let mut child = Command::new(exe)
        .args(["confignode", "--data-dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn confignode");
    let pid = child.id();
    let serving = loop {
        if addr_file.exists() {
            break started.elapsed();
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "confignode exited: {status}; see {}",
                dir.join("confignode.log").display()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(300), "no recovery");
        std::thread::sleep(Duration::from_millis(2));
    };
    let (peak_at_serving, _) = memory_mib(pid).expect("status");
    std::thread::sleep(Duration::from_secs(1));
    let (peak, steady) = memory_mib(pid).expect("status");
    let _ = child.kill();
    let _ = child.wait();
    (serving, peak_at_serving.max(peak), steady)
}

/// The in-process split, run in a child process of this bench (so its RSS is its own):
/// prints `log_open_ms replay_ms peak_mib steady_mib`.
fn in_process_child(dir: &Path) {
    let cn = dir.join("confignode");
    let started = Instant::now();
    let log = FsLogStore::open(cn.join("log"), LogOptions::default()).expect("log");
    let opened = started.elapsed();
    let (peak_after_open, _) = memory_mib(std::process::id()).expect("status");
    let snapshots = FsSnapshotStore::open(cn.join("snapshots"), 3).expect("snapshots");
    // As the `shoal confignode` process replays: batches decoded on every core.
    let consensus = LocalConsensus::new(Arc::new(log), Arc::new(snapshots))
        .with_replay_decoder(Arc::new(ThreadedDecoder::per_core()));
    let started = Instant::now();
    smol::block_on(consensus.campaign()).expect("campaign");
    let replayed = started.elapsed();
    let (peak, steady) = memory_mib(std::process::id()).expect("status");
    println!(
        "{} {} {peak_after_open} {peak} {steady}",
        opened.as_secs_f64() * 1e3,
        replayed.as_secs_f64() * 1e3
    );
}

fn bench_dir(groups: u32, entries: u64) -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
        .join(format!("recovery-{groups}g-{entries}e"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--test" || a == "--list") {
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--in-process") {
        return in_process_child(Path::new(&args[pos + 1]));
    }
    let groups = u32::try_from(env_u64("SHOAL_BENCH_GROUPS", 100_000)).expect("groups");
    let entries = env_u64("SHOAL_BENCH_ENTRIES", 1_000_000);
    let rounds = env_u64("SHOAL_BENCH_ROUNDS", 3).max(1);
    let dir = bench_dir(groups, entries);
    let marker = dir.join("generated");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        generate(&dir, groups, entries);
        std::fs::write(&marker, b"").expect("marker");
    }
    println!(
        "recovery: {groups} groups x RF 3, {entries} log entries after the snapshot, {rounds} rounds, dir {}",
        dir.display()
    );
    println!(
        "round  process: serving   peak RSS  steady RSS | in-process: log open  replay  peak after open  peak  steady"
    );
    let mut rows = Vec::new();
    for round in 0..rounds {
        let (serving, peak, steady) = process_recovery(&dir);
        let out = Command::new(std::env::current_exe().expect("exe"))
            .arg("--in-process")
            .arg(&dir)
            .output()
            .expect("in-process child");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let figures: Vec<f64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(|f| f.parse().expect("figure"))
            .collect();
        println!(
            "{round:>5} {:>16.0} ms {:>7.0} MiB {:>7.0} MiB | {:>19.0} ms {:>5.0} ms {:>12.0} MiB {:>5.0} MiB {:>5.0} MiB",
            serving.as_secs_f64() * 1e3,
            peak,
            steady,
            figures[0],
            figures[1],
            figures[2],
            figures[3],
            figures[4]
        );
        rows.push((serving.as_secs_f64(), peak, steady, figures));
    }
    let serving = median(rows.iter().map(|r| r.0).collect());
    let ratio = median(rows.iter().map(|r| r.1 / r.2).collect());
    let verdict = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    println!(
        "median time to serving      : {:>8.0} ms (target <= 2000 ms) {}",
        serving * 1e3,
        verdict(serving <= 2.0)
    );
    println!(
        "median peak / steady RSS    : {ratio:>8.2}x (target <= 2x) {}",
        verdict(ratio <= 2.0)
    );
    println!(
        "median log open / replay    : {:>8.0} ms / {:.0} ms (in-process)",
        median(rows.iter().map(|r| r.3[0]).collect()),
        median(rows.iter().map(|r| r.3[1]).collect())
    );
}
