//! `shoal up`: a local cluster of child processes of this executable — 1 ConfigNode and 3
//! DataNodes on 127.0.0.1, each with its own data directory — stopped together on Ctrl-C.

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
        })
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
    /// The ConfigNode's port; DataNodes take the next ones.
    pub port: u16,
    /// DataNodes' deletion rate limit (as given on the command line).
    pub delete_rate: Option<String>,
    /// TLS everywhere (also when DATA_DIR/tls already exists).
    pub tls: bool,
}

/// The local CA and certificates, when the cluster runs with TLS: asked for, or made by an
/// earlier `--tls` run in this data directory (a cluster never silently drops TLS).
fn local_tls(settings: &UpSettings) -> Result<Option<LocalTls>, CliError> {
    let dir = settings.data_dir.join(LOCAL_TLS_DIR);
    if !settings.tls && !LocalTls::at(&dir).ca_cert.exists() {
        return Ok(None);
    }
    let mut names = vec!["confignode".to_string(), "admin".to_string()];
    names.extend((1..=UP_DATA_NODES).map(|i| format!("datanode-{i}")));
    generate_local_tls(&dir, &names).map(Some)
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

/// Runs the local cluster until `stop` yields or a node exits.
pub fn run_up(settings: UpSettings, stop: async_channel::Receiver<()>) -> Result<(), CliError> {
    let exe = std::env::current_exe().map_err(|e| CliError::io("cannot find", "shoal", e))?;
    let cn_dir = settings.data_dir.join("confignode");
    ensure_dir(&cn_dir)?;
    // A stale address from an earlier run must not be mistaken for this one's.
    let _ = std::fs::remove_file(cn_dir.join(LISTEN_ADDR_FILE));
    let cn_listen = format!("127.0.0.1:{}", settings.port);
    let tls = local_tls(&settings)?;
    let mut nodes = Vec::new();
    let mut cn_args = vec![
        "confignode".into(),
        "--data-dir".into(),
        cn_dir.display().to_string(),
        "--listen".into(),
        cn_listen,
    ];
    cn_args.extend(tls_args(tls.as_ref(), "confignode"));
    let mut confignode = ChildNode::spawn("confignode", &exe, &cn_args)?;
    let cn_addr = wait_listen_addr(&cn_dir, &mut confignode, Duration::from_secs(30))?;
    nodes.push(confignode);
    // The ConfigNode generated both secrets before it listened.
    let internal_secret = cn_dir.join(shoal_transport_capnp::INTERNAL_SECRET_FILE_NAME);
    let admin_secret = cn_dir.join(shoal_transport_capnp::ADMIN_SECRET_FILE_NAME);
    let legacy_secret = cn_dir.join(shoal_transport_capnp::SECRET_FILE_NAME);
    // A data directory of an older release keeps its one secret (the ConfigNode does too).
    let secret_args: Vec<String> = if !internal_secret.exists() && legacy_secret.exists() {
        vec!["--secret-file".into(), legacy_secret.display().to_string()]
    } else {
        vec![
            "--internal-secret-file".into(),
            internal_secret.display().to_string(),
            "--admin-secret-file".into(),
            admin_secret.display().to_string(),
        ]
    };
    let secret_file = if internal_secret.exists() {
        admin_secret.clone()
    } else {
        legacy_secret.clone()
    };
    for i in 1..=UP_DATA_NODES {
        let dir = settings.data_dir.join(format!("datanode-{i}"));
        ensure_dir(&dir)?;
        let _ = std::fs::remove_file(dir.join(LISTEN_ADDR_FILE));
        let port = settings.port as usize + i;
        let mut args = vec![
            "datanode".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--confignode".into(),
            cn_addr.clone(),
        ];
        args.extend(secret_args.iter().cloned());
        args.extend(tls_args(tls.as_ref(), &format!("datanode-{i}")));
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
    println!(
        "\nshoal: local cluster up: ConfigNode {cn_addr}, {UP_DATA_NODES} DataNodes, data in {}\n\
         admin secret file: {secret}\n{tls_note}\n\
         try (from this directory):\n  \
         shoal datanode list\n  \
         shoal database create metrics --data-groups 16 --rf 3\n  \
         shoal load metrics --bytes 64MiB\n  \
         shoal region list --database metrics\n  \
         shoal database delete metrics --wait\n  \
         shoal procedure list\n\
         (elsewhere: add --confignode {cn_addr} --admin-secret-file {secret}{tls_flags})\n\nCtrl-C stops the cluster.\n",
        settings.data_dir.display()
    );
    let outcome = loop {
        if stop.try_recv().is_ok() {
            break Ok(());
        }
        if let Some((name, status)) = nodes
            .iter_mut()
            .find_map(|n| n.exited().map(|s| (n.name.clone(), s)))
        {
            break Err(CliError::Node(format!(
                "{name} exited ({status}); stopping the cluster"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("shoal: stopping the cluster");
    // DataNodes first, then the ConfigNode.
    while let Some(mut node) = nodes.pop() {
        node.stop(Duration::from_secs(10));
    }
    outcome
}
