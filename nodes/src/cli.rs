//! The command line (clap) and the optional TOML config file whose values flags override.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::error::CliError;
use crate::security::{AdminSecurityArgs, NodeSecurityArgs};

pub use crate::defaults::{DEFAULT_CONFIGNODE_PORT, DEFAULT_DATA_DIR};

/// Shoal: a region-lifecycle control plane.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    /// TOML file with defaults for the flags (flags win).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `shoal` command.
// Parsed once per process: the size of its largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs a local cluster: 1 ConfigNode (or a group of --confignodes) + 3 DataNodes on
    /// 127.0.0.1 (Ctrl-C stops it).
    Up(UpArgs),
    /// Runs a ConfigNode (`shoal confignode list|add|remove` manage a group's membership).
    #[command(args_conflicts_with_subcommands = true)]
    Confignode {
        /// `list`, `add` or `remove`, or nothing to run a ConfigNode.
        #[command(subcommand)]
        action: Option<ConfigNodeAction>,
        /// The ConfigNode's flags.
        #[command(flatten)]
        args: ConfigNodeArgs,
    },
    /// Runs a DataNode (`shoal datanode list` lists the registered ones).
    #[command(args_conflicts_with_subcommands = true)]
    Datanode {
        /// `list`, or nothing to run a DataNode.
        #[command(subcommand)]
        action: Option<DataNodeAction>,
        /// The DataNode's flags.
        #[command(flatten)]
        args: DataNodeArgs,
    },
    /// Databases.
    #[command(subcommand)]
    Database(DatabaseCommand),
    /// Region groups.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Procedures.
    #[command(subcommand)]
    Procedure(ProcedureCommand),
    /// One screen: the leader and its epoch, DataNodes, databases, procedures running,
    /// waiting and failed, the maintain queue.
    Status {
        /// Refresh every N seconds until interrupted (clears the screen on a terminal).
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Prints a shell completion script (e.g. `shoal completions bash > /etc/bash_completion.d/shoal`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Writes synthetic data into a database's data regions.
    Load {
        /// The database.
        database: String,
        /// Total bytes to write (e.g. 64MiB), spread over the data region groups; every
        /// replica of a group gets the group's share.
        #[arg(long, default_value = "16MiB")]
        bytes: String,
        /// Largest single write.
        #[arg(long, default_value = "1MiB")]
        chunk: String,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `shoal up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Root of every node's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The first ConfigNode's port; further ConfigNodes, then the DataNodes, use the next
    /// ones.
    #[arg(long, default_value_t = DEFAULT_CONFIGNODE_PORT)]
    pub port: u16,
    /// ConfigNodes to start: 1 runs a single ConfigNode; more (3, 5, ...) run a replicated
    /// group (Raft) that survives the loss of a minority.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=7))]
    pub confignodes: u8,
    /// DataNodes' deletion rate limit in bytes/s (e.g. 8MiB); unlimited by default.
    #[arg(long)]
    pub delete_rate: Option<String>,
    /// TLS everywhere: make a local CA and certificates under DATA_DIR/tls (kept for later
    /// runs; a data directory that has them always runs with TLS), mutual TLS between all.
    #[arg(long)]
    pub tls: bool,
    /// Every node's log line format [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

/// `shoal confignode`.
#[derive(Debug, Args)]
pub struct ConfigNodeArgs {
    /// Data directory (consensus log, snapshots, generated secret).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: any; the bound address goes to DATA_DIR/listen.addr).
    #[arg(long)]
    pub listen: Option<String>,
    /// Secrets, TLS and connection limits.
    #[command(flatten)]
    pub security: NodeSecurityArgs,
    /// List orphan replicas but never delete them (forensics).
    #[arg(long)]
    pub keep_orphans: bool,
    /// How long a replica must be seen outside every footprint before it is an orphan.
    #[arg(long, default_value_t = 600)]
    pub orphan_grace_secs: u64,
    /// Makes a new replicated group of these ConfigNodes (comma-separated addresses, the same
    /// list on each; this node's --advertise address must be one of them). The first one
    /// bootstraps the group, importing its data directory's single-node state if it has one.
    #[arg(long, conflicts_with = "join")]
    pub peers: Option<String>,
    /// Joins the replicated group that the ConfigNode(s) at these addresses belong to
    /// (comma-separated); this node starts with an empty data directory.
    #[arg(long)]
    pub join: Option<String>,
    /// The address other ConfigNodes and clients reach this one at, in a group (default: the
    /// listen address, which must then have a fixed port).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Raft timing in a group, HEARTBEAT_MS:MIN_MS-MAX_MS: the leader's heartbeat period and
    /// the range a follower's election timeout is drawn from [default: 50:250-500].
    #[arg(long)]
    pub raft_timing: Option<String>,
    /// Metrics and logging.
    #[command(flatten)]
    pub ops: NodeOpsArgs,
}

/// What every node process takes for operators: the metrics endpoint and the log format.
#[derive(Debug, Clone, Default, Args)]
pub struct NodeOpsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (and, on a ConfigNode, the status page
    /// at http://ADDR/); port 0 picks a free port, written to DATA_DIR/metrics.addr. Off by
    /// default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// Log line format on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

impl NodeOpsArgs {
    /// These flags, falling back to `file`'s keys.
    pub fn or(self, file: &FileConfig) -> Self {
        Self {
            metrics_listen: self.metrics_listen.or_else(|| file.metrics_listen.clone()),
            log_format: self.log_format.or(file.log_format),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line, fields included, for log shippers.
    Json,
}

impl LogFormat {
    /// The flag value.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `shoal confignode list|add|remove`.
#[derive(Debug, Subcommand)]
pub enum ConfigNodeAction {
    /// Lists the members of the ConfigNode group and who leads.
    List(AdminArgs),
    /// Adds the running ConfigNode at ADDRESS to the group (a learner first, a voter once it
    /// has caught up). A ConfigNode started with --join adds itself.
    Add {
        /// The new member's address.
        address: String,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Removes a member (by id, or by address) from the group; refused if the remaining
    /// members would have no reachable majority. Stop its process afterwards.
    Remove {
        /// The member's id (as `confignode list` shows) or address.
        member: String,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `shoal datanode`.
#[derive(Debug, Args)]
pub struct DataNodeArgs {
    /// Data directory (regions, task journal, node id).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on (port 0: any; the bound address goes to DATA_DIR/listen.addr).
    #[arg(long)]
    pub listen: Option<String>,
    /// Address the ConfigNode reaches this DataNode at (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// The ConfigNode to register with, or the members of a ConfigNode group
    /// (comma-separated): the DataNode registers with and heartbeats to whichever leads.
    #[arg(long)]
    pub confignode: Option<String>,
    /// Secrets, TLS and connection limits.
    #[command(flatten)]
    pub security: NodeSecurityArgs,
    /// Deletion rate limit in bytes/s (e.g. 8MiB); unlimited by default.
    #[arg(long)]
    pub delete_rate: Option<String>,
    /// Metrics and logging.
    #[command(flatten)]
    pub ops: NodeOpsArgs,
}

/// `shoal datanode list` / `remove`.
#[derive(Debug, Subcommand)]
pub enum DataNodeAction {
    /// Lists registered DataNodes.
    List(AdminArgs),
    /// Removes a DataNode: marks it removing, migrates each of its replicas to a running
    /// DataNode, then unregisters it.
    Remove {
        /// The DataNode (`dn-2` or `2`).
        id: String,
        /// Wait until it is removed, showing replicas left.
        #[arg(long)]
        wait: bool,
        /// The DataNode is gone for good: abandon its replicas (recorded, never reported
        /// deleted) and re-replicate each group from a surviving replica.
        #[arg(long)]
        force: bool,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How admin commands reach the ConfigNode.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// The ConfigNode's address, or the members of a ConfigNode group (comma-separated):
    /// commands follow the leader.
    #[arg(long)]
    pub confignode: Option<String>,
    /// The admin secret and TLS.
    #[command(flatten)]
    pub security: AdminSecurityArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Give up after this many seconds [default: 30 for list and show commands, 600 for
    /// database create/delete and load].
    #[arg(long)]
    pub timeout_secs: Option<u64>,
}

impl AdminArgs {
    /// How long the command may take: `--timeout-secs`, or `default_secs` for its kind.
    pub fn timeout(&self, default_secs: u64) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(default_secs))
    }
}

/// Default `--timeout-secs` of commands that only read (list, show): long enough to ride
/// through a ConfigNode restart, short enough that a wrong address is soon reported.
pub const READ_TIMEOUT_SECS: u64 = 30;
/// Default `--timeout-secs` of commands that change things and wait for them (database
/// create, delete, load): a large deletion takes minutes.
pub const CHANGE_TIMEOUT_SECS: u64 = 600;

/// Parses `--rf`: a whole number in `MIN_REPLICATION_FACTOR..=MAX_REPLICATION_FACTOR`.
fn parse_replication_factor(text: &str) -> Result<u8, String> {
    use shoal_core::model::{MAX_REPLICATION_FACTOR, MIN_REPLICATION_FACTOR, ReplicationFactor};
    let range = format!("{MIN_REPLICATION_FACTOR}..={MAX_REPLICATION_FACTOR}");
    let factor: i128 = text
        .trim()
        .parse()
        .map_err(|_| format!("replication factor {text:?} is not a whole number in {range}"))?;
    u8::try_from(factor)
        .ok()
        .and_then(|f| ReplicationFactor::new(f).ok())
        .map(ReplicationFactor::get)
        .ok_or_else(|| format!("replication factor {factor} is outside {range}"))
}

/// `shoal database ...`.
#[derive(Debug, Subcommand)]
pub enum DatabaseCommand {
    /// Creates a database and waits until its region groups exist.
    Create {
        /// Its name.
        name: String,
        /// Data region groups.
        #[arg(long, default_value_t = 4)]
        data_groups: u32,
        /// Schema region groups.
        #[arg(long, default_value_t = 1)]
        schema_groups: u32,
        /// Replication factor of every group (1..=7).
        #[arg(long, default_value_t = 3, value_parser = parse_replication_factor, allow_negative_numbers = true)]
        rf: u8,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deletes a database (every region replica's data included).
    Delete {
        /// Its name.
        name: String,
        /// Wait until it is gone, showing region groups left.
        #[arg(long)]
        wait: bool,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lists databases.
    List(AdminArgs),
}

/// `shoal region ...`.
#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Moves one replica of a region group to another DataNode (copy, verify by checksum,
    /// publish, then delete the old replica) and waits for it.
    Migrate {
        /// The region group (e.g. `data-3`).
        region: String,
        /// The DataNode whose replica moves (`dn-1` or `1`).
        #[arg(long)]
        from: String,
        /// The DataNode it moves to (default: chosen by placement).
        #[arg(long)]
        to: Option<String>,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Lists replicas DataNodes hold that nothing accounts for (orphans), and their removal.
    Orphans(AdminArgs),
    /// Lists published region groups.
    List {
        /// Only this database's.
        #[arg(long)]
        database: Option<String>,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `shoal procedure ...`.
#[derive(Debug, Subcommand)]
pub enum ProcedureCommand {
    /// Lists recorded procedures, newest first.
    List {
        /// Which ones to list.
        #[command(flatten)]
        filter: ProcedureFilterArgs,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shows one procedure (`proc-7` or `7`).
    Show {
        /// Its id.
        id: String,
        /// Connection flags.
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `procedure list` filters.
#[derive(Debug, Clone, Default, Args)]
pub struct ProcedureFilterArgs {
    /// Only procedures in this status.
    #[arg(long, value_enum)]
    pub status: Option<StatusFilter>,
    /// Only procedures of this type (e.g. `DeleteDatabase`; case-insensitive).
    #[arg(long = "type", value_name = "TYPE")]
    pub type_name: Option<String>,
    /// Only procedures about this database (its create or delete, and their children).
    #[arg(long)]
    pub database: Option<String>,
    /// At most this many (the newest).
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `procedure list --status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusFilter {
    /// Running a step or queued for a worker.
    Running,
    /// Sleeping or waiting for locks.
    Waiting,
    /// Waiting for its children.
    Suspended,
    /// Running its rollback.
    RollingBack,
    /// Finished with success.
    Succeeded,
    /// Finished with an error.
    Failed,
    /// Finished after rolling back.
    RolledBack,
    /// Unknown to this ConfigNode's build.
    Unreadable,
    /// Anything not finished (running, waiting, suspended, rolling back, unreadable).
    Unfinished,
}

/// Defaults from a `--config` TOML file; every key is optional and flags win.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Node data directory.
    pub data_dir: Option<PathBuf>,
    /// Listen address.
    pub listen: Option<String>,
    /// Advertised DataNode address.
    pub advertise: Option<String>,
    /// ConfigNode address (DataNodes, admin commands).
    pub confignode: Option<String>,
    /// One secret for every role (older releases'); admin commands: the admin secret.
    pub secret_file: Option<PathBuf>,
    /// DataNode deletion rate limit (e.g. "8MiB").
    pub delete_rate: Option<String>,
    /// Node-to-node secret file.
    pub internal_secret_file: Option<PathBuf>,
    /// Admin secret file.
    pub admin_secret_file: Option<PathBuf>,
    /// Accept secret files that group or others may read.
    #[serde(default)]
    pub allow_open_secret_files: bool,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Mutual TLS (nodes).
    #[serde(default)]
    pub tls_require_client_cert: bool,
    /// Cap on open connections (nodes).
    pub max_connections: Option<usize>,
    /// Cap on connections waiting for login (nodes).
    pub max_unauthenticated_connections: Option<usize>,
    /// A new ConfigNode group's first members (comma-separated).
    pub peers: Option<String>,
    /// A ConfigNode group to join (comma-separated member addresses).
    pub join: Option<String>,
    /// Raft timing of a ConfigNode in a group (HEARTBEAT_MS:MIN_MS-MAX_MS).
    pub raft_timing: Option<String>,
    /// Prometheus metrics (and status page) address of a node.
    pub metrics_listen: Option<String>,
    /// Log line format (`text` or `json`).
    pub log_format: Option<LogFormat>,
}

impl FileConfig {
    /// A node's security settings from this file (flags override them).
    pub fn node_security(&self) -> NodeSecurityArgs {
        NodeSecurityArgs {
            internal_secret_file: self.internal_secret_file.clone(),
            admin_secret_file: self.admin_secret_file.clone(),
            secret_file: self.secret_file.clone(),
            allow_open_secret_files: self.allow_open_secret_files,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_require_client_cert: self.tls_require_client_cert,
            max_connections: self.max_connections,
            max_unauthenticated_connections: self.max_unauthenticated_connections,
        }
    }

    /// The CLI's security settings: flags, then this file.
    pub fn admin_security(&self, flags: &AdminSecurityArgs) -> AdminSecurityArgs {
        AdminSecurityArgs {
            secret_file: flags
                .secret_file
                .clone()
                .or_else(|| self.admin_secret_file.clone())
                .or_else(|| self.secret_file.clone()),
            allow_open_secret_files: flags.allow_open_secret_files || self.allow_open_secret_files,
            tls_ca: flags.tls_ca.clone().or_else(|| self.tls_ca.clone()),
            tls_cert: flags.tls_cert.clone().or_else(|| self.tls_cert.clone()),
            tls_key: flags.tls_key.clone().or_else(|| self.tls_key.clone()),
        }
    }

    /// Reads `path` (no file given: all defaults).
    pub fn load(path: Option<&Path>) -> Result<Self, CliError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::io("cannot read the config file", path, e))?;
        toml::from_str(&text)
            .map_err(|e| CliError::Config(format!("config file {}: {e}", path.display())))
    }
}

