//! `procedure list`, `procedure show` and `status`: what an operator reads.
//!
//! Times are wall-clock RFC 3339 (the leader's clock when it recorded them); durations are
//! the leader's monotonic milliseconds between submission and the last transition, so a
//! wall-clock jump never shows a negative or inflated duration. (The monotonic clock
//! restarts with the process: across a leader change the two stamps can come from
//! different clocks, and the duration falls back to the wall-clock difference when the
//! monotonic one would be negative.)

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;
use shoal_core::api::{ClusterStatus, ConfigNodeApi, DatabaseInfo, ProcedureInfo, ProcedureView};
use shoal_core::model::{DataNodeId, DatabaseName, ProcedureId};
use shoal_core::state::{DataNodeInfo, DataNodeStatus};

use super::Admin;
use crate::cli::{ProcedureFilterArgs, StatusFilter};
use crate::error::CliError;
use crate::metrics::unix_ms_now;
use crate::status_page::{activity, children_progress, human_duration, rfc3339};

/// Which procedures `procedure list` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcedureFilter {
    /// Only this status (or any unfinished one).
    pub status: Option<StatusFilter>,
    /// Only this type (compared case-insensitively).
    pub type_name: Option<String>,
    /// Only procedures working in this database, and their descendants.
    pub database: Option<DatabaseName>,
    /// At most this many, the newest.
    pub limit: Option<usize>,
}

impl ProcedureFilter {
    /// The filter the flags ask for; a malformed database name is refused.
    pub fn from_args(args: &ProcedureFilterArgs) -> Result<Self, CliError> {
        Ok(Self {
            status: args.status,
            type_name: args.type_name.clone(),
            database: args
                .database
                .as_deref()
                .map(|name| DatabaseName::new(name).map_err(|e| CliError::Invalid(e.to_string())))
                .transpose()?,
            limit: args.limit,
        })
    }

    /// The procedures of `all` it keeps, newest (highest id) first.
    pub fn apply<'a>(&self, all: &'a [ProcedureInfo]) -> Vec<&'a ProcedureInfo> {
        let by_id: BTreeMap<ProcedureId, &ProcedureInfo> = all.iter().map(|p| (p.id, p)).collect();
        let mut kept: Vec<&ProcedureInfo> = all
            .iter()
            .filter(|p| self.status.is_none_or(|s| status_matches(s, p.status)))
            .filter(|p| {
                self.type_name
                    .as_deref()
                    .is_none_or(|t| p.type_name.eq_ignore_ascii_case(t))
            })
            .filter(|p| {
                self.database
                    .as_ref()
                    .is_none_or(|db| database_of(p, &by_id).as_ref() == Some(db))
            })
            .collect();
        kept.sort_by_key(|p| std::cmp::Reverse(p.id));
        if let Some(limit) = self.limit {
            kept.truncate(limit);
        }
        kept
    }
}

fn status_matches(filter: StatusFilter, status: ProcedureView) -> bool {
    match filter {
        StatusFilter::Running => status == ProcedureView::Running,
        StatusFilter::Waiting => status == ProcedureView::Waiting,
        StatusFilter::Suspended => status == ProcedureView::Suspended,
        StatusFilter::RollingBack => status == ProcedureView::RollingBack,
        StatusFilter::Succeeded => status == ProcedureView::Succeeded,
        StatusFilter::Failed => status == ProcedureView::Failed,
        StatusFilter::RolledBack => status == ProcedureView::RolledBack,
        StatusFilter::Unreadable => status == ProcedureView::Unreadable,
        StatusFilter::Unfinished => !status.is_finished(),
    }
}

/// The database `info` works in: its own, else its nearest ancestor's.
fn database_of(
    info: &ProcedureInfo,
    by_id: &BTreeMap<ProcedureId, &ProcedureInfo>,
) -> Option<DatabaseName> {
    let mut current = info;
    // Bounded: a malformed parent cycle must not hang the CLI.
    for _ in 0..by_id.len().max(1) {
        if let Some(db) = &current.database {
            return Some(db.clone());
        }
        current = by_id.get(&current.parent?)?;
    }
    None
}

