//! Admin commands: talk to the ConfigNode over Cap'n Proto and print text or JSON.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use serde::Serialize;
use shoal_core::api::{
    ApiError, ConfigNodeApi, CreateDatabaseRequest, ProcedureInfo, ProcedureView,
};
use shoal_core::model::{DatabaseName, ProcedureId, RegionKind, ReplicationFactor};
use shoal_transport_capnp::{ClientOptions, Role, RpcRuntime};

use crate::cli::{AdminArgs, default_confignode_addr};
use crate::clients::CapnpDataNodeClients;
use crate::error::CliError;
use crate::follow::{ConfigNodes, parse_addresses};
use crate::size::format_size;

/// After this long without an answer from the ConfigNode, a command says what it waits for.
pub const WAITING_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// A connected admin session (to one ConfigNode, or following a group's leader).
pub struct Admin {
    client: ConfigNodes,
    rpc: RpcRuntime,
    options: ClientOptions,
    json: bool,
    address: String,
    timeout: Duration,
    /// When the command gives up (renewed per refresh by `status --watch`).
    deadline: Cell<Instant>,
    /// Whether the "waiting for the ConfigNode" line was printed (once per command).
    waiting_noted: Cell<bool>,
    /// The progress bar on screen, if any (notices are printed around it).
    bar: RefCell<Option<indicatif::ProgressBar>>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("client", &self.client)
            .finish()
    }
}

fn database_name(name: &str) -> Result<DatabaseName, CliError> {
    DatabaseName::new(name).map_err(|e| CliError::Invalid(e.to_string()))
}

/// A fresh request key: 128 random bits in hex. One per CLI invocation, reused by every
/// retry of its submit, so a retry after a lost reply finds the first attempt's procedure.
pub fn new_request_key() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// Parses `proc-7` or `7`.
pub fn parse_procedure_id(text: &str) -> Result<ProcedureId, CliError> {
    text.trim_start_matches("proc-")
        .parse()
        .map(ProcedureId)
        .map_err(|_| CliError::Invalid(format!("invalid procedure id {text:?}")))
}

impl Admin {
    /// Connects lazily to the ConfigNode named by `args` (defaults: `shoal up`'s); the
    /// command gives up after `--timeout-secs`, or `default_timeout_secs` without it.
    pub fn new(
        args: &AdminArgs,
        file_confignode: Option<String>,
        default_timeout_secs: u64,
    ) -> Result<Self, CliError> {
        let address = args
            .confignode
            .clone()
            .or(file_confignode)
            .unwrap_or_else(default_confignode_addr);
        let addresses = parse_addresses(&address)?;
        let secret = args.security.secret(None)?;
        let tls = args.security.tls()?;
        let rpc = RpcRuntime::start("cli")?;
        let options = ClientOptions::new(Role::Admin, secret).with_tls(tls);
        let client = ConfigNodes::new(&rpc, &addresses, options.clone());
        let address = addresses.join(",");
        let timeout = args.timeout(default_timeout_secs);
        Ok(Self {
            client,
            rpc,
            options,
            json: args.json,
            address,
            timeout,
            deadline: Cell::new(Instant::now() + timeout),
            waiting_noted: Cell::new(false),
            bar: RefCell::new(None),
        })
    }

    /// The ConfigNodes this session talks to.
    pub fn confignodes(&self) -> &ConfigNodes {
        &self.client
    }

    /// Gives the command a fresh `--timeout-secs` from now (each refresh of a watch).
    pub(crate) fn renew_deadline(&self) {
        self.deadline.set(Instant::now() + self.timeout);
    }

    /// The session's RPC thread (for clients of other nodes).
    pub(crate) fn rpc(&self) -> &RpcRuntime {
        &self.rpc
    }

