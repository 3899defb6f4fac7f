//! Region lifecycle over real processes: the release `shoal` binary as one ConfigNode and
//! three DataNodes (Cap'n Proto on loopback, file storage in a temp dir). For each N it
//! creates a database of N data region groups x RF 3 (no schema groups), then deletes it, and
//! prints wall times, the cost per group, CPU-seconds per group of each process (utime + stime
//! from `/proc/<pid>/stat`), how early the deletion shows progress (when the first tenth of
//! the groups is gone, as a fraction of the deletion's wall time), and the per-group cost
//! ratio of the largest N to the smallest — all measured in one run.
//!
//! Run: `cargo bench -p shoal-nodes --bench lifecycle_processes`. Groups: `SHOAL_BENCH_GROUPS`
//! (comma-separated, default `500,1000,4000`); `SHOAL_BENCH_ROUNDS` (default 1) repeats
//! every N on a fresh cluster; `SHOAL_BENCH_EXE` runs another `shoal` binary (a copy built
//! from another commit, for a before/after comparison); `RUST_LOG` is passed to the nodes (default `info`, as
//! deployed). Issue 17's targets: delete of 1,000 groups <= 1 s, create + delete <= 1.5 s,
//! 4,000 deleted <= 4 s, per-group ratio 4,000/500 <= 1.3, CPU per deleted group <= 1.5 ms.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shoal_core::api::{ConfigNodeApi, CreateDatabaseRequest, ProcedureView};
use shoal_core::model::{DatabaseName, ProcedureId, ReplicationFactor};
use shoal_transport_capnp::{
    ADMIN_SECRET_FILE_NAME, CapnpConfigNodeClient, ClientOptions, INTERNAL_SECRET_FILE_NAME, Role,
    RpcRuntime, SecretFileMode, read_secret_file,
};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");

/// The `shoal` binary to run: `SHOAL_BENCH_EXE` (e.g. a copy built from another commit, to
/// compare two builds on the same machine state), else this build's.
fn exe() -> String {
    std::env::var("SHOAL_BENCH_EXE").unwrap_or_else(|_| EXE.to_string())
}
const BOUND: Duration = Duration::from_secs(600);
/// How often the bench asks for the deletion's progress (the CLI asks every 250 ms).
const POLL: Duration = Duration::from_millis(10);
const NAMES: [&str; 4] = ["confignode", "datanode-1", "datanode-2", "datanode-3"];

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts `shoal args`, logging to `root/name.log`; returns it with its bound address.
fn spawn(root: &Path, name: &str, dir: &Path, args: &[&str]) -> (Proc, String) {
    std::fs::create_dir_all(dir).expect("data dir");
    let log = std::fs::File::create(root.join(format!("{name}.log"))).expect("log file");
    let child = Command::new(exe())
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn shoal");
    let mut proc = Proc(child);
    let addr_file = dir.join("listen.addr");
    let addr = wait_for(&format!("{name} to listen"), || {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("{name} exited early: {status}");
        }
        std::fs::read_to_string(&addr_file)
            .ok()
            .map(|s| s.trim().to_string())
    });
    (proc, addr)
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

struct Cluster {
    /// Held so the data directories live as long as the cluster.
    _root: tempfile::TempDir,
    procs: Vec<Proc>,
    client: CapnpConfigNodeClient,
    _rpc: RpcRuntime,
}

impl Cluster {
    fn start() -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let cn_dir = root.path().join("cn");
        let dir = |p: &Path| p.display().to_string();
        let (cn, cn_addr) = spawn(
            root.path(),
            "confignode",
            &cn_dir,
            &[
                "confignode",
                "--data-dir",
                &dir(&cn_dir),
                "--listen",
                "127.0.0.1:0",
            ],
        );
        let internal_secret: PathBuf = cn_dir.join(INTERNAL_SECRET_FILE_NAME);
        let admin_secret: PathBuf = cn_dir.join(ADMIN_SECRET_FILE_NAME);
        let mut procs = vec![cn];
        for i in 1..=3 {
            let dn_dir = root.path().join(format!("dn-{i}"));
            let (dn, _) = spawn(
                root.path(),
                &format!("datanode-{i}"),
                &dn_dir,
                &[
                    "datanode",
                    "--data-dir",
                    &dir(&dn_dir),
                    "--listen",
                    "127.0.0.1:0",
                    "--confignode",
                    &cn_addr,
                    "--internal-secret-file",
                    &dir(&internal_secret),
                    "--admin-secret-file",
                    &dir(&admin_secret),
                ],
            );
            procs.push(dn);
        }
        let secret = read_secret_file(&admin_secret, SecretFileMode::OwnerOnly).expect("secret");
        let rpc = RpcRuntime::start("bench").expect("rpc runtime");
        let client =
            CapnpConfigNodeClient::new(&rpc, &cn_addr, ClientOptions::new(Role::Admin, secret))
                .expect("client");
        let cluster = Cluster {
            _root: root,
            procs,
            client,
            _rpc: rpc,
        };
        wait_for("3 registered DataNodes", || {
            let nodes = smol::block_on(cluster.client.list_data_nodes()).ok()?;
            (nodes.len() == 3).then_some(())
        });
        cluster
    }

    fn cpu(&self) -> Vec<f64> {
        self.procs.iter().map(|p| cpu_seconds(p.0.id())).collect()
    }

    async fn wait_finished(&self, id: ProcedureId) {
        loop {
            match self.client.get_procedure(id).await {
                Ok(Some(info)) if info.is_finished() => {
                    assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
                    return;
                }
                Ok(_) => {}
                Err(e) => assert!(e.is_retryable(), "get_procedure: {e}"),
            }
            smol::Timer::after(POLL).await;
        }
    }
}