/// Submission to last transition, in ms (see the module docs); 0 when neither clock can
/// tell (a record older than wall-clock stamps whose monotonic stamps come from two
/// processes).
pub fn duration_ms(info: &ProcedureInfo) -> u64 {
    info.updated_at_ms
        .checked_sub(info.submitted_at_ms)
        .unwrap_or_else(|| {
            if info.submitted_unix_ms == 0 {
                0
            } else {
                info.updated_unix_ms.saturating_sub(info.submitted_unix_ms)
            }
        })
}

/// How long `info` ran (finished: [`duration_ms`]) or has been running (unfinished: from its
/// submission to `now_unix_ms`, wall clock, marked "so far").
pub fn elapsed(info: &ProcedureInfo, now_unix_ms: u64) -> String {
    if info.is_finished() || info.submitted_unix_ms == 0 {
        human_duration(duration_ms(info))
    } else {
        format!(
            "{} so far",
            human_duration(now_unix_ms.saturating_sub(info.submitted_unix_ms))
        )
    }
}

/// One procedure as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct ProcedureJson {
    /// The procedure id (`proc-N` in text).
    pub id: u64,
    /// Its type.
    pub type_name: String,
    /// Its status.
    pub status: &'static str,
    /// Whether it will never run again.
    pub finished: bool,
    /// The state it is in (for a suspended parent: the one it runs once its children end).
    pub state_name: String,
    /// The database it works in (its own lock, else its parent's).
    pub database: Option<String>,
    /// RFC 3339, wall clock.
    pub submitted: Option<String>,
    /// RFC 3339, wall clock, of the last transition.
    pub updated: Option<String>,
    /// Submission to last transition (monotonic ms; for an unfinished procedure, up to its
    /// latest transition).
    pub duration_ms: u64,
    /// Submission on the leader's monotonic clock (ms since that process started; kept for
    /// scripts written against earlier releases).
    pub submitted_at_ms: u64,
    /// The last transition on that clock.
    pub updated_at_ms: u64,
    /// Failed attempts of the current step.
    pub attempts: u32,
    /// What it does now, in words (unfinished only).
    pub activity: Option<String>,
    /// What it waits for, in words.
    pub waiting_for: Option<String>,
    /// The last error a step returned.
    pub last_error: Option<String>,
    /// Its parent.
    pub parent: Option<u64>,
    /// Its children.
    pub children: Vec<u64>,
    /// Children finished (`None` without children).
    pub children_done: Option<usize>,
    /// What an operator should know beyond the status.
    pub notes: Vec<String>,
}

impl ProcedureJson {
    /// `info` alone (its children's progress unknown).
    pub fn alone(info: &ProcedureInfo) -> Self {
        Self::of(info, &BTreeMap::new())
    }

    fn of(info: &ProcedureInfo, by_id: &BTreeMap<ProcedureId, &ProcedureInfo>) -> Self {
        let stamp = |ms: u64| (ms != 0).then(|| rfc3339(ms));
        Self {
            id: info.id.0,
            type_name: info.type_name.clone(),
            status: info.status.name(),
            finished: info.is_finished(),
            state_name: info.state_name.clone(),
            database: database_of(info, by_id).map(|d| d.as_str().to_string()),
            submitted: stamp(info.submitted_unix_ms),
            updated: stamp(info.updated_unix_ms),
            duration_ms: duration_ms(info),
            submitted_at_ms: info.submitted_at_ms,
            updated_at_ms: info.updated_at_ms,
            attempts: info.attempts,
            activity: (!info.is_finished()).then(|| activity(info)),
            waiting_for: info.waiting_for.clone(),
            last_error: info.last_error.clone(),
            parent: info.parent.map(|p| p.0),
            children: info.children.iter().map(|c| c.0).collect(),
            children_done: (!info.children.is_empty()).then(|| children_done(info, by_id)),
            notes: info.notes.clone(),
        }
    }
}

fn children_done(info: &ProcedureInfo, by_id: &BTreeMap<ProcedureId, &ProcedureInfo>) -> usize {
    info.children
        .iter()
        .filter(|c| by_id.get(c).is_none_or(|child| child.is_finished()))
        .count()
}

