//! Runs one parsed `shoal` command.

use std::path::PathBuf;

use shoal_core::confignode::orphans::OrphanPolicy;

use crate::admin::{
    Admin, ProcedureFilter, parse_data_node_id, parse_procedure_id, parse_region_id,
};
use crate::cli::{
    AdminArgs, CHANGE_TIMEOUT_SECS, Cli, Command, ConfigNodeAction, DEFAULT_DATA_DIR,
    DataNodeAction, DatabaseCommand, FileConfig, LogFormat, ProcedureCommand, READ_TIMEOUT_SECS,
    RegionCommand,
};
use crate::error::CliError;
use crate::follow::parse_addresses;
use crate::node::{ConfigNodeSettings, DataNodeSettings, run_confignode, run_datanode};
use crate::process::{init_tracing, shutdown_signal};
use crate::raft::{GroupFlags, RaftTiming};
use crate::size::parse_size;
use crate::up::{UpSettings, run_up};

fn required<T>(value: Option<T>, flag: &str) -> Result<T, CliError> {
    value.ok_or_else(|| CliError::Config(format!("--{flag} is required (flag or config file)")))
}

fn rate(text: Option<String>) -> Result<Option<u64>, CliError> {
    text.map(|t| parse_size(&t).map_err(CliError::Config))
        .transpose()
}