/// One N's figures.
struct Sample {
    groups: u32,
    create: Duration,
    delete: Duration,
    /// When the first tenth of the groups was gone, since the deletion started.
    first_tenth: Duration,
    /// CPU-seconds of each process during creation and during deletion.
    create_cpu: Vec<f64>,
    delete_cpu: Vec<f64>,
}

fn run(groups: u32) -> Sample {
    let cluster = Cluster::start();
    let name = DatabaseName::new(format!("bench{groups}")).expect("name");
    let rf = ReplicationFactor::new(3).expect("rf");
    let request = CreateDatabaseRequest {
        name: name.clone(),
        schema_replication_factor: rf,
        data_replication_factor: rf,
        data_region_groups: groups,
        schema_region_groups: 0,
    };
    smol::block_on(async {
        let cpu0 = cluster.cpu();
        let started = Instant::now();
        let id = cluster
            .client
            .create_database(request, Some(format!("create-{groups}")))
            .await
            .expect("create");
        cluster.wait_finished(id).await;
        let create = started.elapsed();
        let cpu1 = cluster.cpu();
        let listed = cluster
            .client
            .list_region_groups(Some(name.clone()))
            .await
            .expect("list");
        assert_eq!(listed.len(), groups as usize);

        let started = Instant::now();
        let id = cluster
            .client
            .delete_database(name.clone(), Some(format!("delete-{groups}")))
            .await
            .expect("delete");
        let mut first_tenth = None;
        let tenth = (groups as usize).div_ceil(10);
        loop {
            if first_tenth.is_none() {
                let left = cluster
                    .client
                    .list_region_groups(Some(name.clone()))
                    .await
                    .map_or(usize::MAX, |g| g.len());
                if left != usize::MAX && groups as usize - left >= tenth {
                    first_tenth = Some(started.elapsed());
                }
            }
            match cluster.client.get_procedure(id).await {
                Ok(Some(info)) if info.is_finished() => {
                    assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
                    break;
                }
                Ok(_) => {}
                Err(e) => assert!(e.is_retryable(), "get_procedure: {e}"),
            }
            smol::Timer::after(POLL).await;
        }
        let delete = started.elapsed();
        let cpu2 = cluster.cpu();
        let left = cluster
            .client
            .list_region_groups(Some(name.clone()))
            .await
            .expect("list");
        assert!(left.is_empty(), "{} groups left", left.len());
        Sample {
            groups,
            create,
            delete,
            first_tenth: first_tenth.unwrap_or(delete),
            create_cpu: cpu1.iter().zip(&cpu0).map(|(b, a)| b - a).collect(),
            delete_cpu: cpu2.iter().zip(&cpu1).map(|(b, a)| b - a).collect(),
        }
    })
}

fn ms_per_group(d: Duration, groups: u32) -> f64 {
    d.as_secs_f64() * 1e3 / f64::from(groups)
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let groups: Vec<u32> = std::env::var("SHOAL_BENCH_GROUPS")
        .unwrap_or_else(|_| "500,1000,4000".into())
        .split(',')
        .map(|n| {
            n.trim()
                .parse()
                .expect("SHOAL_BENCH_GROUPS: comma-separated numbers")
        })
        .collect();
    let rounds: usize = std::env::var("SHOAL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    println!(
        "lifecycle_processes: 1 ConfigNode + 3 DataNodes ({}), data groups x RF 3, {rounds} round(s)",
        exe()
    );
    let mut samples: Vec<Sample> = Vec::new();
    for round in 0..rounds {
        for &n in &groups {
            let s = run(n);
            let per = |cpu: &[f64]| {
                cpu.iter()
                    .map(|c| format!("{:.2}", c * 1e3 / f64::from(n)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!(
                "round {round} N={n:>5}: create {:>7.0} ms ({:.2} ms/group), delete {:>7.0} ms ({:.2} ms/group), create+delete {:>7.0} ms",
                s.create.as_secs_f64() * 1e3,
                ms_per_group(s.create, n),
                s.delete.as_secs_f64() * 1e3,
                ms_per_group(s.delete, n),
                (s.create + s.delete).as_secs_f64() * 1e3,
            );
            println!(
                "    CPU ms/group, create ({}): {}  total {:.2}",
                NAMES.join(" / "),
                per(&s.create_cpu),
                s.create_cpu.iter().sum::<f64>() * 1e3 / f64::from(n)
            );
            println!(
                "    CPU ms/group, delete ({}): {}  total {:.2}",
                NAMES.join(" / "),
                per(&s.delete_cpu),
                s.delete_cpu.iter().sum::<f64>() * 1e3 / f64::from(n)
            );
            println!(
                "    first tenth of the groups deleted after {:.0} ms = {:.2} of the deletion's wall time",
                s.first_tenth.as_secs_f64() * 1e3,
                s.first_tenth.as_secs_f64() / s.delete.as_secs_f64()
            );
            samples.push(s);
        }
    }
    let median_of = |n: u32, f: &dyn Fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().filter(|s| s.groups == n).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (Some(&small), Some(&large)) = (groups.iter().min(), groups.iter().max()) else {
        return;
    };
    if small != large {
        let per_group = |s: &Sample| ms_per_group(s.create + s.delete, s.groups);
        let per_delete = |s: &Sample| ms_per_group(s.delete, s.groups);
        println!(
            "per-group cost ratio N={large} / N={small}: create+delete {:.2}x, delete {:.2}x (target <= 1.3)",
            median_of(large, &per_group) / median_of(small, &per_group),
            median_of(large, &per_delete) / median_of(small, &per_delete),
        );
    }
}
