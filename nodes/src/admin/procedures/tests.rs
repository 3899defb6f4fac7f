use shoal_core::api::ProcedureView;
use shoal_core::model::{DatabaseName, ProcedureId};

use super::*;

const NOW: u64 = 1_795_000_000_000;

fn procedure(id: u64, type_name: &str, status: ProcedureView) -> ProcedureInfo {
    ProcedureInfo {
        id: ProcedureId(id),
        type_code: 1,
        type_name: type_name.into(),
        state_code: 1,
        state_name: "DropPartitionTable".into(),
        status,
        parent: None,
        children: Vec::new(),
        submitted_at_ms: 1_000,
        updated_at_ms: 5_200,
        submitted_unix_ms: NOW - 65_000,
        updated_unix_ms: NOW - 1_000,
        attempts: 0,
        last_error: None,
        waiting_for: None,
        output: None,
        request_key: None,
        database: None,
        notes: Vec::new(),
    }
}

fn db(name: &str) -> Option<DatabaseName> {
    Some(DatabaseName::new(name).expect("valid"))
}

/// A deletion of `metrics` suspended on two children (one done), a finished create of
/// `logs`, and a failed create of `metrics`.
fn sample() -> Vec<ProcedureInfo> {
    let mut create_logs = procedure(1, "CreateRegionGroups", ProcedureView::Succeeded);
    create_logs.database = db("logs");
    let mut failed = procedure(2, "CreateRegionGroups", ProcedureView::Failed);
    failed.database = db("metrics");
    failed.last_error = Some("no quorum".into());
    let mut delete = procedure(3, "DeleteDatabase", ProcedureView::Suspended);
    delete.database = db("metrics");
    delete.children = vec![ProcedureId(4), ProcedureId(5)];
    let mut done = procedure(4, "RemoveRegionGroup", ProcedureView::Succeeded);
    done.parent = Some(ProcedureId(3));
    let mut running = procedure(5, "RemoveRegionGroup", ProcedureView::Waiting);
    running.parent = Some(ProcedureId(3));
    running.waiting_for = Some("task 9 on dn-2".into());
    vec![create_logs, failed, delete, done, running]
}

fn ids(kept: &[&ProcedureInfo]) -> Vec<u64> {
    kept.iter().map(|p| p.id.0).collect()
}

#[test]
fn listing_is_newest_first_and_limit_keeps_the_newest() {
    let all = sample();
    assert_eq!(
        ids(&ProcedureFilter::default().apply(&all)),
        [5, 4, 3, 2, 1]
    );
    let two = ProcedureFilter {
        limit: Some(2),
        ..ProcedureFilter::default()
    };
    assert_eq!(ids(&two.apply(&all)), [5, 4]);
}

#[test]
fn status_filter_is_typed_and_unfinished_covers_every_live_status() {
    let all = sample();
    let by = |status| ProcedureFilter {
        status: Some(status),
        ..ProcedureFilter::default()
    };
    assert_eq!(ids(&by(StatusFilter::Failed).apply(&all)), [2]);
    assert_eq!(ids(&by(StatusFilter::Succeeded).apply(&all)), [4, 1]);
    assert_eq!(ids(&by(StatusFilter::Unfinished).apply(&all)), [5, 3]);
    assert!(by(StatusFilter::Running).apply(&all).is_empty());
}

#[test]
fn type_filter_ignores_case() {
    let all = sample();
    let filter = ProcedureFilter {
        type_name: Some("deletedatabase".into()),
        ..ProcedureFilter::default()
    };
    assert_eq!(ids(&filter.apply(&all)), [3]);
}

#[test]
fn database_filter_includes_children_through_their_parent() {
    let all = sample();
    let filter = ProcedureFilter {
        database: db("metrics"),
        ..ProcedureFilter::default()
    };
    assert_eq!(ids(&filter.apply(&all)), [5, 4, 3, 2]);
}

#[test]
fn a_bad_database_name_is_refused() {
    let args = ProcedureFilterArgs {
        database: Some("no spaces".into()),
        ..ProcedureFilterArgs::default()
    };
    assert!(matches!(
        ProcedureFilter::from_args(&args),
        Err(CliError::Invalid(_))
    ));
}

#[test]
fn table_has_a_header_and_rfc3339_times_and_says_a_parent_waits_for_children() {
    let all = sample();
    let text = procedure_table(&ProcedureFilter::default().apply(&all), &all, NOW);
    let mut lines = text.lines();
    let header = lines.next().expect("header");
    assert!(header.starts_with("ID "), "{header}");
    for column in [
        "TYPE",
        "STATUS",
        "SUBMITTED",
        "DURATION",
        "DATABASE",
        "DETAIL",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let delete = text
        .lines()
        .find(|l| l.starts_with("proc-3"))
        .expect("proc-3");
    assert!(
        delete.contains("waiting for its children (1 of 2 children done)"),
        "{delete}"
    );
    assert!(
        !delete.contains("running DropPartitionTable"),
        "a suspended parent must not read as running its next state: {delete}"
    );
    assert!(
        delete.contains("2026-11-18T11:05:35.000Z"),
        "RFC 3339 submission: {delete}"
    );
    assert!(
        delete.contains("1m05s so far"),
        "an unfinished one's age: {delete}"
    );
    let create = text
        .lines()
        .find(|l| l.starts_with("proc-1"))
        .expect("proc-1");
    assert!(
        create.contains("4.2s") && !create.contains("so far"),
        "a finished one's monotonic duration: {create}"
    );
}

#[test]
fn duration_falls_back_to_the_wall_clock_when_the_monotonic_clocks_differ() {
    let mut p = procedure(1, "DeleteDatabase", ProcedureView::Succeeded);
    p.submitted_at_ms = 90_000;
    p.updated_at_ms = 10;
    assert_eq!(duration_ms(&p), 64_000);
    p.submitted_unix_ms = 0;
    assert_eq!(
        duration_ms(&p),
        0,
        "no wall-clock stamps: unknown, not 55 years"
    );
}

#[test]
fn detail_shows_duration_attempts_waits_error_and_children() {
    let all = sample();
    let text = procedure_detail(&all[2], &all);
    for want in [
        "database:   metrics",
        "duration:   ",
        "next state: DropPartitionTable",
        "doing:      waiting for its children",
        "children:   1 of 2 children done",
        "proc-5 RemoveRegionGroup Waiting: waiting for task 9 on dn-2",
        "attempts:   0",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let failed = procedure_detail(&all[1], &all);
    assert!(failed.contains("last error: no quorum"), "{failed}");
}

#[test]
fn json_carries_the_status_name_and_times() {
    let all = sample();
    let by_id = all.iter().map(|p| (p.id, p)).collect();
    let json = serde_json::to_value(ProcedureJson::of(&all[2], &by_id)).expect("json");
    assert_eq!(json["status"], "Suspended");
    assert_eq!(json["type_name"], "DeleteDatabase");
    assert_eq!(json["state_name"], "DropPartitionTable");
    assert_eq!(json["database"], "metrics");
    assert_eq!(json["children_done"], 1);
    assert_eq!(json["duration_ms"], 4_200);
    assert!(
        json["submitted"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{json}"
    );
}
