//! `shoal status`: one screen from the leader — who leads and at which epoch, DataNodes,
//! databases, procedures by status (unfinished top-level ones with their progress, recent
//! failures) and the maintain queue.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use shoal_core::api::{ClusterStatus, ConfigNodeApi, DatabaseInfo, ProcedureInfo, ProcedureView};
use shoal_core::model::{DataNodeId, ProcedureId};
use shoal_core::state::{DataNodeInfo, DataNodeStatus};

use super::Admin;
use super::procedures::{ProcedureFilter, ProcedureJson, table};
use crate::cli::StatusFilter;
use crate::error::CliError;
use crate::metrics::unix_ms_now;
use crate::status_page::rfc3339;

/// What `shoal status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The ConfigNode that answered (the leader).
    pub leader: Option<String>,
    /// Its epoch.
    pub epoch: u64,
    /// Registered DataNodes.
    pub data_nodes: Vec<DataNodeRow>,
    /// Databases.
    pub databases: Vec<DatabaseRow>,
    /// Procedures by status name.
    pub procedures: BTreeMap<&'static str, usize>,
    /// The same counts, typed (what the text reads).
    #[serde(skip)]
    pub counts: BTreeMap<ProcedureView, usize>,
    /// Unfinished top-level procedures (children count in their parent's progress),
    /// newest first.
    pub unfinished: Vec<ProcedureJson>,
    /// The newest failed procedures (at most [`RECENT_FAILURES`]).
    pub recent_failures: Vec<ProcedureJson>,
    /// Replica creates queued for the cleaner.
    pub queued_creates: u64,
    /// Deletions of an older release awaiting the cleaner.
    pub legacy_deletions: u64,
}

/// Failed procedures `shoal status` lists.
pub const RECENT_FAILURES: usize = 5;

/// One DataNode in `shoal status`.
#[derive(Debug, Clone, Serialize)]
pub struct DataNodeRow {
    /// Its id.
    pub id: u32,
    /// Its address.
    pub address: String,
    /// Its status.
    pub status: &'static str,
    /// Its status, typed (what the text counts by).
    #[serde(skip)]
    pub state: DataNodeStatus,
    /// Replicas of published groups placed on it.
    pub replicas: usize,
}

/// One database in `shoal status`.
#[derive(Debug, Clone, Serialize)]
pub struct DatabaseRow {
    /// Its name.
    pub name: String,
    /// Schema plus data region groups.
    pub region_groups: u32,
    /// Whether it is being deleted.
    pub deleting: bool,
}

impl StatusReport {
    /// Builds the report from what the leader answered.
    pub fn of(
        leader: Option<String>,
        status: ClusterStatus,
        nodes: &[DataNodeInfo],
        replicas: &BTreeMap<DataNodeId, usize>,
        databases: &[DatabaseInfo],
        procedures: &[ProcedureInfo],
    ) -> Self {
        let by_id: BTreeMap<ProcedureId, &ProcedureInfo> =
            procedures.iter().map(|p| (p.id, p)).collect();
        let mut counts: BTreeMap<ProcedureView, usize> =
            ProcedureView::ALL.iter().map(|v| (*v, 0)).collect();
        for p in procedures {
            *counts.entry(p.status).or_insert(0) += 1;
        }
        let unfinished = ProcedureFilter {
            status: Some(StatusFilter::Unfinished),
            ..ProcedureFilter::default()
        };
        let failed = ProcedureFilter {
            status: Some(StatusFilter::Failed),
            limit: Some(RECENT_FAILURES),
            ..ProcedureFilter::default()
        };
        Self {
            leader,
            epoch: status.epoch.0,
            data_nodes: nodes
                .iter()
                .map(|n| DataNodeRow {
                    id: n.location.id.0,
                    address: n.location.address.clone(),
                    status: n.status.name(),
                    state: n.status,
                    replicas: replicas.get(&n.location.id).copied().unwrap_or(0),
                })
                .collect(),
            databases: databases
                .iter()
                .map(|d| DatabaseRow {
                    name: d.schema.name.as_str().to_string(),
                    region_groups: d.schema_region_groups + d.data_region_groups,
                    deleting: d.deleting,
                })
                .collect(),
            procedures: counts.iter().map(|(v, n)| (v.name(), *n)).collect(),
            counts,
            unfinished: unfinished
                .apply(procedures)
                .into_iter()
                .filter(|p| p.parent.is_none_or(|parent| !by_id.contains_key(&parent)))
                .map(|p| ProcedureJson::of(p, &by_id))
                .collect(),
            recent_failures: failed
                .apply(procedures)
                .into_iter()
                .map(|p| ProcedureJson::of(p, &by_id))
                .collect(),
            queued_creates: status.queued_creates,
            legacy_deletions: status.legacy_deletions,
        }
    }