/// Lays `rows` out under `header` in columns two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out += cell;
            } else {
                out += &format!("{cell:<width$}  ", width = widths[i]);
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// The `procedure list` text for `shown` (`all` resolves parents and children).
pub fn procedure_table(
    shown: &[&ProcedureInfo],
    all: &[ProcedureInfo],
    now_unix_ms: u64,
) -> String {
    let by_id: BTreeMap<ProcedureId, &ProcedureInfo> = all.iter().map(|p| (p.id, p)).collect();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|p| {
            let detail = if p.is_finished() {
                p.last_error.clone().unwrap_or_default()
            } else {
                let mut doing = activity(p);
                if let Some(progress) = children_progress(p, &by_id) {
                    doing += &format!(" ({progress})");
                }
                doing
            };
            vec![
                p.id.to_string(),
                p.type_name.clone(),
                p.status.name().to_string(),
                rfc3339(p.submitted_unix_ms),
                elapsed(p, now_unix_ms),
                database_of(p, &by_id).map_or("-".into(), |d| d.as_str().to_string()),
                p.parent.map_or("-".into(), |p| p.to_string()),
                detail,
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "TYPE",
            "STATUS",
            "SUBMITTED",
            "DURATION",
            "DATABASE",
            "PARENT",
            "DETAIL",
        ],
        &rows,
    )
}

/// The `procedure show` text for `info` (`all` resolves its children).
pub fn procedure_detail(info: &ProcedureInfo, all: &[ProcedureInfo]) -> String {
    let by_id: BTreeMap<ProcedureId, &ProcedureInfo> = all.iter().map(|p| (p.id, p)).collect();
    let mut out = format!("{} {} {}\n", info.id, info.type_name, info.status);
    let mut field = |name: &str, value: String| out += &format!("  {name:<12}{value}\n");
    let now_unix_ms = unix_ms_now();
    if let Some(db) = database_of(info, &by_id) {
        field("database:", db.as_str().to_string());
    }
    field("submitted:", rfc3339(info.submitted_unix_ms));
    field("updated:", rfc3339(info.updated_unix_ms));
    field("duration:", elapsed(info, now_unix_ms));
    // A suspended parent's state is the one it runs once its children end.
    let state_label = if info.status == ProcedureView::Suspended {
        "next state:"
    } else {
        "state:"
    };
    field(state_label, info.state_name.clone());
    if !info.is_finished() {
        field("doing:", activity(info));
    }
    field("attempts:", info.attempts.to_string());
    if let Some(error) = &info.last_error {
        field("last error:", error.clone());
    }
    if let Some(parent) = info.parent {
        field("parent:", parent.to_string());
    }
    if let Some(progress) = children_progress(info, &by_id) {
        field("children:", progress);
        for child in &info.children {
            let line = match by_id.get(child) {
                Some(c) if c.is_finished() => format!("{child} {} {}", c.type_name, c.status),
                Some(c) => format!("{child} {} {}: {}", c.type_name, c.status, activity(c)),
                None => format!("{child} (not recorded)"),
            };
            field("", line);
        }
    }
    for note in &info.notes {
        field("note:", note.clone());
    }
    out
}

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
    /// `procedure list`.
    pub async fn list_procedures(&self, filter: &ProcedureFilter) -> Result<(), CliError> {
        let all = self.retry(|| self.client.list_procedures()).await?;
        let shown = filter.apply(&all);
        let by_id: BTreeMap<ProcedureId, &ProcedureInfo> = all.iter().map(|p| (p.id, p)).collect();
        let json: Vec<ProcedureJson> = shown.iter().map(|p| ProcedureJson::of(p, &by_id)).collect();
        self.print(&json, || procedure_table(&shown, &all, unix_ms_now()))
    }

    /// `procedure show`.
    pub async fn show_procedure(&self, id: ProcedureId) -> Result<(), CliError> {
        let all = self.retry(|| self.client.list_procedures()).await?;
        let info = all
            .iter()
            .find(|p| p.id == id)
            .ok_or_else(|| CliError::Failed(format!("{id} is not recorded")))?;
        let by_id: BTreeMap<ProcedureId, &ProcedureInfo> = all.iter().map(|p| (p.id, p)).collect();
        self.print(&ProcedureJson::of(info, &by_id), || {
            procedure_detail(info, &all)
        })
    }

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

#[cfg(test)]
mod tests;
