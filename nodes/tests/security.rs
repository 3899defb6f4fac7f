//! The wire under attack, against real `shoal` processes: pre-login floods (RSS read from
//! /proc), secret files others can read, and a TLS cluster made by `shoal up --tls` (create,
//! load and delete over mutual TLS; a plaintext CLI and a certificate from another CA are
//! refused with one line). Every wait is bounded; every child is stopped when its guard
//! drops.
#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
const BOUND: Duration = Duration::from_secs(60);

/// A child process: SIGTERM, then SIGKILL after a grace period, when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn stop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(args: &[&str], log: &Path) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    Proc(
        Command::new(EXE)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn shoal"),
    )
}

fn listen_addr(dir: &Path, proc: &mut Proc) -> String {
    wait_until("the node to listen", BOUND, || {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("node exited early: {status}");
        }
        std::fs::read_to_string(dir.join("listen.addr"))
            .ok()
            .map(|s| s.trim().to_string())
    })
}

/// Resident set size of `pid` in bytes, from /proc.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn cli(args: &[&str], connection: &[String]) -> Output {
    Command::new(EXE)
        .args(args)
        .args(connection)
        .args(["--timeout-secs", "60"])
        .output()
        .expect("run shoal")
}

fn one_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "succeeded: {out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

/// One unauthenticated connection: a frame header announcing 64 MiB, then up to 63 MiB of
/// zeros. Returns whether the node closed it (a write or the final read failed or hit EOF).
fn flood(address: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(address) else {
        // Refused at the door counts as closed.
        return true;
    };
    let _ = stream.set_write_timeout(Some(Duration::from_secs(20)));
    let header = [0u32.to_le_bytes(), ((64u32 << 20) / 8).to_le_bytes()].concat();
    if stream.write_all(&header).is_err() {
        return true;
    }
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..63 {
        if stream.write_all(&zeros).is_err() {
            return true;
        }
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => {
                return !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                );
            }
        }
    }
}