/// Runs `cli`; the error is the one line to print.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let file = FileConfig::load(cli.config.as_deref())?;
    match cli.command {
        Command::Up(args) => {
            let log_format = args.log_format.or(file.log_format);
            init_tracing("info", log_format.unwrap_or_default());
            let settings = UpSettings {
                data_dir: args
                    .data_dir
                    .or(file.data_dir)
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
                port: args.port,
                confignodes: args.confignodes,
                delete_rate: args.delete_rate.or(file.delete_rate),
                tls: args.tls,
                log_format,
            };
            if let Some(rate) = &settings.delete_rate {
                parse_size(rate).map_err(CliError::Config)?;
            }
            run_up(settings, shutdown_signal()?)
        }
        Command::Confignode {
            action: Some(action),
            ..
        } => match action {
            ConfigNodeAction::List(admin) => with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(a.list_confignodes())
            }),
            ConfigNodeAction::Add { address, admin } => {
                with_admin(&admin, file, READ_TIMEOUT_SECS * 2, |a| {
                    Box::pin(async move { a.add_confignode(&address).await })
                })
            }
            ConfigNodeAction::Remove { member, admin } => {
                with_admin(&admin, file, READ_TIMEOUT_SECS * 2, |a| {
                    Box::pin(async move { a.remove_confignode(&member).await })
                })
            }
        },
        Command::Confignode { action: None, args } => {
            let ops = args.ops.or(&file);
            // openraft narrates every vote and heartbeat at INFO: only its warnings by default.
            init_tracing("info,openraft=warn", ops.log_format.unwrap_or_default());
            let security = args.security.or(&file.node_security());
            let list = |text: Option<String>| -> Result<Vec<String>, CliError> {
                text.map(|t| parse_addresses(&t))
                    .transpose()
                    .map(Option::unwrap_or_default)
            };
            let timing = args
                .raft_timing
                .or(file.raft_timing)
                .map(|t| RaftTiming::parse(&t))
                .transpose()?;
            let settings = ConfigNodeSettings {
                data_dir: required(args.data_dir.or(file.data_dir), "data-dir")?,
                listen: required(args.listen.or(file.listen), "listen")?,
                security,
                orphans: OrphanPolicy {
                    grace: std::time::Duration::from_secs(args.orphan_grace_secs),
                    remove: !args.keep_orphans,
                },
                group: GroupFlags {
                    peers: list(args.peers.or(file.peers))?,
                    join: list(args.join.or(file.join))?,
                    advertise: args.advertise.or(file.advertise),
                    timing,
                },
                metrics_listen: ops.metrics_listen,
            };
            run_confignode(settings, shutdown_signal()?)
        }
        Command::Datanode {
            action: Some(DataNodeAction::List(admin)),
            ..
        } => with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
            Box::pin(a.list_data_nodes())
        }),
        Command::Datanode {
            action:
                Some(DataNodeAction::Remove {
                    id,
                    wait,
                    force,
                    admin,
                }),
            ..
        } => {
            let id = parse_data_node_id(&id)?;
            with_admin(&admin, file, CHANGE_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.remove_data_node(id, force, wait).await })
            })
        }
        Command::Datanode { action: None, args } => {
            let ops = args.ops.or(&file);
            init_tracing("info", ops.log_format.unwrap_or_default());
            let security = args.security.or(&file.node_security());
            let settings = DataNodeSettings {
                data_dir: required(args.data_dir.or(file.data_dir), "data-dir")?,
                listen: required(args.listen.or(file.listen), "listen")?,
                advertise: args.advertise.or(file.advertise),
                confignode: parse_addresses(&required(
                    args.confignode.or(file.confignode),
                    "confignode",
                )?)?,
                security,
                delete_rate: rate(args.delete_rate.or(file.delete_rate))?,
                metrics_listen: ops.metrics_listen,
            };
            run_datanode(settings, shutdown_signal()?)
        }
        Command::Database(DatabaseCommand::Create {
            name,
            data_groups,
            schema_groups,
            rf,
            admin,
        }) => with_admin(&admin, file, CHANGE_TIMEOUT_SECS, |a| {
            Box::pin(async move {
                a.create_database(&name, data_groups, schema_groups, rf)
                    .await
            })
        }),
        Command::Database(DatabaseCommand::Delete { name, wait, admin }) => {
            with_admin(&admin, file, CHANGE_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.delete_database(&name, wait).await })
            })
        }
        Command::Database(DatabaseCommand::List(admin)) => {
            with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(a.list_databases())
            })
        }
        Command::Region(RegionCommand::Migrate {
            region,
            from,
            to,
            admin,
        }) => {
            let region = parse_region_id(&region)?;
            let from = parse_data_node_id(&from)?;
            let to = to.as_deref().map(parse_data_node_id).transpose()?;
            with_admin(&admin, file, CHANGE_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.migrate_region(region, from, to).await })
            })
        }
        Command::Region(RegionCommand::Orphans(admin)) => {
            with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(a.list_orphans())
            })
        }
        Command::Region(RegionCommand::List { database, admin }) => {
            with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.list_regions(database.as_deref()).await })
            })
        }
        Command::Procedure(ProcedureCommand::List { filter, admin }) => {
            let filter = ProcedureFilter::from_args(&filter)?;
            with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.list_procedures(&filter).await })
            })
        }
        Command::Status { watch, admin } => with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
            Box::pin(async move { a.status(watch.map(std::time::Duration::from_secs)).await })
        }),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "shoal", &mut std::io::stdout());
            Ok(())
        }
        Command::Procedure(ProcedureCommand::Show { id, admin }) => {
            let id = parse_procedure_id(&id)?;
            with_admin(&admin, file, READ_TIMEOUT_SECS, |a| {
                Box::pin(a.show_procedure(id))
            })
        }
        Command::Load {
            database,
            bytes,
            chunk,
            admin,
        } => {
            let bytes = parse_size(&bytes).map_err(CliError::Config)?;
            let chunk = parse_size(&chunk).map_err(CliError::Config)?;
            with_admin(&admin, file, CHANGE_TIMEOUT_SECS, |a| {
                Box::pin(async move { a.load(&database, bytes, chunk).await.map(|_| ()) })
            })
        }
    }
}

type AdminFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), CliError>> + 'a>>;

/// Runs an admin command (quiet logs unless `RUST_LOG` says otherwise), giving up after
/// `--timeout-secs` or `default_timeout_secs`.
fn with_admin<F>(
    args: &AdminArgs,
    file: FileConfig,
    default_timeout_secs: u64,
    f: F,
) -> Result<(), CliError>
where
    F: for<'a> FnOnce(&'a Admin) -> AdminFuture<'a>,
{
    init_tracing("warn", LogFormat::Text);
    let mut args = args.clone();
    args.security = file.admin_security(&args.security);
    let admin = Admin::new(&args, file.confignode, default_timeout_secs)?;
    smol::block_on(f(&admin))
}
