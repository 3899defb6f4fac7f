//! Failover of a replicated ConfigNode, with real processes: a group of 3 ConfigNodes and
//! 3 DataNodes (`shoal` child processes on 127.0.0.1, file storage). Each round SIGKILLs the
//! leader, then at once submits a procedure (a one-group database creation) to the group —
//! the client follows the new leader — and polls it until its first step is committed: the
//! failover time is SIGKILL → that step committed by the new leader, as the client sees it
//! (polled every 5 ms). The killed member is restarted and the group settles before the next
//! round.
//!
//! Run: `cargo bench -p shoal-nodes --bench failover` (release; about a minute).
//! `SHOAL_FAILOVER_KILLS` (default 24) sets the number of kills, `SHOAL_RAFT_TIMING`
//! (default `50:250-500`, the production default) the Raft timing
//! `HEARTBEAT_MS:MIN_MS-MAX_MS`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_consensus_raft::ConfigNodeGroupApi;
use shoal_core::api::{ApiError, ConfigNodeApi, CreateDatabaseRequest};
use shoal_core::model::{DatabaseName, ProcedureId, ReplicationFactor};
use shoal_nodes::follow::ConfigNodes;
use shoal_transport_capnp::{ClientOptions, Role, RpcRuntime};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
const POLL: Duration = Duration::from_millis(5);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

fn spawn(dir: &Path, args: &[String], log: &Path) -> Proc {
    std::fs::create_dir_all(dir).expect("dir");
    let _ = std::fs::remove_file(dir.join("listen.addr"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let child = Command::new(EXE)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn shoal");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("listen.addr").exists() {
        assert!(Instant::now() < deadline, "{} did not start", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

struct Group {
    root: PathBuf,
    addrs: Vec<String>,
    timing: String,
    members: Vec<Option<Proc>>,
}

impl Group {
    fn start_member(&mut self, i: usize) {
        let dir = self.root.join(format!("cn{i}"));
        let mut args = vec![
            "confignode".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            self.addrs[i].clone(),
            "--peers".into(),
            self.addrs.join(","),
            "--raft-timing".into(),
            self.timing.clone(),
        ];
        args.extend(self.secret_args());
        let proc = spawn(&dir, &args, &self.root.join(format!("cn{i}.log")));
        self.members[i] = Some(proc);
    }

    /// The internal and admin secret files every node shares, created on first use.
    fn secrets(&self) -> (PathBuf, PathBuf) {
        let internal = self.root.join("internal.secret");
        let admin = self.root.join("admin.secret");
        for path in [&internal, &admin] {
            shoal_transport_capnp::load_or_create_secret_file(path, Default::default())
                .expect("secret file");
        }
        (internal, admin)
    }

    /// The flags naming both secret files.
    fn secret_args(&self) -> Vec<String> {
        let (internal, admin) = self.secrets();
        vec![
            "--internal-secret-file".into(),
            internal.display().to_string(),
            "--admin-secret-file".into(),
            admin.display().to_string(),
        ]
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Submits a one-group database creation (retrying until some leader takes it) and waits
/// until its first step is committed; returns when that was seen.
async fn next_step(client: &ConfigNodes, name: &str) -> Instant {
    let rf = ReplicationFactor::new(3).expect("rf");
    let request = CreateDatabaseRequest {
        name: DatabaseName::new(name).expect("name"),
        schema_replication_factor: rf,
        data_replication_factor: rf,
        data_region_groups: 1,
        schema_region_groups: 0,
    };
    let key = Some(format!("failover-{name}"));
    let id: ProcedureId = loop {
        match client.create_database(request.clone(), key.clone()).await {
            Ok(id) => break id,
            Err(e) if e.is_retryable() => {
                smol::Timer::after(POLL).await;
            }
            Err(e) => panic!("submit refused: {e}"),
        }
    };
    let first = loop {
        match client.get_procedure(id).await {
            Ok(Some(info)) => break info.state_name,
            Ok(None) | Err(ApiError::NotLeader { .. } | ApiError::Unreachable(_)) => {
                smol::Timer::after(POLL).await;
            }
            Err(e) => panic!("poll failed: {e}"),
        }
    };
    loop {
        match client.get_procedure(id).await {
            Ok(Some(info)) if info.state_name != first || info.is_finished() => {
                return Instant::now();
            }
            _ => {
                smol::Timer::after(POLL).await;
            }
        }
    }
}

fn main() {
    let kills: usize = std::env::var("SHOAL_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let timing = std::env::var("SHOAL_RAFT_TIMING").unwrap_or_else(|_| "50:250-500".into());
    let root = tempfile::tempdir().expect("tempdir");
    let mut group = Group {
        root: root.path().to_path_buf(),
        addrs: (0..3).map(|_| free_addr()).collect(),
        timing: timing.clone(),
        members: vec![None, None, None],
    };
    for i in 0..3 {
        group.start_member(i);
    }
    let mut data_nodes = Vec::new();
    for i in 0..3 {
        let dir = root.path().join(format!("dn{i}"));
        let mut args = vec![
            "datanode".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--confignode".into(),
            group.addrs.join(","),
        ];
        args.extend(group.secret_args());
        data_nodes.push(spawn(&dir, &args, &root.path().join(format!("dn{i}.log"))));
    }
    let rpc = RpcRuntime::start("bench").expect("rpc");
    let secret = std::fs::read_to_string(group.secrets().1).expect("secret");
    let mut options = ClientOptions::new(Role::Admin, secret.trim());
    options.call_timeout = Duration::from_millis(500);
    options.reconnect_max = Duration::from_millis(100);
    let client = ConfigNodes::new(&rpc, &group.addrs, options);
    let mut samples = Vec::new();
    smol::block_on(async {
        // Every DataNode registered and the group warmed up: a first creation.
        loop {
            if client
                .list_data_nodes()
                .await
                .is_ok_and(|nodes| nodes.len() == 3)
            {
                break;
            }
            smol::Timer::after(Duration::from_millis(50)).await;
        }
        next_step(&client, "warmup").await;
        for round in 0..kills {
            let status = loop {
                if let Ok(status) = client.group().status().await
                    && status.leader.is_some()
                    && status.members.len() == 3
                {
                    break status;
                }
                smol::Timer::after(Duration::from_millis(20)).await;
            };
            let Some(leader) = status.leader else {
                continue;
            };
            let index = (leader - 1) as usize;
            let mut victim = group.members[index].take().expect("running member");
            let killed = Instant::now();
            let _ = victim.0.kill();
            let stepped = next_step(&client, &format!("f{round}")).await;
            let took = stepped.duration_since(killed);
            eprintln!("kill {round}: leader {leader} -> next step after {took:?}");
            samples.push(took);
            let _ = victim.0.wait();
            drop(victim);
            group.start_member(index);
            // Let the restarted member catch up and every lease settle.
            smol::Timer::after(Duration::from_secs(1)).await;
        }
    });
    samples.sort();
    println!(
        "failover: leader SIGKILL -> next procedure step committed by the new leader, {} kills, \
         raft timing {timing} (heartbeat:election timeout ms), client poll {POLL:?}",
        samples.len()
    );
    println!(
        "p50 {:?}  p90 {:?}  p99 {:?}  max {:?}  min {:?}",
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0),
        samples.last().copied().unwrap_or_default(),
        samples.first().copied().unwrap_or_default(),
    );
    drop(data_nodes);
    drop(group);
}
