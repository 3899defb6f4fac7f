//! `shoal up`: a local cluster of child processes of this executable — 1 ConfigNode (or a
//! replicated group of `--confignodes N`) and 3 DataNodes on 127.0.0.1, each with its own
//! data directory — stopped together on Ctrl-C.
//!
//! A single ConfigNode or a DataNode that exits stops the cluster (`shoal up` is no
//! supervisor). A member of a ConfigNode group that exits (say, a leader killed to watch the
//! group fail over) is started again after a short pause while the others carry on, as a
//! supervisor would; the restarted member catches up from the leader.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::CliError;
use crate::process::{LISTEN_ADDR_FILE, ensure_dir};
use crate::security::{LOCAL_TLS_DIR, LocalTls, generate_local_tls};

/// DataNodes `shoal up` starts.
pub const UP_DATA_NODES: usize = 3;

/// A child node; stopped (SIGTERM, then SIGKILL after a grace period) when dropped.
#[derive(Debug)]
pub struct ChildNode {
    name: String,
    child: Child,
    exe: PathBuf,
    args: Vec<String>,
    /// Restarted when it exits (a ConfigNode group member), instead of stopping the cluster.
    restart: bool,
}

impl ChildNode {
    /// Starts `exe args...` as node `name`.
    pub fn spawn(name: &str, exe: &Path, args: &[String]) -> Result<Self, CliError> {
        let child = Command::new(exe)
            .args(args)
            .spawn()
            .map_err(|e| CliError::io("cannot start", exe, e))?;
        Ok(Self {
            name: name.to_string(),
            child,
            exe: exe.to_path_buf(),
            args: args.to_vec(),
            restart: false,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts it again with the same arguments.
    fn respawn(&mut self) -> Result<(), CliError> {
        self.child = Command::new(&self.exe)
            .args(&self.args)
            .spawn()
            .map_err(|e| CliError::io("cannot start", &self.exe, e))?;
        Ok(())
    }

    /// Whether it has exited (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Asks it to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop in {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Waits until `dir/listen.addr` exists and returns the address in it.
pub fn wait_listen_addr(
    dir: &Path,
    child: &mut ChildNode,
    within: Duration,
) -> Result<String, CliError> {
    let path = dir.join(LISTEN_ADDR_FILE);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            return Ok(text.trim().to_string());
        }
        if let Some(status) = child.exited() {
            return Err(CliError::Node(format!(
                "{} exited ({status}) before listening",
                child.name
            )));
        }
        if Instant::now() >= deadline {
            return Err(CliError::Node(format!(
                "{} wrote no {} within {within:?}",
                child.name,
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `shoal up`'s settings.
#[derive(Debug, Clone)]
pub struct UpSettings {
    /// Root data directory.
    pub data_dir: PathBuf,
    /// The first ConfigNode's port; further ConfigNodes, then DataNodes, take the next ones.
    pub port: u16,
    /// ConfigNodes to start (more than one: a replicated group).
    pub confignodes: u8,
    /// DataNodes' deletion rate limit (as given on the command line).
    pub delete_rate: Option<String>,
    /// TLS everywhere (also when DATA_DIR/tls already exists).
    pub tls: bool,
    /// Every node's log format (`None`: the nodes' default, text).
    pub log_format: Option<crate::cli::LogFormat>,
}

/// The metrics port of `shoal up`'s node number `index` (ConfigNodes first, then DataNodes,
/// 0-based): the ports right after the nodes' own.
fn metrics_port(settings: &UpSettings, confignodes: usize, index: usize) -> String {
    format!(
        "127.0.0.1:{}",
        usize::from(settings.port) + confignodes + UP_DATA_NODES + index
    )
}

/// A node's `--metrics-listen` and `--log-format` flags.
fn ops_args(settings: &UpSettings, metrics: &str) -> Vec<String> {
    let mut args = vec!["--metrics-listen".to_string(), metrics.to_string()];
    if let Some(format) = settings.log_format {
        args.extend(["--log-format".to_string(), format.as_str().to_string()]);
    }
    args
}

/// The local CA and certificates, when the cluster runs with TLS: asked for, or made by an
/// earlier `--tls` run in this data directory (a cluster never silently drops TLS).
fn local_tls(settings: &UpSettings, confignodes: usize) -> Result<Option<LocalTls>, CliError> {
    let dir = settings.data_dir.join(LOCAL_TLS_DIR);
    if !settings.tls && !LocalTls::at(&dir).ca_cert.exists() {
        return Ok(None);
    }
    let group = confignodes > 1;
    let mut names: Vec<String> = (0..confignodes)
        .map(|i| confignode_name(i, group))
        .collect();
    names.push("admin".to_string());
    names.extend((1..=UP_DATA_NODES).map(|i| format!("datanode-{i}")));
    generate_local_tls(&dir, &names).map(Some)
}

/// The `i`-th (0-based) ConfigNode's process name (and TLS identity).
fn confignode_name(i: usize, group: bool) -> String {
    if group {
        format!("confignode-{}", i + 1)
    } else {
        "confignode".to_string()
    }
}

/// A node's TLS flags under the local CA.
fn tls_args(tls: Option<&LocalTls>, name: &str) -> Vec<String> {
    let Some(local) = tls else {
        return Vec::new();
    };
    let (cert, key) = local.identity(name);
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
        "--tls-ca".into(),
        local.ca_cert.display().to_string(),
        "--tls-require-client-cert".into(),
    ]
}

/// Runs the local cluster until `stop` yields or a node exits (see the module docs).
pub fn run_up(settings: UpSettings, stop: async_channel::Receiver<()>) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::io("cannot find", "shoal", e))?;
    let count = usize::from(settings.confignodes.max(1));
    let group = count > 1;
    let cn_dirs: Vec<PathBuf> = (1..=count)
        .map(|i| {
            // The first keeps `confignode/`, where admin commands look for the secret.
            if i == 1 {
                settings.data_dir.join("confignode")
            } else {
                settings.data_dir.join(format!("confignode-{i}"))
            }
        })
        .collect();
    let cn_listen: Vec<String> = (0..count)
        .map(|i| format!("127.0.0.1:{}", settings.port as usize + i))
        .collect();
    let tls = local_tls(&settings, count)?;
    // The first ConfigNode generates both secrets before it listens; the others, and the
    // DataNodes, share them.
    let first = &cn_dirs[0];
    let internal_secret = first.join(shoal_transport_capnp::INTERNAL_SECRET_FILE_NAME);
    let admin_secret = first.join(shoal_transport_capnp::ADMIN_SECRET_FILE_NAME);
    let legacy_secret = first.join(shoal_transport_capnp::SECRET_FILE_NAME);
    // A data directory of an older release keeps its one secret (the ConfigNode does too).
    let legacy = !internal_secret.exists() && legacy_secret.exists();
    let secret_args: Vec<String> = if legacy {
        vec!["--secret-file".into(), legacy_secret.display().to_string()]
    } else {
        vec![
            "--internal-secret-file".into(),
            internal_secret.display().to_string(),
            "--admin-secret-file".into(),
            admin_secret.display().to_string(),
        ]
    };
    let secret_file = if legacy {
        legacy_secret.clone()
    } else {
        admin_secret.clone()
    };
    let mut nodes = Vec::new();
    for (i, dir) in cn_dirs.iter().enumerate() {
        ensure_dir(dir)?;
        // A stale address from an earlier run must not be mistaken for this one's.
        let _ = std::fs::remove_file(dir.join(LISTEN_ADDR_FILE));
        let name = confignode_name(i, group);
        let mut args = vec![
            "confignode".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            cn_listen[i].clone(),
        ];
        if group {
            args.extend(["--peers".to_string(), cn_listen.join(",")]);
        }
        if i > 0 {
            args.extend(secret_args.iter().cloned());
        }
        args.extend(ops_args(&settings, &metrics_port(&settings, count, i)));
        args.extend(tls_args(tls.as_ref(), &name));
        let mut node = ChildNode::spawn(&name, &exe, &args)?;
        node.restart = group;
        // The first must be up (its secrets written) before the others start; in a group the
        // others then start at once (the first waits for them to elect a leader).
        if i == 0 || !group {
            wait_listen_addr(dir, &mut node, Duration::from_secs(30))?;
        }
        nodes.push(node);
    }
    for (i, dir) in cn_dirs.iter().enumerate().skip(1) {
        wait_listen_addr(dir, &mut nodes[i], Duration::from_secs(30))?;
    }
    let cn_addrs = cn_listen.join(",");
    crate::process::write_atomically(
        &settings.data_dir.join(crate::cli::CONFIGNODES_FILE),
        &format!("{cn_addrs}\n"),
    )?;
    for i in 1..=UP_DATA_NODES {
        let dir = settings.data_dir.join(format!("datanode-{i}"));
        ensure_dir(&dir)?;
        let _ = std::fs::remove_file(dir.join(LISTEN_ADDR_FILE));
        let port = settings.port as usize + count - 1 + i;
        let mut args = vec![
            "datanode".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--confignode".into(),
            cn_addrs.clone(),
        ];
        args.extend(secret_args.iter().cloned());
        args.extend(tls_args(tls.as_ref(), &format!("datanode-{i}")));
        args.extend(ops_args(
            &settings,
            &metrics_port(&settings, count, count + i - 1),
        ));
        if let Some(rate) = &settings.delete_rate {
            args.extend(["--delete-rate".to_string(), rate.clone()]);
        }
        let mut node = ChildNode::spawn(&format!("datanode-{i}"), &exe, &args)?;
        wait_listen_addr(&dir, &mut node, Duration::from_secs(30))?;
        nodes.push(node);
    }
    let secret = secret_file.display();
    let tls_note = match &tls {
        Some(local) => format!(
            "TLS: on (mutual), CA and certificates in {}\n",
            local.dir.display()
        ),
        None => String::new(),
    };
    let tls_flags = match &tls {
        Some(local) => {
            let (cert, key) = local.identity("admin");
            format!(
                " --tls-ca {} --tls-cert {} --tls-key {}",
                local.ca_cert.display(),
                cert.display(),
                key.display()
            )
        }
        None => String::new(),
    };
    let processes: String = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "  {} pid {}, metrics http://{}/metrics\n",
                n.name,
                n.pid(),
                metrics_port(&settings, count, i)
            )
        })
        .collect();
    let status_pages: Vec<String> = (0..count)
        .map(|i| format!("http://{}/", metrics_port(&settings, count, i)))
        .collect();
    let status_page = if group {
        format!(
            "status pages: {} (the leader's shows the procedures)\n",
            status_pages.join(" ")
        )
    } else {
        format!("status page: {}\n", status_pages.join(" "))
    };
    let kind = if group {
        format!("a group of {count} ConfigNodes (Raft) at {cn_addrs}")
    } else {
        format!("ConfigNode {cn_addrs}")
    };
    let group_tips = if group {
        "  shoal confignode list                  # members, and who leads\n  \
         kill -9 <the leader's pid>             # the others elect a new leader; up restarts it\n"
    } else {
        ""
    };
    println!(
        "\nshoal: local cluster up: {kind}, {UP_DATA_NODES} DataNodes, data in {}\n\
         admin secret file: {secret}\n{tls_note}{processes}{status_page}\n\
         try (from this directory):\n  \
         shoal status\n  \
         shoal datanode list\n  \
         shoal database create metrics --data-groups 16 --rf 3\n  \
         shoal load metrics --bytes 64MiB\n  \
         shoal region list --database metrics\n  \
         shoal database delete metrics --wait\n  \
         shoal procedure list\n{group_tips}\
         (elsewhere: add --confignode {cn_addrs} --admin-secret-file {secret}{tls_flags})\n\nCtrl-C stops the cluster.\n",
        settings.data_dir.display()
    );
    let outcome = loop {
        if stop.try_recv().is_ok() {
            break Ok(());
        }
        let mut failed = None;
        for node in nodes.iter_mut() {
            let Some(status) = node.exited() else {
                continue;
            };
            if !node.restart {
                failed = Some((node.name.clone(), status));
                break;
            }
            eprintln!(
                "shoal: {} (pid {}) exited ({status}); the group carries on; restarting it",
                node.name,
                node.pid()
            );
            std::thread::sleep(Duration::from_secs(1));
            node.respawn()?;
            eprintln!("shoal: {} restarted (pid {})", node.name, node.pid());
        }
        if let Some((name, status)) = failed {
            break Err(CliError::Node(format!(
                "{name} exited ({status}); stopping the cluster"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("shoal: stopping the cluster");
    // DataNodes first, then the ConfigNodes.
    while let Some(mut node) = nodes.pop() {
        node.stop(Duration::from_secs(10));
    }
    outcome
}
