//! End-to-end: real `shoal` processes (1 ConfigNode + 3 DataNodes) on ephemeral 127.0.0.1
//! ports with temp data dirs, driven through the `shoal` CLI, with nodes SIGKILLed and
//! restarted mid-deletion. Every wait is bounded; every child is killed when its guard drops
//! (also when a test panics).
//!
//! File storage only: the checks read region directories on disk and the restarts rely on
//! durable state, which the `storage-mem` build does not have.
#![cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::task_log::{
    read_replica_deletions, read_task_events, successful_deletions, tasks_run_twice,
};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
/// DataNodes delete at 64 KiB/s and every replica holds 64 KiB: ~1 s per replica.
const DELETE_RATE: &str = "64KiB";
/// 16 data region groups x 64 KiB.
const LOAD: &str = "1MiB";
const GROUPS: &str = "16";
const BOUND: Duration = Duration::from_secs(90);

/// A child process, SIGKILLed and reaped on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Cluster {
    root: tempfile::TempDir,
    confignode: Option<Proc>,
    cn_addr: String,
    data_nodes: Vec<Option<Proc>>,
    dn_addrs: Vec<String>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failed test keeps its data directories and logs: they are the evidence.
        if std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!("cluster files kept in {}", self.root.path().display());
        }
    }
}

impl Cluster {
    fn cn_dir(&self) -> PathBuf {
        self.root.path().join("cn")
    }

