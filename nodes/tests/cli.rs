//! The admin CLI as a user meets it, against a real `shoal` binary: it never waits silently
//! for a ConfigNode that does not answer, gives up with one `error:` line, and refuses
//! invalid requests at once with one `error:` line whichever side finds them.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 127.0.0.1 address nobody listens on (bound, then released).
fn dead_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    drop(listener);
    address
}

fn secret_file(dir: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("admin.secret");
    std::fs::write(&path, "some-secret\n").expect("write secret");
    // Nodes and the CLI refuse secret files others can read.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_list_against_an_address_nobody_listens_on_says_it_is_waiting_then_gives_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let address = dead_address();
    let started = Instant::now();
    let mut child = Command::new(EXE)
        .args([
            "datanode",
            "list",
            "--confignode",
            &address,
            "--secret-file",
        ])
        .arg(&secret)
        .args(["--timeout-secs", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let stderr = child.stderr.take().expect("stderr");
    let mut child = Proc(child);
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send((started.elapsed(), line)).is_err() {
                break;
            }
        }
    });

    // Printed after 1 s; the bound is generous for a loaded machine.
    let (at, first) = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("a line on stderr");
    assert!(
        first.starts_with(&format!("waiting for the ConfigNode at {address}")),
        "{first}"
    );
    assert!(
        at < Duration::from_secs(3),
        "the waiting line came after {at:?}"
    );

    let mut rest = Vec::new();
    while let Ok((_, line)) = lines.recv_timeout(Duration::from_secs(30)) {
        rest.push(line);
    }
    let status = child.0.wait().expect("exit status");
    let elapsed = started.elapsed();
    assert_eq!(
        status.code(),
        Some(1),
        "stderr after the first line: {rest:?}"
    );
    assert!(
        elapsed >= Duration::from_secs(4),
        "gave up after {elapsed:?}"
    );
    assert!(
        !rest.iter().any(|l| l.starts_with("waiting")),
        "the waiting line was repeated: {rest:?}"
    );
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(
        rest[0].starts_with("error: ") && rest[0].contains(&address),
        "{rest:?}"
    );
}

#[test]
fn invalid_requests_fail_at_once_with_one_error_line_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = secret_file(dir.path());
    let address = dead_address();
    let secret = secret.display().to_string();
    let connection = ["--confignode", &address, "--secret-file", &secret];
    for (args, expected) in [
        (vec!["database", "create", "x", "--rf", "8"], "1..=7"),
        (vec!["database", "create", "x", "--rf", "0"], "1..=7"),
        (vec!["database", "create", "x", "--rf", "300"], "1..=7"),
        (
            vec!["database", "create", "9x"],
            "invalid request: invalid database name",
        ),
        (
            vec!["database", "delete", "no-dash"],
            "invalid request: invalid database name",
        ),
        (
            vec!["region", "list", "--database", "a b"],
            "invalid request: invalid database name",
        ),
        (
            vec!["procedure", "show", "proc-x"],
            "invalid request: invalid procedure id",
        ),
    ] {
        let started = Instant::now();
        let out = Command::new(EXE)
            .args(&args)
            .args(connection)
            .args(["--timeout-secs", "60"])
            .output()
            .expect("run shoal");
        let errors = error_lines(&out);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert_eq!(errors.len(), 1, "{args:?}: {errors:?}");
        assert!(errors[0].contains(expected), "{args:?}: {}", errors[0]);
        // Refused before any call: no waiting for the (absent) ConfigNode.
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains("waiting for"),
            "{args:?} waited"
        );
    }
}

#[test]
fn a_request_the_confignode_finds_invalid_is_refused_with_one_error_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("cn");
    let child = Command::new(EXE)
        .args(["confignode", "--data-dir"])
        .arg(&data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn confignode");
    let _confignode = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let address = loop {
        if let Ok(text) = std::fs::read_to_string(data_dir.join("listen.addr")) {
            break text.trim().to_string();
        }
        assert!(Instant::now() < deadline, "the ConfigNode did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = Command::new(EXE)
        .args([
            "database",
            "create",
            "big",
            "--rf",
            "1",
            "--data-groups",
            "5000",
        ])
        .args(["--confignode", &address, "--admin-secret-file"])
        .arg(data_dir.join("admin.secret"))
        .args(["--timeout-secs", "60"])
        .output()
        .expect("run shoal");
    let errors = error_lines(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("error: refused: invalid request: ") && errors[0].contains("4096"),
        "{}",
        errors[0]
    );
}
