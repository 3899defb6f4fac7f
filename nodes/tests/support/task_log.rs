//! Evidence from DataNode logs: which maintain tasks each DataNode accepted and finished.
//!
//! A DataNode logs `maintain task accepted` when it journals a task id it has not seen (a
//! resubmission of a known id logs nothing) and `maintain task finished` once the outcome is
//! durable, each with `task_id`, `region` and (finished) `outcome` fields. A task resumed after
//! a restart logs `resuming ...`, not `accepted`. So, per DataNode log: an id accepted twice or
//! finished twice ran twice.
//!
//! A SIGKILL between journaling a result and writing its log line loses the `finished` line
//! (the task still ran once; the restarted DataNode reports its journaled result). So the
//! successful deletion of a replica is also read from the ConfigNode's `replica deleted`
//! line (`data_node`, `region`, `task`), and a replica deleted once has exactly one task id
//! with a successful finish in either log.

use std::collections::BTreeMap;
use std::path::Path;

/// What a log line says happened to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEventKind {
    /// Accepted as a new task.
    Accepted,
    /// Finished, successfully or not.
    Finished {
        /// Whether the outcome was success.
        success: bool,
    },
}

/// One `maintain task accepted|finished` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEvent {
    pub kind: TaskEventKind,
    pub task_id: String,
    pub region: String,
    /// The whole line (colour codes removed), as evidence.
    pub line: String,
}

/// Removes ANSI escape sequences (`ESC [ ... final-byte`), so coloured logs parse too.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in '@'..='~'.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The `key=value` fields of a tracing line; quoted values (`kind="Delete"`, with `\"`
/// escapes) are unquoted. Words that are not `key=value` are skipped.
pub fn fields(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = line;
    while !rest.is_empty() {
        rest = rest.trim_start();
        let word_end = rest.find([' ', '=']).unwrap_or(rest.len());
        if rest[word_end..].starts_with('=') {
            let key = rest[..word_end].to_string();
            let after = &rest[word_end + 1..];
            let (value, consumed) = if let Some(quoted) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut escaped = false;
                let mut end = quoted.len();
                for (i, c) in quoted.char_indices() {
                    match (escaped, c) {
                        (true, c) => {
                            value.push(c);
                            escaped = false;
                        }
                        (false, '\\') => escaped = true,
                        (false, '"') => {
                            end = i + 1;
                            break;
                        }
                        (false, c) => value.push(c),
                    }
                }
                (value, 1 + end)
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_string(), end)
            };
            out.insert(key, value);
            rest = &after[consumed.min(after.len())..];
        } else {
            rest = &rest[word_end..];
        }
    }
    out
}

/// Parses one log line, if it is a task acceptance or finish.
pub fn parse_task_event(raw: &str) -> Option<TaskEvent> {
    let line = strip_ansi(raw);
    let (kind, after) = if let Some((_, after)) = line.split_once("maintain task accepted") {
        (TaskEventKind::Accepted, after)
    } else if let Some((_, after)) = line.split_once("maintain task finished") {
        let outcome = fields(after).get("outcome").cloned().unwrap_or_default();
        (
            TaskEventKind::Finished {
                success: outcome == "success",
            },
            after,
        )
    } else {
        return None;
    };
    let fields = fields(after);
    Some(TaskEvent {
        kind,
        task_id: fields.get("task_id")?.clone(),
        region: fields.get("region")?.clone(),
        line: line.trim_end().to_string(),
    })
}

/// Every task event in the log file at `path` (missing file: none).
pub fn read_task_events(path: &Path) -> Vec<TaskEvent> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(parse_task_event).collect())
        .unwrap_or_default()
}

/// Task ids one DataNode accepted as new twice or finished twice, with the lines that show
/// it.
pub fn tasks_run_twice(events: &[TaskEvent]) -> BTreeMap<String, Vec<String>> {
    let mut by_task: BTreeMap<&str, Vec<&TaskEvent>> = BTreeMap::new();
    for event in events {
        by_task.entry(&event.task_id).or_default().push(event);
    }
    by_task
        .into_iter()
        .filter(|(_, events)| {
            let accepted = events
                .iter()
                .filter(|e| e.kind == TaskEventKind::Accepted)
                .count();
            let finished = events.len() - accepted;
            accepted > 1 || finished > 1
        })
        .map(|(task, events)| {
            (
                task.to_string(),
                events.iter().map(|e| e.line.clone()).collect(),
            )
        })
        .collect()
}

/// A successful replica deletion as the ConfigNode logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaDeleted {
    /// The DataNode's label (`dn-<id>`).
    pub data_node: String,
    pub region: String,
    pub task_id: String,
    pub line: String,
}