    fn dn_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("dn-{i}"))
    }

    /// The admin secret the ConfigNode generated (the CLI's).
    fn secret_file(&self) -> PathBuf {
        self.cn_dir().join("admin.secret")
    }

    /// The node-to-node secret the ConfigNode generated.
    fn internal_secret_file(&self) -> PathBuf {
        self.cn_dir().join("internal.secret")
    }

    /// Spawns `shoal args` with logs in `log` and waits for `dir/listen.addr`.
    fn spawn_node(&self, name: &str, dir: &Path, args: &[&str]) -> (Proc, String) {
        std::fs::create_dir_all(dir).expect("data dir");
        let addr_file = dir.join("listen.addr");
        let _ = std::fs::remove_file(&addr_file);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.path().join(format!("{name}.log")))
            .expect("log file");
        let child = Command::new(EXE)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal");
        let mut proc = Proc { child };
        let addr = wait_until(&format!("{name} to listen"), BOUND, || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("{name} exited early: {status}");
            }
            std::fs::read_to_string(&addr_file)
                .ok()
                .map(|s| s.trim().to_string())
        });
        (proc, addr)
    }

    fn start_confignode(&mut self, listen: &str) {
        let dir = self.cn_dir();
        let (proc, addr) = self.spawn_node(
            "cn",
            &dir,
            &[
                "confignode",
                "--data-dir",
                &dir.display().to_string(),
                "--listen",
                listen,
            ],
        );
        self.confignode = Some(proc);
        self.cn_addr = addr;
    }

    fn start_data_node(&mut self, i: usize, listen: &str) {
        let dir = self.dn_dir(i);
        let (proc, addr) = self.spawn_node(
            &format!("dn-{i}"),
            &dir,
            &[
                "datanode",
                "--data-dir",
                &dir.display().to_string(),
                "--listen",
                listen,
                "--confignode",
                &self.cn_addr.clone(),
                "--internal-secret-file",
                &self.internal_secret_file().display().to_string(),
                "--admin-secret-file",
                &self.secret_file().display().to_string(),
                "--delete-rate",
                DELETE_RATE,
            ],
        );
        self.data_nodes[i] = Some(proc);
        self.dn_addrs[i] = addr;
    }

    /// Sends `signal` to DataNode `i`.
    fn signal(&self, i: usize, signal: Signal) {
        let proc = self.data_nodes[i].as_ref().expect("running");
        let pid = i32::try_from(proc.child.id()).expect("pid");
        kill(Pid::from_raw(pid), signal).expect("signal");
    }

    /// 1 ConfigNode + 3 DataNodes on ephemeral ports, every DataNode registered.
    fn start() -> Cluster {
        let mut cluster = Cluster {
            root: tempfile::tempdir().expect("tempdir"),
            confignode: None,
            cn_addr: String::new(),
            data_nodes: vec![None, None, None],
            dn_addrs: vec![String::new(); 3],
        };
        cluster.start_confignode("127.0.0.1:0");
        for i in 0..3 {
            cluster.start_data_node(i, "127.0.0.1:0");
        }
        wait_until("3 registered DataNodes", BOUND, || {
            let nodes = cluster.json(&["datanode", "list"]);
            (nodes.as_array().map_or(0, Vec::len) == 3).then_some(())
        });
        cluster
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(EXE);
        command
            .args(args)
            .args(["--confignode", &self.cn_addr, "--admin-secret-file"])
            .arg(self.secret_file())
            .args(["--timeout-secs", "80"]);
        command
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run shoal")
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let text = self.cli_ok(&args);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("shoal {args:?}: bad JSON {e}: {text}"))
    }

    /// Creates `db` (16 data + 1 schema groups, rf 3) and loads it; returns the region
    /// replicas each DataNode holds (by region directory name).
    fn create_and_load(&self, db: &str) -> Vec<BTreeSet<String>> {
        self.cli_ok(&[
            "database",
            "create",
            db,
            "--data-groups",
            GROUPS,
            "--schema-groups",
            "1",
            "--rf",
            "3",
        ]);
        let groups = self.json(&["region", "list", "--database", db]);
        assert_eq!(
            groups.as_array().map(Vec::len),
            Some(17),
            "16 data + 1 schema groups"
        );
        self.cli_ok(&["load", db, "--bytes", LOAD]);
        (0..3)
            .map(|i| {
                let held: BTreeSet<String> = region_dirs(&self.dn_dir(i)).into_iter().collect();
                assert_eq!(held.len(), 17, "dn-{i} holds every replica");
                held
            })
            .collect()
    }

    /// The promise, from the logs: no DataNode ran one task id twice (accepted it as new
    /// twice, or finished it twice: its own log), and every replica in `held[i]` was deleted
    /// by exactly one successful task on DataNode `i`, and nothing else was (its log, plus the
    /// ConfigNode's `replica deleted` lines for a finish line lost to a SIGKILL).
    fn assert_every_replica_deleted_once(&self, held: &[BTreeSet<String>]) {
        let confignode = read_replica_deletions(&self.root.path().join("cn.log"));
        let mut problems = Vec::new();
        for (i, held) in held.iter().enumerate() {
            let log = self.root.path().join(format!("dn-{i}.log"));
            let events = read_task_events(&log);
            for (task, lines) in tasks_run_twice(&events) {
                problems.push(format!(
                    "dn-{i} ran {task} twice:\n  {}",
                    lines.join("\n  ")
                ));
            }
            let id = std::fs::read_to_string(self.dn_dir(i).join("node.id")).expect("node id");
            let label = format!("dn-{}", id.trim());
            let deleted = successful_deletions(&events, &confignode, &label);
            let evidence = |tasks: &BTreeMap<String, Vec<String>>| -> String {
                let lines: Vec<String> = tasks.values().flatten().cloned().collect();
                lines.join("\n  ")
            };
            for region in held {
                match deleted.get(region) {
                    Some(tasks) if tasks.len() == 1 => {}
                    None => problems.push(format!("dn-{i}: no successful deletion of {region}")),
                    Some(tasks) => problems.push(format!(
                        "dn-{i} deleted {region} by {} tasks:\n  {}",
                        tasks.len(),
                        evidence(tasks)
                    )),
                }
            }
            for (region, tasks) in &deleted {
                if !held.contains(region) {
                    problems.push(format!(
                        "dn-{i} deleted {region}, which it did not hold:\n  {}",
                        evidence(tasks)
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "the promise was broken (logs in {}):\n{}",
            self.root.path().display(),
            problems.join("\n")
        );
    }

    /// Starts `database delete DB --wait` in the background.
    fn delete_waiting(&self, db: &str) -> Proc {
        let child = self
            .cli_command(&["database", "delete", db, "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn delete");
        Proc { child }
    }

    /// Waits until some DataNode is removing a replica (its trash is not empty).
    fn wait_deleting(&self) {
        wait_until("a deletion in progress on a DataNode", BOUND, || {
            (0..3)
                .any(|i| !entries(&self.dn_dir(i).join("datanode/trash")).is_empty())
                .then_some(())
        });
    }

    /// The end state: database gone, no region directory anywhere, no unfinished procedure.
    fn assert_gone(&self, db: &str) {
        let dbs = self.json(&["database", "list"]);
        assert!(
            dbs.as_array()
                .is_some_and(|l| l.iter().all(|d| d["schema"]["name"] != db)),
            "database {db} still listed: {dbs}"
        );
        for i in 0..3 {
            let dir = self.dn_dir(i);
            assert!(
                region_dirs(&dir).is_empty(),
                "dn-{i} still holds {:?}",
                region_dirs(&dir)
            );
            let trash = entries(&dir.join("datanode/trash"));
            assert!(trash.is_empty(), "dn-{i} trash still holds {trash:?}");
        }
        let procedures = self.json(&["procedure", "list"]);
        let unfinished: Vec<_> = procedures
            .as_array()
            .expect("procedure list")
            .iter()
            .filter(|p| p["finished"] != true)
            .collect();
        assert!(
            unfinished.is_empty(),
            "unfinished procedures: {unfinished:?}"
        );
    }
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn region_dirs(dn_dir: &Path) -> Vec<String> {
    entries(&dn_dir.join("datanode/regions"))
}

/// Waits for a background CLI to exit successfully.
fn wait_success(proc: &mut Proc, what: &str) {
    let status = wait_until(what, BOUND, || proc.child.try_wait().ok().flatten());
    let mut stderr = String::new();
    if let Some(mut err) = proc.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(status.success(), "{what} failed ({status}): {stderr}");
}

#[test]
fn delete_with_wait_removes_every_replica_on_every_datanode() {
    let cluster = Cluster::start();
    let held = cluster.create_and_load("plain");
    let out = cluster.cli_ok(&["database", "delete", "plain", "--wait"]);
    assert!(out.contains("Succeeded"), "delete output: {out}");
    cluster.assert_gone("plain");
    cluster.assert_every_replica_deleted_once(&held);
    // Logs written to a file are plain text (colours are for terminals).
    for name in ["cn", "dn-0", "dn-1", "dn-2"] {
        let log = std::fs::read_to_string(cluster.root.path().join(format!("{name}.log")))
            .expect("log file");
        assert!(!log.contains('\u{1b}'), "{name}.log has colour codes");
    }
}

#[test]
fn datanode_killed_mid_delete_and_restarted_still_ends_with_everything_gone() {
    let mut cluster = Cluster::start();
    let held = cluster.create_and_load("dnkill");
    let mut delete = cluster.delete_waiting("dnkill");
    cluster.wait_deleting();
    let victim = 1;
    cluster.data_nodes[victim].take().expect("running").kill();
    std::thread::sleep(Duration::from_millis(500));
    // Same address: the restarted node re-registers under the id stored in its data dir.
    let listen = cluster.dn_addrs[victim].clone();
    cluster.start_data_node(victim, &listen);
    wait_success(&mut delete, "delete --wait across a DataNode crash");
    cluster.assert_gone("dnkill");
    cluster.assert_every_replica_deleted_once(&held);
    let id = std::fs::read_to_string(cluster.dn_dir(victim).join("node.id")).expect("node id");
    let nodes = cluster.json(&["datanode", "list"]);
    assert_eq!(
        nodes.as_array().map(Vec::len),
        Some(3),
        "re-registration made no new node: {nodes}"
    );
    assert!(id.trim().parse::<u32>().is_ok());
}

#[test]
fn confignode_killed_mid_delete_and_restarted_resumes_to_the_end() {
    let mut cluster = Cluster::start();
    let held = cluster.create_and_load("cnkill");
    let mut delete = cluster.delete_waiting("cnkill");
    cluster.wait_deleting();
    cluster.confignode.take().expect("running").kill();
    std::thread::sleep(Duration::from_millis(500));
    let listen = cluster.cn_addr.clone();
    cluster.start_confignode(&listen);
    // The CLI rides through the restart (it retries while the ConfigNode is unreachable).
    wait_success(&mut delete, "delete --wait across a ConfigNode crash");
    cluster.assert_gone("cnkill");
    cluster.assert_every_replica_deleted_once(&held);
}

#[test]
fn wrong_secret_is_refused_and_garbage_does_not_crash_nodes() {
    let cluster = Cluster::start();
    let wrong = cluster.root.path().join("wrong.secret");
    std::fs::write(&wrong, "not-the-secret\n").expect("write");
    std::fs::set_permissions(&wrong, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let out = Command::new(EXE)
        .args([
            "database",
            "list",
            "--confignode",
            &cluster.cn_addr,
            "--secret-file",
        ])
        .arg(&wrong)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a wrong secret was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused: wrong admin secret"),
        "unclear refusal: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");

    for addr in [&cluster.cn_addr, &cluster.dn_addrs[0]] {
        // Random bytes, then a segment table announcing a 4 GiB message.
        for payload in [
            (0..200u32)
                .map(|i| (i * 37 % 256) as u8)
                .collect::<Vec<u8>>(),
            [0u32.to_le_bytes(), u32::MAX.to_le_bytes()].concat(),
        ] {
            let mut stream = std::net::TcpStream::connect(addr.as_str()).expect("connect");
            let _ = stream.write_all(&payload);
            let _ = stream.flush();
        }
    }
    // Both still serve: creating a database needs every DataNode to create replicas.
    cluster.cli_ok(&[
        "database",
        "create",
        "after",
        "--data-groups",
        "2",
        "--rf",
        "3",
    ]);
    let dbs = cluster.json(&["database", "list"]);
    assert_eq!(dbs.as_array().map(Vec::len), Some(1), "{dbs}");
}

#[test]
fn datanode_restarted_at_a_new_address_gets_its_missing_replicas_there() {
    let mut cluster = Cluster::start();
    let victim = 2;
    // Frozen, not dead: its heartbeats time out slowly, so the ConfigNode still counts it
    // Running and places a replica of every group on it, and each create there times out.
    // The groups reach a quorum on the other two and are published with the victim's
    // replicas queued for the region cleaner.
    cluster.signal(victim, Signal::SIGSTOP);
    cluster.cli_ok(&[
        "database",
        "create",
        "moved",
        "--data-groups",
        "2",
        "--schema-groups",
        "1",
        "--rf",
        "3",
    ]);
    let victim_id: u32 = std::fs::read_to_string(cluster.dn_dir(victim).join("node.id"))
        .expect("node id")
        .trim()
        .parse()
        .expect("a number");
    let replica_counts = |cluster: &Cluster| -> Vec<(usize, bool)> {
        let groups = cluster.json(&["region", "list", "--database", "moved"]);
        groups
            .as_array()
            .expect("groups")
            .iter()
            .map(|g| {
                let replicas = g["replica_set"]["replicas"].as_array().expect("replicas");
                let on_victim = replicas
                    .iter()
                    .any(|r| r.as_u64() == Some(victim_id.into()));
                (replicas.len(), on_victim)
            })
            .collect()
    };
    assert_eq!(
        replica_counts(&cluster),
        vec![(2, false); 3],
        "published without the frozen DataNode's replicas"
    );
    assert!(region_dirs(&cluster.dn_dir(victim)).is_empty());

    // Restarted on another port: it re-registers under its stored id at the new address.
    let old_address = cluster.dn_addrs[victim].clone();
    cluster.data_nodes[victim].take().expect("running").kill();
    cluster.start_data_node(victim, "127.0.0.1:0");
    let new_address = cluster.dn_addrs[victim].clone();
    assert_ne!(old_address, new_address);
    wait_until("the DataNode listed at its new address", BOUND, || {
        let nodes = cluster.json(&["datanode", "list"]);
        nodes
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| {
                n["location"]["id"].as_u64() == Some(victim_id.into())
                    && n["location"]["address"] == new_address.as_str()
            })
            .then_some(())
    });

    // The region cleaner reaches it there: its missing replicas appear and are published.
    wait_until(
        "the missing replicas created on the DataNode at its new address",
        BOUND,
        || (region_dirs(&cluster.dn_dir(victim)).len() == 3).then_some(()),
    );
    wait_until("every group listing three replicas", BOUND, || {
        (replica_counts(&cluster) == vec![(3, true); 3]).then_some(())
    });

    let held: Vec<BTreeSet<String>> = (0..3)
        .map(|i| region_dirs(&cluster.dn_dir(i)).into_iter().collect())
        .collect();
    let out = cluster.cli_ok(&["database", "delete", "moved", "--wait"]);
    assert!(out.contains("Succeeded"), "delete output: {out}");
    cluster.assert_gone("moved");
    cluster.assert_every_replica_deleted_once(&held);
}

#[test]
fn a_create_right_after_every_datanode_restarted_reaches_every_one() {
    let mut cluster = Cluster::start();
    // Down long enough for the ConfigNode's heartbeats to fail repeatedly: its connections
    // to them back off (up to 2 s between dials).
    for i in 0..3 {
        cluster.data_nodes[i].take().expect("running").kill();
    }
    std::thread::sleep(Duration::from_secs(6));
    for i in 0..3 {
        let listen = cluster.dn_addrs[i].clone();
        cluster.start_data_node(i, &listen);
    }
    wait_until("every DataNode registered again and Running", BOUND, || {
        let nodes = cluster.json(&["datanode", "list"]);
        let running = nodes
            .as_array()
            // The JSON carries the status code: Running = 1.
            .map_or(0, |l| l.iter().filter(|n| n["status"] == 1).count());
        (running == 3).then_some(())
    });
    // At once: inside the backoff windows. Each create gets a dial of its own (the nodes
    // are back), never the refusal cached from before they restarted.
    cluster.cli_ok(&[
        "database",
        "create",
        "fresh",
        "--data-groups",
        "2",
        "--schema-groups",
        "1",
        "--rf",
        "3",
    ]);
    let groups = cluster.json(&["region", "list", "--database", "fresh"]);
    let replicas: Vec<usize> = groups
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["replica_set"]["replicas"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(replicas, vec![3; 3], "{groups}");
    for i in 0..3 {
        assert_eq!(region_dirs(&cluster.dn_dir(i)).len(), 3, "dn-{i}");
    }
}