/// File in `shoal up`'s data directory listing its ConfigNodes' addresses (comma-separated).
pub const CONFIGNODES_FILE: &str = "confignodes";

/// The ConfigNode address(es) admin commands use by default: those `shoal up` recorded in
/// `./shoal-data/confignodes`, else `127.0.0.1:7070`.
pub fn default_confignode_addr() -> String {
    std::fs::read_to_string(Path::new(DEFAULT_DATA_DIR).join(CONFIGNODES_FILE))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| format!("127.0.0.1:{DEFAULT_CONFIGNODE_PORT}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn datanode_list_and_datanode_run_parse_apart() {
        let list = Cli::try_parse_from(["shoal", "datanode", "list", "--json"]).expect("parse");
        assert!(matches!(
            list.command,
            Command::Datanode {
                action: Some(DataNodeAction::List(AdminArgs { json: true, .. })),
                ..
            }
        ));
        let run = Cli::try_parse_from(["shoal", "datanode", "--data-dir", "d", "--listen", "a:0"])
            .expect("parse");
        assert!(matches!(
            run.command,
            Command::Datanode { action: None, .. }
        ));
    }

    #[test]
    fn confignode_membership_commands_and_running_a_confignode_parse_apart() {
        let list = Cli::try_parse_from(["shoal", "confignode", "list", "--confignode", "a:1,b:1"])
            .expect("parse");
        assert!(matches!(
            list.command,
            Command::Confignode {
                action: Some(ConfigNodeAction::List(AdminArgs {
                    confignode: Some(_),
                    ..
                })),
                ..
            }
        ));
        let remove = Cli::try_parse_from(["shoal", "confignode", "remove", "2"]).expect("parse");
        assert!(matches!(
            remove.command,
            Command::Confignode {
                action: Some(ConfigNodeAction::Remove { ref member, .. }),
                ..
            } if member == "2"
        ));
        let run = Cli::try_parse_from([
            "shoal",
            "confignode",
            "--data-dir",
            "d",
            "--listen",
            "a:1",
            "--peers",
            "a:1,b:1,c:1",
        ])
        .expect("parse");
        assert!(matches!(
            run.command,
            Command::Confignode {
                action: None,
                args: ConfigNodeArgs { peers: Some(_), .. }
            }
        ));
        assert!(
            Cli::try_parse_from(["shoal", "confignode", "--peers", "a:1", "--join", "b:1"])
                .is_err(),
            "--peers and --join exclude each other"
        );
        assert!(Cli::try_parse_from(["shoal", "up", "--confignodes", "9"]).is_err());
    }

    #[test]
    fn rf_outside_one_to_seven_names_the_range() {
        for bad in ["0", "8", "300", "-1", "three"] {
            let error = Cli::try_parse_from(["shoal", "database", "create", "x", "--rf", bad])
                .expect_err(bad)
                .to_string();
            assert!(error.contains("1..=7"), "--rf {bad}: {error}");
        }
        let ok = Cli::try_parse_from(["shoal", "database", "create", "x", "--rf", "7"]);
        assert!(matches!(
            ok.map(|c| c.command),
            Ok(Command::Database(DatabaseCommand::Create { rf: 7, .. }))
        ));
    }

    #[test]
    fn read_commands_give_up_sooner_than_changes_by_default() {
        let list = Cli::try_parse_from(["shoal", "datanode", "list"]).expect("parse");
        let Command::Datanode {
            action: Some(DataNodeAction::List(args)),
            ..
        } = list.command
        else {
            panic!("not a list");
        };
        assert_eq!(args.timeout(READ_TIMEOUT_SECS).as_secs(), 30);
        let explicit = AdminArgs {
            timeout_secs: Some(2),
            ..args
        };
        assert_eq!(explicit.timeout(CHANGE_TIMEOUT_SECS).as_secs(), 2);
    }

    #[test]
    fn config_file_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shoal.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\ndelete_rate = \"1MiB\"\n").expect("write");
        let config = FileConfig::load(Some(&path)).expect("load");
        assert_eq!(config.listen.as_deref(), Some("127.0.0.1:1"));
        std::fs::write(&path, "lisen = \"x\"\n").expect("write");
        assert!(FileConfig::load(Some(&path)).is_err());
    }
}
