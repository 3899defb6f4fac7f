//! What an operator sees, against real `shoal` processes: `/metrics` moves as a database is
//! created and deleted (and parses as exposition format), the status page shows a slow
//! deletion in progress, the procedure listings and `shoal status` read well in text and
//! JSON, JSON logs are JSON, and shell completions come out.
#![cfg(all(feature = "storage-fs", not(feature = "storage-mem")))]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_shoal");
const BOUND: Duration = Duration::from_secs(90);

/// A child process, SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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

/// One ConfigNode and one DataNode, each serving metrics on an ephemeral port.
struct Cluster {
    root: tempfile::TempDir,
    _nodes: Vec<Proc>,
    cn_addr: String,
    cn_metrics: String,
    dn_metrics: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.root.disable_cleanup(true);
            eprintln!("cluster files kept in {}", self.root.path().display());
        }
    }
}

/// Spawns `shoal args` (stderr to `log`) and waits for `dir/file` to hold an address.
fn spawn(dir: &Path, log: &Path, args: &[&str]) -> (Proc, String, String) {
    std::fs::create_dir_all(dir).expect("data dir");
    let log = std::fs::File::create(log).expect("log file");
    let child = Command::new(EXE)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn shoal");
    let mut proc = Proc(child);
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
    };
    let (listen, metrics) = wait_until("a node to listen", BOUND, || {
        if let Ok(Some(status)) = proc.0.try_wait() {
            panic!("shoal {args:?} exited early: {status}");
        }
        Some((read("listen.addr")?, read("metrics.addr")?))
    });
    (proc, listen, metrics)
}

impl Cluster {
    fn start(delete_rate: Option<&str>) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let cn_dir = root.path().join("cn");
        let (cn, cn_addr, cn_metrics) = spawn(
            &cn_dir,
            &root.path().join("cn.log"),
            &[
                "confignode",
                "--data-dir",
                &cn_dir.display().to_string(),
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
            ],
        );
        let dn_dir = root.path().join("dn");
        let mut args: Vec<String> = [
            "datanode",
            "--data-dir",
            &dn_dir.display().to_string(),
            "--listen",
            "127.0.0.1:0",
            "--confignode",
            &cn_addr,
            "--internal-secret-file",
            &cn_dir.join("internal.secret").display().to_string(),
            "--admin-secret-file",
            &cn_dir.join("admin.secret").display().to_string(),
            "--metrics-listen",
            "127.0.0.1:0",
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        if let Some(rate) = delete_rate {
            args.extend(["--delete-rate".to_string(), rate.to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (dn, _, dn_metrics) = spawn(&dn_dir, &root.path().join("dn.log"), &args);
        let cluster = Cluster {
            root,
            _nodes: vec![cn, dn],
            cn_addr,
            cn_metrics,
            dn_metrics,
        };
        wait_until("the DataNode to register", BOUND, || {
            let nodes = cluster.json(&["datanode", "list"]);
            (nodes.as_array().map_or(0, Vec::len) == 1).then_some(())
        });
        cluster
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(EXE)
            .args(args)
            .args(["--confignode", &self.cn_addr, "--admin-secret-file"])
            .arg(self.root.path().join("cn/admin.secret"))
            .args(["--timeout-secs", "80"])
            .output()
            .expect("run shoal")
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

    fn create(&self, db: &str, groups: &str) {
        self.cli_ok(&[
            "database",
            "create",
            db,
            "--data-groups",
            groups,
            "--schema-groups",
            "1",
            "--rf",
            "1",
        ]);
    }

    fn log(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }
}

/// `GET path` over HTTP/1.0 (the server closes the connection): status line, headers, body.
fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head.to_string(), body.to_string())
}

/// One sample: metric name and sorted labels.
type Key = (String, BTreeMap<String, String>);

/// Parses the text exposition format (the OpenMetrics text that prometheus-client writes,
/// which is also valid 0.0.4 text): every line is a `# HELP/TYPE/UNIT` line, the final
/// `# EOF`, or `name{label="value",...} number`, every sample belongs to a declared family,
/// and histogram buckets are cumulative with `+Inf` equal to `_count`. Panics naming the
/// first line that breaks a rule.
fn parse_exposition(text: &str) -> BTreeMap<Key, f64> {
    let valid_name = |name: &str| {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "the text ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT") && valid_name(name),
                "bad comment line {line:?}"
            );
            if kind == "TYPE" {
                let ty = parts.next().unwrap_or("");
                assert!(
                    matches!(
                        ty,
                        "counter"
                            | "gauge"
                            | "histogram"
                            | "summary"
                            | "info"
                            | "stateset"
                            | "unknown"
                    ),
                    "bad type in {line:?}"
                );
                families.insert(name.to_string(), ty.to_string());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                (name, parse_labels(body, line))
            }
        };
        assert!(valid_name(name), "bad metric name in {line:?}");
        let family = ["_total", "_bucket", "_sum", "_count", "_created", ""]
            .iter()
            .find_map(|suffix| {
                let base = name.strip_suffix(suffix)?;
                families.contains_key(base).then_some(base)
            });
        assert!(family.is_some(), "sample of an undeclared family: {line:?}");
        let previous = samples.insert((name.to_string(), labels), value);
        assert!(previous.is_none(), "duplicate sample {line:?}");
    }
    check_histograms(&families, &samples);
    samples
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "label value not quoted in {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?} in {line:?}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value in {line:?}"),
            }
        }
        labels.insert(name, value);
        match chars.next() {
            Some(',') | None => {}
            Some(c) => panic!("unexpected {c:?} after a label in {line:?}"),
        }
    }
    labels
}

