//! Upgrade, as an operator does it, on the committed single-node data directory fixture
//! (`tests/fixtures/single-node-v1`, written by the release before replicated ConfigNodes):
//! the `shoal` binary of this build runs it as a single ConfigNode with its databases,
//! procedures and pending deletion intact; restarted with `--peers` (listed first) it
//! imports that state into a new 3-member group, which serves the same databases; from then
//! on the data directory is a group member's, flags or not.
#![cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
const BOUND: Duration = Duration::from_secs(60);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/single-node-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    format!("127.0.0.1:{port}")
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + BOUND;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts `shoal confignode` on `dir` with `args`, logging to `log`; waits until it listens.
fn confignode(dir: &Path, listen: &str, args: &[&str], log: &Path) -> Proc {
    let _ = std::fs::remove_file(dir.join("listen.addr"));
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log");
    let mut child = Command::new(EXE)
        .args(["confignode", "--data-dir"])
        .arg(dir)
        .args(["--listen", listen])
        .args(args)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn");
    wait_until("the ConfigNode to listen", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the ConfigNode exited early: {status}");
        }
        dir.join("listen.addr").exists().then_some(())
    });
    Proc(child)
}

fn json(confignode: &str, secret: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(EXE)
        .args(args)
        .args(["--json", "--confignode", confignode, "--admin-secret-file"])
        .arg(secret)
        .args(["--timeout-secs", "30"])
        .output()
        .expect("run shoal");
    assert!(
        out.status.success(),
        "shoal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// The fixture's databases (`metrics` kept, `logs` being deleted) and its unfinished deletion,
/// as the CLI shows them.
fn assert_fixture_served(confignode: &str, secret: &Path) {
    let dbs = json(confignode, secret, &["database", "list"]);
    let mut listed: Vec<(String, bool)> = dbs
        .as_array()
        .expect("databases")
        .iter()
        .map(|d| {
            (
                d["schema"]["name"].as_str().unwrap_or_default().to_string(),
                d["deleting"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![("logs".to_string(), true), ("metrics".to_string(), false)],
        "{dbs}"
    );
    let procedures = json(confignode, secret, &["procedure", "list"]);
    assert!(
        procedures.as_array().expect("procedures").iter().any(|p| {
            p["type_name"]
                .as_str()
                .is_some_and(|t| t.contains("DeleteDatabase"))
                && p["finished"] == false
        }),
        "the deletion is still pending: {procedures}"
    );
}

#[test]
fn a_single_node_data_dir_runs_alone_then_seeds_a_group_with_its_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let cn1 = root.path().join("cn1");
    copy_dir(&fixture(), &cn1);
    // The fixture has no secret: the first start generates one.
    let addrs: Vec<String> = (0..3).map(|_| free_addr()).collect();
    let log = |i: usize| root.path().join(format!("cn{i}.log"));
    // The admin secret (the CLI's); the other members share both of cn1's secrets.
    let secret = cn1.join("admin.secret");
    let internal = cn1.join("internal.secret");

    // 1. This build runs the old data directory as a single ConfigNode, unchanged.
    {
        let _alone = confignode(&cn1, &addrs[0], &[], &log(1));
        assert_fixture_served(&addrs[0], &secret);
    }
    assert!(
        cn1.join("confignode/log").is_dir(),
        "running alone leaves the single-node layout as it was"
    );

    // 2. Restarted with --peers (listed first), it seeds a new group with its state.
    let peers = addrs.join(",");
    let (secret_arg, internal_arg) = (secret.display().to_string(), internal.display().to_string());
    let mut members = vec![confignode(&cn1, &addrs[0], &["--peers", &peers], &log(1))];
    for (i, addr) in addrs.iter().enumerate().skip(1) {
        let dir = root.path().join(format!("cn{}", i + 1));
        members.push(confignode(
            &dir,
            addr,
            &[
                "--peers",
                &peers,
                "--internal-secret-file",
                &internal_arg,
                "--admin-secret-file",
                &secret_arg,
            ],
            &log(i + 1),
        ));
    }
    assert_fixture_served(&peers, &secret);
    let group = json(&peers, &secret, &["confignode", "list"]);
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(3),
        "{group}"
    );
    assert!(
        cn1.join("confignode/imported-single-node/log").is_dir()
            && !cn1.join("confignode/log").exists(),
        "the imported single-node log is set aside, so nothing runs on it again"
    );

    // 3. From now on it is a group member: started without flags, it rejoins the group.
    drop(members.remove(0));
    let _again = confignode(&cn1, &addrs[0], &[], &log(1));
    let group = json(&peers, &secret, &["confignode", "list"]);
    assert_eq!(
        group["members"].as_array().map(Vec::len),
        Some(3),
        "{group}"
    );
    assert_fixture_served(&addrs[0], &secret);
}
