//! The ConfigNode's status page: plain server-rendered HTML that refreshes itself.
//!
//! [`Snapshot::of`] reads everything the page shows from the node in one go; [`render`] is a
//! pure function of the snapshot, so tests build snapshots by hand.

use std::collections::BTreeMap;
use std::fmt::Write;

use shoal_core::confignode::{ConfigNode, DatabaseSummary};
use shoal_core::datanode::DataNode;
use shoal_core::model::ProcedureId;
use shoal_core::procedure::{ProcedureInfo, ProcedureView};
use shoal_core::state::DataNodeInfo;

/// Seconds between the page's own refreshes.
pub const REFRESH_SECS: u32 = 2;

/// Failed procedures the page lists, newest first.
pub const RECENT_FAILURES: usize = 20;

/// What the page shows, read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// When it was taken (Unix ms).
    pub now_unix_ms: u64,
    /// The epoch this node last knew.
    pub epoch: u64,
    /// Whether this node leads.
    pub is_leader: bool,
    /// Registered DataNodes and the published replicas placed on each.
    pub data_nodes: Vec<(DataNodeInfo, usize)>,
    /// Databases with their group counts.
    pub databases: Vec<DatabaseSummary>,
    /// Every recorded procedure.
    pub procedures: Vec<ProcedureInfo>,
    /// Queued replica creates awaiting the cleaner.
    pub queued_creates: usize,
    /// Legacy deletions awaiting the cleaner.
    pub legacy_deletions: usize,
}

impl Snapshot {
    /// Reads the page's data from `node`.
    pub fn of(node: &ConfigNode, now_unix_ms: u64) -> Self {
        let leadership = node.consensus().leadership().get();
        let (data_nodes, queued_creates, legacy_deletions) = node.consensus().state().read(|s| {
            let counts = s.replica_counts();
            let nodes = s
                .data_nodes
                .values()
                .map(|n| (n.clone(), counts.get(&n.location.id).copied().unwrap_or(0)))
                .collect();
            (nodes, s.create_queue.len(), s.legacy_deletions.len())
        });
        Self {
            now_unix_ms,
            epoch: leadership.epoch.0,
            is_leader: leadership.is_leader,
            data_nodes,
            databases: node.list_databases(),
            procedures: node.list_procedures(),
            queued_creates,
            legacy_deletions,
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration in ms as `1h02m`, `3m05s`, `4.2s` or `350ms`.
pub fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else if ms >= 1000 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else {
        format!("{ms}ms")
    }
}

/// A procedure's progress over its children, e.g. `7 of 10 children done` (None without
/// children).
pub fn children_progress(
    info: &ProcedureInfo,
    by_id: &BTreeMap<ProcedureId, &ProcedureInfo>,
) -> Option<String> {
    if info.children.is_empty() {
        return None;
    }
    let done = info
        .children
        .iter()
        .filter(|c| by_id.get(c).is_none_or(|child| child.status.is_finished()))
        .count();
    Some(format!("{done} of {} children done", info.children.len()))
}

/// What an unfinished procedure is doing, in words: a suspended parent waits for its
/// children (not the state it runs next).
pub fn activity(info: &ProcedureInfo) -> String {
    match (info.status, &info.waiting_for) {
        (ProcedureView::Suspended, _) => "waiting for its children".to_string(),
        (_, Some(waiting)) => format!("waiting for {waiting}"),
        (ProcedureView::RollingBack, None) => format!("rolling back ({})", info.state_name),
        (_, None) => format!("running {}", info.state_name),
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin-bottom:1.5em}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}.running{color:#070}.unknown{color:#b00}.removing{color:#a60}\
.failed{color:#b00}.muted{color:#777}";

/// The page for `snapshot`.
pub fn render(snapshot: &Snapshot) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>Shoal ConfigNode</title><style>{STYLE}</style></head><body>\
         <h1>Shoal ConfigNode</h1><p>{} · epoch {} · {} queued creates · {} legacy deletions · \
         <span class=\"muted\">{}</span> · <a href=\"/metrics\">metrics</a></p>",
        if snapshot.is_leader {
            "leader"
        } else {
            "not the leader (this page shows what this node last applied)"
        },
        snapshot.epoch,
        snapshot.queued_creates,
        snapshot.legacy_deletions,
        escape(&rfc3339(snapshot.now_unix_ms)),
    );
    render_data_nodes(&mut page, &snapshot.data_nodes);
    render_databases(&mut page, &snapshot.databases);
    render_running(&mut page, snapshot);
    render_failures(&mut page, snapshot);
    page.push_str("</body></html>\n");
    page
}

fn render_data_nodes(page: &mut String, nodes: &[(DataNodeInfo, usize)]) {
    let _ = write!(page, "<h2>DataNodes ({})</h2>", nodes.len());
    if nodes.is_empty() {
        page.push_str("<p class=\"muted\">none registered</p>");
        return;
    }
    page.push_str("<table><tr><th>id</th><th>address</th><th>status</th><th>replicas</th></tr>");
    for (node, replicas) in nodes {
        let status = node.status.name();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            node.location.id,
            escape(&node.location.address),
            status.to_ascii_lowercase(),
            status,
            replicas
        );
    }
    page.push_str("</table>");
}

fn render_databases(page: &mut String, databases: &[DatabaseSummary]) {
    let _ = write!(page, "<h2>Databases ({})</h2>", databases.len());
    if databases.is_empty() {
        page.push_str("<p class=\"muted\">none</p>");
        return;
    }
    page.push_str(
        "<table><tr><th>name</th><th>schema groups × RF</th><th>data groups × RF</th>\
         <th>state</th></tr>",
    );
    for db in databases {
        let schema = &db.entry.schema;
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{} × {}</td><td>{} × {}</td><td>{}</td></tr>",
            escape(&schema.name.to_string()),
            db.schema_region_groups,
            schema.schema_replication_factor.get(),
            db.data_region_groups,
            schema.data_replication_factor.get(),
            if db.entry.deleting {
                "being deleted"
            } else {
                "serving"
            }
        );
    }
    page.push_str("</table>");
}