    /// The session's login options.
    pub(crate) fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Runs `call`, retrying retryable failures (node starting, leader not ready,
    /// connection lost) until the deadline. Refusals fail at once. If no answer came within
    /// [`WAITING_NOTICE_AFTER`], says once (on stderr) what the command is waiting for.
    pub(crate) async fn retry<T, F, Fut>(&self, call: F) -> Result<T, CliError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let last_error: RefCell<Option<ApiError>> = RefCell::new(None);
        let attempts = async {
            let mut delay = Duration::from_millis(100);
            loop {
                // An attempt still under way at the deadline is cut short; the error to
                // report is then the last one an attempt actually returned.
                let attempt = async { Some(call().await) }.or(async {
                    smol::Timer::at(self.deadline.get()).await;
                    None
                });
                let Some(outcome) = attempt.await else {
                    let last = last_error.borrow_mut().take();
                    return Err(self.gave_up(&last.unwrap_or(ApiError::Timeout(self.timeout))));
                };
                match outcome {
                    Ok(value) => return Ok(value),
                    Err(e) if e.is_retryable() => {
                        let left = self
                            .deadline
                            .get()
                            .saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(self.gave_up(&e));
                        }
                        tracing::debug!(error = %e, "retrying");
                        *last_error.borrow_mut() = Some(e);
                        smol::Timer::after(delay.min(left)).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        let notice = async {
            smol::Timer::after(WAITING_NOTICE_AFTER).await;
            self.note_waiting(last_error.borrow().as_ref());
            std::future::pending().await
        };
        attempts.or(notice).await
    }

    /// Prints the "waiting for the ConfigNode" line, once per command.
    fn note_waiting(&self, last_error: Option<&ApiError>) {
        if self.waiting_noted.replace(true) {
            return;
        }
        let why = last_error.map(|e| format!(" ({e})")).unwrap_or_default();
        let line = format!(
            "waiting for the ConfigNode at {}{why}; giving up after {}s (--timeout-secs)",
            self.address,
            self.timeout.as_secs()
        );
        match self.bar.borrow().as_ref() {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// The error of a command that ran out of time while the ConfigNode did not answer.
    fn gave_up(&self, last: &ApiError) -> CliError {
        CliError::Failed(format!(
            "no answer from the ConfigNode at {} within {}s (--timeout-secs): {last}",
            self.address,
            self.timeout.as_secs()
        ))
    }

    pub(crate) fn print<T: Serialize>(
        &self,
        value: &T,
        text: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        if self.json {
            let json = serde_json::to_string_pretty(value)
                .map_err(|e| CliError::Failed(format!("cannot encode JSON: {e}")))?;
            println!("{json}");
        } else {
            print!("{}", text());
        }
        Ok(())
    }

    /// Waits for procedure `id` to finish, calling `progress` after each poll.
    async fn wait_finished(
        &self,
        id: ProcedureId,
        mut progress: impl FnMut(&ProcedureInfo),
    ) -> Result<ProcedureInfo, CliError> {
        loop {
            let info = self
                .retry(|| self.client.get_procedure(id))
                .await?
                .ok_or_else(|| CliError::Failed(format!("{id} is not recorded")))?;
            progress(&info);
            if info.is_finished() {
                return Ok(info);
            }
            if Instant::now() >= self.deadline.get() {
                return Err(CliError::Failed(format!(
                    "{id} still {} ({}) at the deadline",
                    info.status, info.state_name
                )));
            }
            smol::Timer::after(Duration::from_millis(200)).await;
        }
    }

    /// `database create`.
    pub async fn create_database(
        &self,
        name: &str,
        data_groups: u32,
        schema_groups: u32,
        rf: u8,
    ) -> Result<(), CliError> {
        let rf = ReplicationFactor::new(rf).map_err(|e| CliError::Invalid(e.to_string()))?;
        let request = CreateDatabaseRequest {
            name: database_name(name)?,
            schema_replication_factor: rf,
            data_replication_factor: rf,
            data_region_groups: data_groups,
            schema_region_groups: schema_groups,
        };
        let key = new_request_key();
        let id = self
            .retry(|| {
                self.client
                    .create_database(request.clone(), Some(key.clone()))
            })
            .await?;
        let info = self.wait_finished(id, |_| {}).await?;
        self.print(&procedures::ProcedureJson::alone(&info), || {
            format!(
                "database {name}: {} by {id} ({})\n",
                info.status, info.type_name
            )
        })?;
        succeeded(&info)
    }

    /// `database delete`, optionally waiting with a progress bar of region groups left.
    pub async fn delete_database(&self, name: &str, wait: bool) -> Result<(), CliError> {
        let db = database_name(name)?;
        let total = self
            .retry(|| self.client.list_region_groups(Some(db.clone())))
            .await?
            .len() as u64;
        let key = new_request_key();
        let id = self
            .retry(|| self.client.delete_database(db.clone(), Some(key.clone())))
            .await?;
        if !wait {
            return self.print(&serde_json::json!({ "procedure": id.0 }), || {
                format!(
                    "deleting database {name}: {id} (follow with `shoal procedure show {id}`)\n"
                )
            });
        }
        let bar = if self.json {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(total)
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} [{bar:30}] {pos}/{len} region groups removed ({elapsed})",
            )
            .map_err(|e| CliError::Failed(e.to_string()))?
            .progress_chars("=> "),
        );
        bar.set_message(format!("deleting {name}"));
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.borrow_mut() = Some(bar.clone());
        let info = loop {
            let info = self
                .retry(|| self.client.get_procedure(id))
                .await?
                .ok_or_else(|| CliError::Failed(format!("{id} is not recorded")))?;
            let left = self
                .retry(|| self.client.list_region_groups(Some(db.clone())))
                .await?
                .len() as u64;
            bar.set_position(total.saturating_sub(left));
            if info.is_finished() {
                break info;
            }
            if Instant::now() >= self.deadline.get() {
                bar.abandon();
                return Err(CliError::Failed(format!(
                    "{id} still {} with {left} region groups left at the deadline",
                    info.status
                )));
            }
            smol::Timer::after(Duration::from_millis(250)).await;
        };
        bar.finish_and_clear();
        self.print(&procedures::ProcedureJson::alone(&info), || {
            format!("database {name}: deletion {} ({id})\n", info.status)
        })?;
        succeeded(&info)
    }

    /// `database list`.
    pub async fn list_databases(&self) -> Result<(), CliError> {
        let dbs = self.retry(|| self.client.list_databases()).await?;
        self.print(&dbs, || {
            let mut out = String::new();
            for db in &dbs {
                out += &format!(
                    "{}\trf {}/{}\tschema groups {}\tdata groups {}{}\n",
                    db.schema.name.as_str(),
                    db.schema.schema_replication_factor.get(),
                    db.schema.data_replication_factor.get(),
                    db.schema_region_groups,
                    db.data_region_groups,
                    if db.deleting { "\tDELETING" } else { "" }
                );
            }
            out
        })
    }

    /// `region list`.
    pub async fn list_regions(&self, database: Option<&str>) -> Result<(), CliError> {
        let db = database.map(database_name).transpose()?;
        let groups = self
            .retry(|| self.client.list_region_groups(db.clone()))
            .await?;
        self.print(&groups, || {
            let mut out = String::new();
            for g in &groups {
                let replicas: Vec<String> = g
                    .replica_set
                    .replicas
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                out += &format!(
                    "{}\t{}\t{}\n",
                    g.database.as_str(),
                    g.replica_set.region,
                    replicas.join(",")
                );
            }
            out
        })
    }

    /// `datanode list`.
    pub async fn list_data_nodes(&self) -> Result<(), CliError> {
        let nodes = self.retry(|| self.client.list_data_nodes()).await?;
        self.print(&nodes, || {
            let mut out = String::new();
            for n in &nodes {
                out += &format!(
                    "{}\t{}\t{}\n",
                    n.location.id,
                    n.location.address,
                    n.status.name()
                );
            }
            out
        })
    }

    /// `load`: writes `bytes` (spread over the data region groups) to every replica of
    /// every data region group of `database`, `chunk` bytes per call. Returns bytes written.
    pub async fn load(&self, database: &str, bytes: u64, chunk: u64) -> Result<u64, CliError> {
        let db = database_name(database)?;
        let groups: Vec<_> = self
            .retry(|| self.client.list_region_groups(Some(db.clone())))
            .await?
            .into_iter()
            .filter(|g| g.replica_set.region.kind == RegionKind::Data)
            .collect();
        if groups.is_empty() {
            return Err(CliError::Failed(format!(
                "database {database} has no data region groups"
            )));
        }
        let addresses: BTreeMap<_, _> = self
            .retry(|| self.client.list_data_nodes())
            .await?
            .into_iter()
            .map(|n| (n.location.id, n.location.address))
            .collect();
        let clients = Arc::new(CapnpDataNodeClients::new(
            self.rpc.clone(),
            self.options.clone(),
        ));
        let per_group = bytes / groups.len() as u64;
        let chunk = chunk.clamp(1, 16 << 20);
        let mut tasks = Vec::new();
        for group in &groups {
            for replica in &group.replica_set.replicas {
                let address = addresses.get(replica).ok_or_else(|| {
                    CliError::Failed(format!(
                        "{replica} holds {} but is not registered",
                        group.replica_set.region
                    ))
                })?;
                let client = clients.by_address(address);
                let region = group.replica_set.region;
                tasks.push(smol::spawn(async move {
                    let mut left = per_group;
                    while left > 0 {
                        let n = left.min(chunk);
                        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                        client.write_region(region, data).await?;
                        left -= n;
                    }
                    Ok::<u64, ApiError>(per_group)
                }));
            }
        }
        let mut written = 0;
        for task in tasks {
            written += task.await?;
        }
        self.print(
            &serde_json::json!({ "database": database, "bytes_written": written }),
            || {
                format!(
                    "wrote {} to {} data region groups of {database} ({} per replica)\n",
                    format_size(written),
                    groups.len(),
                    format_size(per_group)
                )
            },
        )?;
        Ok(written)
    }
}

fn succeeded(info: &ProcedureInfo) -> Result<(), CliError> {
    if info.status == ProcedureView::Succeeded {
        Ok(())
    } else {
        Err(CliError::Failed(format!(
            "{} ended {}{}",
            info.id,
            info.status,
            info.last_error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::new_request_key;

    #[test]
    fn request_keys_are_128_bit_hex_and_differ_per_invocation() {
        let (a, b) = (new_request_key(), new_request_key());
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }
}

mod migration;
mod procedures;
mod status;
pub use migration::{parse_data_node_id, parse_region_id};
pub use procedures::{ProcedureFilter, procedure_detail, procedure_table};
pub use status::StatusReport;
