//! End-to-end with a replicated ConfigNode: real `shoal` processes — a group of 3
//! ConfigNodes (Raft) and 3 DataNodes — on 127.0.0.1, driven through the CLI with every
//! ConfigNode address given (`--confignode A,B,C`). The leader is SIGKILLed in the middle
//! of a deletion; `database delete --wait` follows the new leader to the end, and the logs
//! show every replica deleted once and no task id run twice. Every wait is bounded; every
//! child is killed when its guard drops.
//!
//! File storage only (the checks read region directories on disk).
#![cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::task_log::{
    read_replica_deletions, read_task_events, successful_deletions, tasks_run_twice,
};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
/// DataNodes delete at 64 KiB/s and every replica holds 64 KiB: ~1 s per replica.
const DELETE_RATE: &str = "64KiB";
/// 8 data region groups x 64 KiB.
const LOAD: &str = "512KiB";
const GROUPS: &str = "8";
const BOUND: Duration = Duration::from_secs(90);
/// Short Raft timeouts (heartbeat 50 ms, elections after 300-600 ms of silence).
const RAFT_TIMING: &str = "50:300-600";

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

/// A free port on 127.0.0.1 (bound and released; the group needs fixed addresses).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

struct Cluster {
    root: tempfile::TempDir,
    cn_addrs: Vec<String>,
    confignodes: Vec<Option<Proc>>,
    data_nodes: Vec<Option<Proc>>,
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
    fn cn_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("cn-{i}"))
    }

    fn dn_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(format!("dn-{i}"))
    }

    /// The admin secret (the CLI's), made before any node starts.
    fn secret_file(&self) -> PathBuf {
        self.secrets().1
    }

    /// The internal and admin secret files every member and DataNode shares, created on
    /// first use.
    fn secrets(&self) -> (PathBuf, PathBuf) {
        let internal = self.root.path().join("internal.secret");
        let admin = self.root.path().join("admin.secret");
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

    fn group(&self) -> String {
        self.cn_addrs.join(",")
    }

    /// Spawns `shoal args` logging to `name.log` (appending) and waits for `dir/listen.addr`.
    fn spawn_node(&self, name: &str, dir: &Path, args: &[String]) -> Proc {
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
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal");
        let mut proc = Proc { child };
        wait_until(&format!("{name} to listen"), BOUND, || {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("{name} exited early: {status}");
            }
            addr_file.exists().then_some(())
        });
        proc
    }

    fn start_confignode(&mut self, i: usize) {
        let dir = self.cn_dir(i);
        let mut args: Vec<String> = vec![
            "confignode".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            self.cn_addrs[i].clone(),
            "--peers".into(),
            self.group(),
            "--raft-timing".into(),
            RAFT_TIMING.into(),
        ];
        args.extend(self.secret_args());
        let proc = self.spawn_node(&format!("cn-{i}"), &dir, &args);
        self.confignodes[i] = Some(proc);
    }

    fn start_data_node(&mut self, i: usize) {
        let dir = self.dn_dir(i);
        let mut args: Vec<String> = vec![
            "datanode".into(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--confignode".into(),
            self.group(),
            "--delete-rate".into(),
            DELETE_RATE.into(),
        ];
        args.extend(self.secret_args());
        let proc = self.spawn_node(&format!("dn-{i}"), &dir, &args);
        self.data_nodes[i] = Some(proc);
    }

    /// A group of 3 ConfigNodes + 3 DataNodes, every DataNode registered.
    fn start() -> Cluster {
        let mut cluster = Cluster {
            root: tempfile::tempdir().expect("tempdir"),
            cn_addrs: (0..3)
                .map(|_| format!("127.0.0.1:{}", free_port()))
                .collect(),
            confignodes: vec![None, None, None],
            data_nodes: vec![None, None, None],
        };
        for i in 0..3 {
            cluster.start_confignode(i);
        }
        for i in 0..3 {
            cluster.start_data_node(i);
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
            .args(["--confignode", &self.group(), "--admin-secret-file"])
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

    /// The index (0-based) of the ConfigNode that leads now, other than `not` (a member
    /// that was just killed is still named by followers until they elect another).
    fn leader(&self, not: Option<usize>) -> usize {
        wait_until("a ConfigNode leader", BOUND, || {
            let group = self.json(&["confignode", "list"]);
            let id = group["leader"].as_u64()?;
            // `--peers` ids are 1-based positions.
            let index = usize::try_from(id).ok()?.checked_sub(1)?;
            (Some(index) != not).then_some(index)
        })
    }

    /// Creates `db` (8 data + 1 schema groups, RF 3), loads it; the replicas each DataNode
    /// holds (by region directory name).
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
        self.cli_ok(&["load", db, "--bytes", LOAD]);
        (0..3)
            .map(|i| {
                let held: BTreeSet<String> = region_dirs(&self.dn_dir(i)).into_iter().collect();
                assert_eq!(held.len(), 9, "dn-{i} holds every replica");
                held
            })
            .collect()
    }

    /// No DataNode ran a task id twice, and each replica in `held[i]` was deleted by exactly
    /// one successful task on DataNode `i` (its log, and every ConfigNode's `replica deleted`
    /// lines: whichever member led when the deletion finished logged it).
    fn assert_every_replica_deleted_once(&self, held: &[BTreeSet<String>]) {
        let confignode: Vec<_> = (0..3)
            .flat_map(|i| read_replica_deletions(&self.root.path().join(format!("cn-{i}.log"))))
            .collect();
        let mut problems = Vec::new();
        for (i, held) in held.iter().enumerate() {
            let events = read_task_events(&self.root.path().join(format!("dn-{i}.log")));
            for (task, lines) in tasks_run_twice(&events) {
                problems.push(format!(
                    "dn-{i} ran {task} twice:\n  {}",
                    lines.join("\n  ")
                ));
            }
            let id = std::fs::read_to_string(self.dn_dir(i).join("node.id")).expect("node id");
            let deleted = successful_deletions(&events, &confignode, &format!("dn-{}", id.trim()));
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

    /// The end state: database gone, no region directory or trash anywhere, no unfinished
    /// procedure.
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

#[test]
fn leader_killed_mid_delete_the_cli_follows_the_new_leader_to_the_end() {
    let mut cluster = Cluster::start();
    let held = cluster.create_and_load("raftkill");
    let old_leader = cluster.leader(None);
    let mut delete = Proc {
        child: cluster
            .cli_command(&["database", "delete", "raftkill", "--wait"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn delete"),
    };
    wait_until("a deletion in progress on a DataNode", BOUND, || {
        (0..3)
            .any(|i| !entries(&cluster.dn_dir(i).join("datanode/trash")).is_empty())
            .then_some(())
    });
    cluster.confignodes[old_leader]
        .take()
        .expect("running")
        .kill();
    let new_leader = cluster.leader(Some(old_leader));
    assert!(
        cluster.confignodes[new_leader].is_some(),
        "a running member leads"
    );

    let status = wait_until("delete --wait to finish", BOUND, || {
        delete.child.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    if let Some(mut err) = delete.child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut stderr);
    }
    assert!(
        status.success(),
        "delete --wait across a leader kill failed ({status}): {stderr}"
    );
    // The killed member comes back as a follower and catches up.
    cluster.start_confignode(old_leader);
    cluster.assert_gone("raftkill");
    cluster.assert_every_replica_deleted_once(&held);
    let group = cluster.json(&["confignode", "list"]);
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(3),
        "{group}"
    );
}