/// Floods `address` with `connections` at once while sampling the peak RSS of `pids` and
/// running `database list` in a loop; returns (peak growth per pid, connections closed,
/// CLI commands that succeeded, that failed).
fn attack(
    address: &str,
    connections: usize,
    pids: &[u32],
    connection: &[String],
) -> (Vec<u64>, usize, u64, u64) {
    let before: Vec<u64> = pids.iter().map(|&p| rss(p)).collect();
    let done = Arc::new(AtomicBool::new(false));
    let peaks: Vec<Arc<AtomicU64>> = before
        .iter()
        .map(|&b| Arc::new(AtomicU64::new(b)))
        .collect();
    let sampler = {
        let (done, peaks, pids) = (done.clone(), peaks.clone(), pids.to_vec());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                for (pid, peak) in pids.iter().zip(&peaks) {
                    peak.fetch_max(rss(*pid), Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let commands = {
        let (done, ok, failed, connection) = (
            done.clone(),
            ok.clone(),
            failed.clone(),
            connection.to_vec(),
        );
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                let out = cli(&["database", "list"], &connection);
                if out.status.success() { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let attackers: Vec<_> = (0..connections)
        .map(|_| {
            let address = address.to_string();
            std::thread::spawn(move || flood(&address))
        })
        .collect();
    let closed = attackers
        .into_iter()
        .map(|a| a.join())
        .filter(|closed| matches!(closed, Ok(true)))
        .count();
    // One more command after the flood, then stop.
    let out = cli(&["database", "list"], connection);
    assert!(out.status.success(), "not served after the flood: {out:?}");
    done.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let _ = commands.join();
    let growth = peaks
        .iter()
        .zip(&before)
        .map(|(peak, before)| peak.load(Ordering::Relaxed).saturating_sub(*before))
        .collect();
    (
        growth,
        closed,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

#[test]
fn pre_login_floods_leave_rss_flat_and_the_node_serving() {
    let root = tempfile::tempdir().expect("tempdir");
    let cn_dir = root.path().join("cn");
    let dn_dir = root.path().join("dn");
    let mut cn = spawn(
        &[
            "confignode",
            "--data-dir",
            &cn_dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
        ],
        &root.path().join("cn.log"),
    );
    let cn_addr = listen_addr(&cn_dir, &mut cn);
    let internal = cn_dir.join("internal.secret").display().to_string();
    let admin = cn_dir.join("admin.secret").display().to_string();
    let mut dn = spawn(
        &[
            "datanode",
            "--data-dir",
            &dn_dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--confignode",
            &cn_addr,
            "--internal-secret-file",
            &internal,
        ],
        &root.path().join("dn.log"),
    );
    let dn_addr = listen_addr(&dn_dir, &mut dn);
    let connection = vec![
        "--confignode".to_string(),
        cn_addr.clone(),
        "--admin-secret-file".to_string(),
        admin,
    ];
    let out = cli(&["database", "list"], &connection);
    assert!(out.status.success(), "{out:?}");
    let pids = [cn.pid(), dn.pid()];
    for (target, connections) in [
        (&cn_addr, 16),
        (&cn_addr, 200),
        (&dn_addr, 16),
        (&dn_addr, 200),
    ] {
        let (growth, closed, ok, failed) = attack(target, connections, &pids, &connection);
        eprintln!(
            "{connections} x 64 MiB announced to {target}: RSS growth ConfigNode {} KiB, \
             DataNode {} KiB; {closed} connections closed; CLI {ok} ok, {failed} failed",
            growth[0] >> 10,
            growth[1] >> 10
        );
        for (name, growth) in ["ConfigNode", "DataNode"].iter().zip(&growth) {
            assert!(*growth <= 64 << 20, "{name} grew {growth} bytes");
        }
        assert_eq!(closed, connections, "connections left open");
        assert_eq!(failed, 0, "a CLI command failed during the flood");
    }
}

fn write_secret(path: &Path, mode: u32) {
    std::fs::write(path, "a-secret-value\n").expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn a_secret_file_others_can_read_stops_a_node_unless_allowed() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("cn");
    let internal = root.path().join("internal.secret");
    let admin = root.path().join("admin.secret");
    write_secret(&internal, 0o600);
    write_secret(&admin, 0o644);
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "confignode",
            "--data-dir",
            &dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--internal-secret-file",
            &internal.display().to_string(),
            "--admin-secret-file",
            &admin.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let out = Command::new(EXE).args(args(&[])).output().expect("run");
    let line = one_error_line(&out);
    assert!(line.contains("readable by group or others"), "{line}");
    assert!(!line.contains("a-secret-value"), "{line}");
    // Allowed by flag: it starts, with a WARN.
    let log = root.path().join("cn.log");
    let argv = args(&["--allow-open-secret-files"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut cn = spawn(&argv, &log);
    listen_addr(&dir, &mut cn);
    cn.stop();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("readable by group or others (allowed by flag)"),
        "{text}"
    );
    assert!(!text.contains("a-secret-value"), "a secret in the log");
}

/// Four consecutive free ports (the ConfigNode's and three DataNodes') for `shoal up`.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (fastrand::u16(..) % 40_000);
        let free = (0..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no block of 4 free ports");
}

#[test]
fn a_tls_cluster_from_shoal_up_creates_loads_and_deletes_and_refuses_strangers() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("data");
    let port = free_port_block();
    let mut up = spawn(
        &[
            "up",
            "--tls",
            "--data-dir",
            &data.display().to_string(),
            "--port",
            &port.to_string(),
        ],
        &root.path().join("up.log"),
    );
    for i in 1..=3 {
        listen_addr(&data.join(format!("datanode-{i}")), &mut up);
    }
    let tls: PathBuf = data.join("tls");
    let cn_addr = format!("127.0.0.1:{port}");
    let admin_secret = data.join("confignode/admin.secret").display().to_string();
    let connection = |ca: &Path, cert: &Path, key: &Path| -> Vec<String> {
        [
            "--confignode",
            &cn_addr,
            "--admin-secret-file",
            &admin_secret,
            "--tls-ca",
            &ca.display().to_string(),
            "--tls-cert",
            &cert.display().to_string(),
            "--tls-key",
            &key.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let good = connection(
        &tls.join("ca.pem"),
        &tls.join("admin.pem"),
        &tls.join("admin.key"),
    );
    wait_until("3 DataNodes registered over TLS", BOUND, || {
        let out = cli(&["datanode", "list", "--json"], &good);
        let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (nodes.as_array().map_or(0, Vec::len) == 3).then_some(())
    });
    for args in [
        vec![
            "database",
            "create",
            "tls_db",
            "--data-groups",
            "4",
            "--rf",
            "3",
        ],
        vec!["load", "tls_db", "--bytes", "256KiB"],
        vec!["database", "delete", "tls_db", "--wait"],
    ] {
        let out = cli(&args, &good);
        assert!(out.status.success(), "shoal {args:?} over TLS: {out:?}");
    }
    let out = cli(&["database", "list", "--json"], &good);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // A plaintext CLI: one line, at once.
    let started = Instant::now();
    let plain = cli(
        &["database", "list"],
        &[
            "--confignode".to_string(),
            cn_addr.clone(),
            "--admin-secret-file".to_string(),
            admin_secret.clone(),
        ],
    );
    let line = one_error_line(&plain);
    assert!(line.contains("requires TLS"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(10), "not at once");

    // A CA and admin certificate from another `shoal up --tls`.
    let other = root.path().join("other");
    let names = ["admin".to_string()];
    let local = shoal_nodes::security::generate_local_tls(&other, &names).expect("other CA");
    let (cert, key) = local.identity("admin");
    let line = one_error_line(&cli(
        &["database", "list"],
        &connection(&local.ca_cert, &cert, &key),
    ));
    assert!(line.contains("does not trust"), "{line}");
    // The right CA, a client certificate from the other: the node refuses it.
    let line = one_error_line(&cli(
        &["database", "list"],
        &connection(&tls.join("ca.pem"), &cert, &key),
    ));
    assert!(line.contains("refused this client's certificate"), "{line}");
    up.stop();
}