fn render_running(page: &mut String, snapshot: &Snapshot) {
    let by_id: BTreeMap<ProcedureId, &ProcedureInfo> =
        snapshot.procedures.iter().map(|p| (p.id, p)).collect();
    // Top-level procedures (and orphaned children) with their progress; children are counted
    // in their parent's progress instead of flooding the table.
    let running: Vec<&ProcedureInfo> = snapshot
        .procedures
        .iter()
        .filter(|p| !p.status.is_finished())
        .collect();
    let top: Vec<&&ProcedureInfo> = running
        .iter()
        .filter(|p| p.parent.is_none_or(|parent| !by_id.contains_key(&parent)))
        .collect();
    let _ = write!(
        page,
        "<h2>Running procedures ({} top-level, {} in all)</h2>",
        top.len(),
        running.len()
    );
    if top.is_empty() {
        page.push_str("<p class=\"muted\">none</p>");
        return;
    }
    page.push_str(
        "<table><tr><th>id</th><th>type</th><th>status</th><th>doing</th><th>progress</th>\
         <th>age</th><th>attempts</th><th>last error</th></tr>",
    );
    for info in top.into_iter().rev() {
        let progress = children_progress(info, &by_id).unwrap_or_else(|| "-".into());
        let age = if info.submitted_unix_ms > 0 {
            human_duration(snapshot.now_unix_ms.saturating_sub(info.submitted_unix_ms))
        } else {
            "-".into()
        };
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td></tr>",
            info.id,
            escape(&info.type_name),
            view_label(info.status),
            escape(&activity(info)),
            escape(&progress),
            age,
            info.attempts,
            escape(info.last_error.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table>");
}

fn render_failures(page: &mut String, snapshot: &Snapshot) {
    let mut failed: Vec<&ProcedureInfo> = snapshot
        .procedures
        .iter()
        .filter(|p| matches!(p.status, ProcedureView::Failed | ProcedureView::RolledBack))
        .collect();
    failed.sort_by_key(|p| std::cmp::Reverse((p.updated_unix_ms, p.id)));
    let _ = write!(page, "<h2>Recent failures ({})</h2>", failed.len());
    if failed.is_empty() {
        page.push_str("<p class=\"muted\">none</p>");
        return;
    }
    page.push_str(
        "<table><tr><th>id</th><th>type</th><th>status</th><th>finished</th><th>error</th></tr>",
    );
    for info in failed.into_iter().take(RECENT_FAILURES) {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td class=\"failed\">{}</td><td>{}</td><td>{}</td></tr>",
            info.id,
            escape(&info.type_name),
            view_label(info.status),
            escape(&rfc3339(info.updated_unix_ms)),
            escape(info.last_error.as_deref().unwrap_or("")),
        );
    }
    page.push_str("</table>");
}

/// A DataNode's page: where its metrics are (the cluster view lives on the ConfigNode).
pub fn render_datanode(node: &DataNode) -> String {
    let id = node
        .id()
        .map_or_else(|| "unregistered".into(), |id| id.to_string());
    let counts = node.task_counts();
    format!(
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Shoal DataNode {id}</title>\
         <style>{STYLE}</style></head><body><h1>Shoal DataNode {id}</h1>\
         <p>{} maintain tasks running, {} finished and not yet acknowledged · highest epoch {} · \
         <a href=\"/metrics\">metrics</a></p><p class=\"muted\">The cluster's status page is \
         on the ConfigNode's metrics port.</p></body></html>\n",
        counts.running,
        counts.terminal,
        node.highest_epoch().0
    )
}

/// Unix ms as RFC 3339 UTC with milliseconds (`-` for 0, meaning unknown).
pub fn rfc3339(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(time).to_string()
}

/// The label value of a procedure status (lower case: the status page and
/// the metrics' `status` label say it alike).
pub fn view_label(view: ProcedureView) -> &'static str {
    match view {
        ProcedureView::Running => "running",
        ProcedureView::Waiting => "waiting",
        ProcedureView::Suspended => "suspended",
        ProcedureView::RollingBack => "rolling_back",
        ProcedureView::Succeeded => "succeeded",
        ProcedureView::Failed => "failed",
        ProcedureView::RolledBack => "rolled_back",
        ProcedureView::Unreadable => "unreadable",
    }
}

#[cfg(test)]
mod tests;