    /// The one-screen text.
    pub fn text(&self) -> String {
        let mut out = format!(
            "leader: {}  epoch {}\n\n",
            self.leader.as_deref().unwrap_or("?"),
            self.epoch
        );
        let running = self
            .data_nodes
            .iter()
            .filter(|n| n.state == DataNodeStatus::Running)
            .count();
        out += &format!("DataNodes: {} ({running} running)\n", self.data_nodes.len());
        let rows: Vec<Vec<String>> = self
            .data_nodes
            .iter()
            .map(|n| {
                vec![
                    format!("dn-{}", n.id),
                    n.address.clone(),
                    n.status.to_string(),
                    n.replicas.to_string(),
                ]
            })
            .collect();
        out += &indent(&table(&["ID", "ADDRESS", "STATUS", "REPLICAS"], &rows));
        out += &format!("\nDatabases: {}\n", self.databases.len());
        if !self.databases.is_empty() {
            let rows: Vec<Vec<String>> = self
                .databases
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        d.region_groups.to_string(),
                        if d.deleting { "deleting" } else { "" }.to_string(),
                    ]
                })
                .collect();
            out += &indent(&table(&["NAME", "GROUPS", ""], &rows));
        }
        let count = |view: ProcedureView| self.counts.get(&view).copied().unwrap_or(0);
        out += &format!(
            "\nProcedures: {} running, {} waiting, {} suspended, {} rolling back, {} failed, {} succeeded\n",
            count(ProcedureView::Running),
            count(ProcedureView::Waiting),
            count(ProcedureView::Suspended),
            count(ProcedureView::RollingBack),
            count(ProcedureView::Failed) + count(ProcedureView::RolledBack),
            count(ProcedureView::Succeeded),
        );
        for p in &self.unfinished {
            let progress = p
                .children_done
                .map(|done| format!(" ({done} of {} children done)", p.children.len()))
                .unwrap_or_default();
            out += &format!(
                "  proc-{} {} {} {}: {}{progress}\n",
                p.id,
                p.type_name,
                p.database.as_deref().unwrap_or("-"),
                p.status,
                p.activity.as_deref().unwrap_or_default()
            );
        }
        for p in &self.recent_failures {
            out += &format!(
                "  proc-{} {} failed: {}\n",
                p.id,
                p.type_name,
                p.last_error.as_deref().unwrap_or("-")
            );
        }
        out += &format!(
            "\nMaintain queue: {} replica creates, {} legacy deletions\n",
            self.queued_creates, self.legacy_deletions
        );
        out
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

impl Admin {
    async fn status_report(&self) -> Result<StatusReport, CliError> {
        let status = self.retry(|| self.client.cluster_status()).await?;
        let leader = self.client.current_address();
        let nodes = self.retry(|| self.client.list_data_nodes()).await?;
        let databases = self.retry(|| self.client.list_databases()).await?;
        let groups = self.retry(|| self.client.list_region_groups(None)).await?;
        let procedures = self.retry(|| self.client.list_procedures()).await?;
        let mut replicas: BTreeMap<DataNodeId, usize> = BTreeMap::new();
        for group in &groups {
            for node in &group.replica_set.replicas {
                *replicas.entry(*node).or_insert(0) += 1;
            }
        }
        Ok(StatusReport::of(
            leader,
            status,
            &nodes,
            &replicas,
            &databases,
            &procedures,
        ))
    }

    /// `status`, once or every `watch` (clearing the screen only on a terminal).
    pub async fn status(&self, watch: Option<Duration>) -> Result<(), CliError> {
        let Some(every) = watch else {
            let report = self.status_report().await?;
            return self.print(&report, || report.text());
        };
        let terminal = std::io::stdout().is_terminal();
        loop {
            self.renew_deadline();
            let report = self.status_report().await?;
            if terminal && !self.json {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            self.print(&report, || {
                format!(
                    "{}  (every {}s; Ctrl-C stops)\n{}",
                    rfc3339(unix_ms_now()),
                    every.as_secs(),
                    report.text()
                )
            })?;
            if !terminal {
                println!();
            }
            smol::Timer::after(every).await;
        }
    }
}