fn check_histograms(families: &BTreeMap<String, String>, samples: &BTreeMap<Key, f64>) {
    for (family, _) in families.iter().filter(|(_, ty)| *ty == "histogram") {
        let bucket = format!("{family}_bucket");
        let mut series: BTreeMap<BTreeMap<String, String>, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in samples {
            if *name != bucket {
                continue;
            }
            let mut rest = labels.clone();
            let le = rest.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().expect("le is a number")
            };
            series.entry(rest).or_default().push((le, *value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{family}{labels:?}: buckets not cumulative"
            );
            let count = samples[&(format!("{family}_count"), labels.clone())];
            assert_eq!(
                buckets.last().map(|b| (b.0, b.1)),
                Some((f64::INFINITY, count)),
                "{family}{labels:?}: +Inf bucket is the count"
            );
        }
    }
}

fn scrape(addr: &str) -> BTreeMap<Key, f64> {
    let (status, head, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    parse_exposition(&body)
}

/// The sum of every sample named `name` whose labels include `with`.
fn sum(samples: &BTreeMap<Key, f64>, name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|((n, labels), _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_move_with_a_create_and_a_delete_and_parse_as_exposition_format() {
    let cluster = Cluster::start(None);
    let cn0 = scrape(&cluster.cn_metrics);
    let dn0 = scrape(&cluster.dn_metrics);
    assert_eq!(sum(&cn0, "shoal_is_leader", &[]), 1.0);
    assert!(sum(&cn0, "shoal_leader_epoch", &[]) >= 1.0);
    assert_eq!(
        sum(&cn0, "shoal_datanode_status", &[("status", "running")]),
        1.0
    );
    assert_eq!(sum(&dn0, "shoal_datanode_regions", &[]), 0.0);

    cluster.create("metrics", "4");
    let cn1 = scrape(&cluster.cn_metrics);
    let dn1 = scrape(&cluster.dn_metrics);
    let steps = "shoal_procedure_step_duration_seconds_count";
    let create = [("procedure", "CreateRegionGroups")];
    assert!(
        sum(&cn1, steps, &create) > sum(&cn0, steps, &create),
        "the create ran steps"
    );
    let commits = "shoal_commit_duration_seconds_count";
    assert!(sum(&cn1, commits, &[("outcome", "ok")]) > sum(&cn0, commits, &[("outcome", "ok")]));
    let fsyncs = "shoal_fsync_duration_seconds_count";
    assert!(sum(&cn1, fsyncs, &[("file", "log")]) > sum(&cn0, fsyncs, &[("file", "log")]));
    assert_eq!(
        sum(
            &cn1,
            "shoal_procedures",
            &[("type", "CreateRegionGroups"), ("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(
        sum(&cn1, "shoal_region_groups", &[]),
        5.0,
        "4 data + 1 schema groups"
    );
    assert_eq!(sum(&cn1, "shoal_databases", &[]), 1.0);
    let rpcs = "shoal_rpc_calls_total";
    assert!(
        sum(
            &cn1,
            rpcs,
            &[
                ("method", "ConfigNode.startCreateDatabase"),
                ("outcome", "success")
            ]
        ) >= 1.0,
        "the CLI's submit is counted on the ConfigNode"
    );
    assert_eq!(
        sum(
            &dn1,
            rpcs,
            &[("method", "DataNode.createRegion"), ("outcome", "success")]
        ),
        5.0,
        "one create per replica on the DataNode"
    );
    assert_eq!(sum(&dn1, "shoal_datanode_regions", &[]), 5.0);

    cluster.cli_ok(&["load", "metrics", "--bytes", "64KiB"]);
    cluster.cli_ok(&["database", "delete", "metrics", "--wait"]);
    let cn2 = scrape(&cluster.cn_metrics);
    let dn2 = scrape(&cluster.dn_metrics);
    let tasks = "shoal_datanode_task_duration_seconds_count";
    assert_eq!(
        sum(&dn2, tasks, &[("outcome", "success")]) - sum(&dn1, tasks, &[("outcome", "success")]),
        5.0,
        "one finished deletion task per replica"
    );
    assert_eq!(sum(&dn2, tasks, &[("outcome", "failure")]), 0.0);
    assert!(
        sum(&dn2, fsyncs, &[("file", "journal")]) > sum(&dn1, fsyncs, &[("file", "journal")]),
        "the task journal was synced"
    );
    assert!(
        sum(&dn2, rpcs, &[("method", "DataNode.submitTask")]) >= 5.0,
        "every deletion was submitted"
    );
    assert_eq!(sum(&dn2, "shoal_datanode_regions", &[]), 0.0);
    assert_eq!(sum(&dn2, "shoal_datanode_region_bytes", &[]), 0.0);
    assert_eq!(
        sum(
            &cn2,
            "shoal_procedures",
            &[("type", "DeleteDatabase"), ("status", "succeeded")]
        ),
        1.0
    );
    assert_eq!(sum(&cn2, "shoal_databases", &[]), 0.0);
    assert_eq!(sum(&cn2, "shoal_procedures_runnable", &[]), 0.0);
    assert_eq!(sum(&cn2, "shoal_procedures_waiting", &[]), 0.0);
    let delete_steps = [("procedure", "DeleteDatabase")];
    assert!(sum(&cn2, steps, &delete_steps) > 0.0);

    let (status, _, body) = http_get(&cluster.cn_metrics, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, _) = http_get(&cluster.cn_metrics, "/nothing-here");
    assert_eq!(status, 404);
}

#[test]
fn status_page_shows_a_slow_deletion_and_its_progress() {
    // 64 KiB per replica at 16 KiB/s: each deletion takes about 4 s.
    let cluster = Cluster::start(Some("16KiB"));
    cluster.create("slow", "4");
    cluster.cli_ok(&["load", "slow", "--bytes", "256KiB"]);
    cluster.cli_ok(&["database", "delete", "slow"]);
    let page = wait_until("the deletion on the status page", BOUND, || {
        let (status, head, body) = http_get(&cluster.cn_metrics, "/");
        assert_eq!(status, 200, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/html"),
            "{head}"
        );
        (body.contains("DeleteDatabase") && body.contains("children done")).then_some(body)
    });
    assert!(
        page.contains("<meta http-equiv=\"refresh\""),
        "refreshes itself"
    );
    assert!(page.contains("waiting for its children"), "{page}");
    assert!(
        !page.contains("<script"),
        "plain server-rendered HTML, no JavaScript"
    );
    // The listing agrees while it runs: the parent waits for its children.
    let listing = cluster.cli_ok(&["procedure", "list", "--status", "suspended"]);
    assert!(
        listing.contains("DeleteDatabase") && listing.contains("waiting for its children"),
        "{listing}"
    );
    let status = cluster.cli_ok(&["status"]);
    assert!(status.contains("1 suspended"), "{status}");
    wait_until("the deletion to finish", BOUND, || {
        let list = cluster.json(&["database", "list"]);
        list.as_array().is_some_and(Vec::is_empty).then_some(())
    });
}

#[test]
fn listings_status_and_logs_read_well() {
    let cluster = Cluster::start(None);
    cluster.create("alpha", "2");
    cluster.create("beta", "2");
    cluster.cli_ok(&["database", "delete", "alpha", "--wait"]);

    let text = cluster.cli_ok(&["procedure", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("STATUS") && lines[0].contains("SUBMITTED"),
        "a header row: {text}"
    );
    let ids: Vec<u64> = lines[1..]
        .iter()
        .map(|l| {
            l.split_whitespace()
                .next()
                .and_then(|id| id.trim_start_matches("proc-").parse().ok())
                .unwrap_or_else(|| panic!("no id in {l:?}"))
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    let rfc3339 = |t: &str| {
        t.len() == 24 && t.as_bytes()[4] == b'-' && t.as_bytes()[10] == b'T' && t.ends_with('Z')
    };
    assert!(
        lines[1..].iter().all(|l| l.split_whitespace().any(rfc3339)),
        "wall-clock RFC 3339 times: {text}"
    );

    let deletes = cluster.json(&["procedure", "list", "--type", "DeleteDatabase"]);
    // Field names of earlier releases stay (type_name, state_name, status, finished, ...).
    let deletes = deletes.as_array().expect("a list");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    let delete = &deletes[0];
    assert_eq!(delete["type_name"], "DeleteDatabase");
    assert_eq!(delete["status"], "Succeeded");
    assert_eq!(delete["finished"], true);
    assert_eq!(delete["database"], "alpha");
    assert!(
        delete["submitted"].as_str().is_some_and(rfc3339),
        "{delete}"
    );
    assert!(delete["duration_ms"].is_u64(), "{delete}");
    assert!(
        delete["children"].as_array().is_some_and(|c| c.len() == 3),
        "{delete}"
    );
    assert_eq!(delete["children_done"], 3);

    let alpha = cluster.json(&["procedure", "list", "--database", "alpha"]);
    let alpha = alpha.as_array().expect("a list");
    assert_eq!(
        alpha.len(),
        5,
        "alpha's create, its delete and the delete's 3 children: {alpha:?}"
    );
    assert!(alpha.iter().all(|p| p["database"] == "alpha"));
    let newest = cluster.json(&["procedure", "list", "--limit", "1"]);
    assert_eq!(newest.as_array().map(Vec::len), Some(1));
    assert_eq!(newest[0]["id"], ids[0]);
    let failed = cluster.cli_ok(&["procedure", "list", "--status", "failed"]);
    assert_eq!(failed.lines().count(), 1, "only the header: {failed}");
    let bad = cluster.cli(&["procedure", "list", "--database", "not a name"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).starts_with("error: invalid request"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let id = format!("proc-{}", delete["id"]);
    let shown = cluster.cli_ok(&["procedure", "show", &id]);
    for want in [
        "duration:",
        "attempts:",
        "children:   3 of 3 children done",
        "database:   alpha",
    ] {
        assert!(shown.contains(want), "missing {want:?}: {shown}");
    }

    let status = cluster.json(&["status"]);
    assert_eq!(status["leader"], cluster.cn_addr.as_str());
    assert!(status["epoch"].as_u64().is_some_and(|e| e >= 1), "{status}");
    assert_eq!(status["data_nodes"].as_array().map(Vec::len), Some(1));
    assert_eq!(status["databases"][0]["name"], "beta");
    assert_eq!(status["databases"][0]["region_groups"], 3);
    assert_eq!(
        status["procedures"]["Succeeded"], 6,
        "2 creates, a delete and its 3 children"
    );
    assert_eq!(status["procedures"]["Failed"], 0);
    assert_eq!(status["queued_creates"], 0);
    let text = cluster.cli_ok(&["status"]);
    for want in [
        "leader: ",
        "DataNodes: 1 (1 running)",
        "Databases: 1",
        "Maintain queue: 0",
    ] {
        assert!(text.contains(want), "missing {want:?}: {text}");
    }

    // --watch refreshes; on a pipe it never clears the screen.
    let mut watch = Command::new(EXE)
        .args(["status", "--watch", "1", "--confignode", &cluster.cn_addr])
        .arg("--admin-secret-file")
        .arg(cluster.root.path().join("cn/admin.secret"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    std::thread::sleep(Duration::from_millis(2_500));
    let _ = watch.kill();
    let out = watch.wait_with_output().expect("watch output");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.matches("Maintain queue").count() >= 2,
        "refreshed: {out}"
    );
    assert!(!out.contains('\x1b'), "no escape codes on a pipe: {out:?}");

    // --log-format json: every line is one JSON object; procedure lines carry the id.
    let log = std::fs::read_to_string(cluster.log("cn.log")).expect("log");
    let mut with_procedure = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
        if value["fields"]["procedure"].is_string() || value["span"]["procedure"].is_string() {
            with_procedure += 1;
        }
    }
    assert!(
        with_procedure > 0,
        "no procedure line carries its id:\n{log}"
    );
    let dn_log = std::fs::read_to_string(cluster.log("dn.log")).expect("log");
    assert!(!dn_log.contains('\x1b'), "no colours in a log file");
}

#[test]
fn completions_come_out_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(EXE)
            .args(["completions", shell])
            .output()
            .expect("run shoal");
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("shoal")
                && script.contains("procedure")
                && script.contains("metrics-listen"),
            "{shell}: {script}"
        );
    }
    let bad = Command::new(EXE)
        .args(["completions", "cmd"])
        .output()
        .expect("run shoal");
    assert!(!bad.status.success(), "an unknown shell is refused");
}