/// Parses a ConfigNode `replica deleted` line.
pub fn parse_replica_deleted(raw: &str) -> Option<ReplicaDeleted> {
    let line = strip_ansi(raw);
    let (_, after) = line.split_once("replica deleted ")?;
    let fields = fields(after);
    if fields.get("outcome").map(String::as_str) != Some("success") {
        return None;
    }
    Some(ReplicaDeleted {
        data_node: fields.get("data_node")?.clone(),
        region: fields.get("region")?.clone(),
        task_id: fields.get("task")?.clone(),
        line: line.trim_end().to_string(),
    })
}

/// Every `replica deleted` line in the ConfigNode log at `path`.
pub fn read_replica_deletions(path: &Path) -> Vec<ReplicaDeleted> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(parse_replica_deleted).collect())
        .unwrap_or_default()
}

/// Per region, per task id: the lines showing that task deleted the region successfully on
/// the DataNode whose log gave `events` and whose label is `data_node` (ConfigNode lines).
pub fn successful_deletions(
    events: &[TaskEvent],
    confignode: &[ReplicaDeleted],
    data_node: &str,
) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for event in events {
        if event.kind == (TaskEventKind::Finished { success: true }) {
            out.entry(event.region.clone())
                .or_default()
                .entry(event.task_id.clone())
                .or_default()
                .push(event.line.clone());
        }
    }
    for deleted in confignode.iter().filter(|d| d.data_node == data_node) {
        out.entry(deleted.region.clone())
            .or_default()
            .entry(deleted.task_id.clone())
            .or_default()
            .push(deleted.line.clone());
    }
    out
}

#[test]
fn task_lines_parse_with_or_without_colour() {
    let plain = "2026-11-28T18:55:21.089126Z  INFO shoal_core::datanode::runner: maintain task \
                 finished data_node=dn-2 task_id=task-1048577 region=data-3 \
                 kind=\"DeleteRegionPeer\" outcome=\"success\" reason=\"\" duration_ms=1002";
    let coloured = "\u{1b}[2m2026-11-28T18:55:21.089126Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \
                    \u{1b}[2mshoal_core::datanode::service\u{1b}[0m\u{1b}[2m:\u{1b}[0m maintain \
                    task accepted \u{1b}[3mdata_node\u{1b}[0m\u{1b}[2m=\u{1b}[0mdn-2 \
                    \u{1b}[3mtask_id\u{1b}[0m\u{1b}[2m=\u{1b}[0mtask-1048577 \
                    \u{1b}[3mregion\u{1b}[0m\u{1b}[2m=\u{1b}[0mdata-3 \
                    \u{1b}[3mkind\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"DeleteRegionPeer\" \
                    \u{1b}[3mepoch\u{1b}[0m\u{1b}[2m=\u{1b}[0m1";
    let failed = "INFO x: maintain task finished task_id=task-9 region=schema-1 \
                  outcome=\"fail\" reason=\"deleting data of schema-1: disk \\\"gone\\\"\"";
    let finished = parse_task_event(plain).expect("finished line");
    assert_eq!(finished.kind, TaskEventKind::Finished { success: true });
    assert_eq!(
        (finished.task_id.as_str(), finished.region.as_str()),
        ("task-1048577", "data-3")
    );
    let accepted = parse_task_event(coloured).expect("accepted line");
    assert_eq!(accepted.kind, TaskEventKind::Accepted);
    assert_eq!(
        (accepted.task_id.as_str(), accepted.region.as_str()),
        ("task-1048577", "data-3")
    );
    assert!(!accepted.line.contains('\u{1b}'));
    let failed = parse_task_event(failed).expect("failed line");
    assert_eq!(failed.kind, TaskEventKind::Finished { success: false });
    assert_eq!(failed.region, "schema-1");
    assert_eq!(
        parse_task_event("INFO resuming maintain task found unfinished"),
        None
    );

    let twice = [accepted.clone(), finished.clone(), accepted, finished];
    assert_eq!(tasks_run_twice(&twice).len(), 1);
    assert!(tasks_run_twice(&twice[..2]).is_empty());

    let cn = "2026-11-28T19:13:19.121719Z  INFO step{procedure=proc-3 epoch=epoch-1}: \
              shoal_core::procedures::remove_region_group: replica deleted procedure=proc-3 \
              region=data-3 data_node=dn-2 task=task-1048577 outcome=\"success\" duration_ms=1085";
    let cn = parse_replica_deleted(cn).expect("ConfigNode line");
    assert_eq!(
        (
            cn.data_node.as_str(),
            cn.region.as_str(),
            cn.task_id.as_str()
        ),
        ("dn-2", "data-3", "task-1048577")
    );
    // The same task seen in both logs is one deletion; a finish line lost to SIGKILL is
    // covered by the ConfigNode's line.
    let both = successful_deletions(&twice, std::slice::from_ref(&cn), "dn-2");
    assert_eq!(both["data-3"].len(), 1);
    assert_eq!(both["data-3"]["task-1048577"].len(), 3);
    let lost = successful_deletions(&[], std::slice::from_ref(&cn), "dn-2");
    assert_eq!(lost["data-3"].len(), 1);
    assert!(successful_deletions(&[], &[cn], "dn-1").is_empty());
}
