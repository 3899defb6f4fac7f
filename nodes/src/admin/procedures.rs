//! `procedure list`, `procedure show` and `status`: what an operator reads.
//!
//! Times are wall-clock RFC 3339 (the leader's clock when it recorded them); durations are
//! the leader's monotonic milliseconds between submission and the last transition, so a
//! wall-clock jump never shows a negative or inflated duration. (The monotonic clock
//! restarts with the process: across a leader change the two stamps can come from
//! different clocks, and the duration falls back to the wall-clock difference when the
//! monotonic one would be negative.)

use std::collections::BTreeMap;

use serde::Serialize;
use shoal_core::api::{ConfigNodeApi, ProcedureInfo, ProcedureView};
use shoal_core::model::{DatabaseName, ProcedureId};

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

    pub(super) fn of(info: &ProcedureInfo, by_id: &BTreeMap<ProcedureId, &ProcedureInfo>) -> Self {
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
}

#[cfg(test)]
mod tests;
