use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, ProcedureId, ReplicationFactor,
};
use shoal_core::state::{DataNodeStatus, DatabaseEntry};

use super::*;

const NOW: u64 = 1_795_000_000_000;

fn procedure(id: u64, type_name: &str, status: ProcedureView) -> ProcedureInfo {
    ProcedureInfo {
        id: ProcedureId(id),
        type_code: 1,
        type_name: type_name.into(),
        state_code: 1,
        state_name: "RemoveGroups".into(),
        status,
        parent: None,
        children: Vec::new(),
        submitted_at_ms: 0,
        updated_at_ms: 0,
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

fn snapshot(procedures: Vec<ProcedureInfo>) -> Snapshot {
    let rf = ReplicationFactor::new(3).expect("valid");
    Snapshot {
        now_unix_ms: NOW,
        epoch: 7,
        is_leader: true,
        data_nodes: vec![(
            DataNodeInfo {
                location: DataNodeLocation {
                    id: DataNodeId(1),
                    address: "127.0.0.1:6001".into(),
                },
                status: DataNodeStatus::Unknown,
            },
            12,
        )],
        databases: vec![DatabaseSummary {
            entry: DatabaseEntry {
                schema: DatabaseSchema {
                    name: DatabaseName::new("metrics").expect("valid"),
                    schema_replication_factor: rf,
                    data_replication_factor: rf,
                },
                deleting: true,
                created_by: None,
            },
            schema_region_groups: 1,
            data_region_groups: 4,
        }],
        procedures,
        queued_creates: 2,
        legacy_deletions: 0,
    }
}

#[test]
fn a_suspended_deletion_shows_it_waits_for_its_children_and_how_many_are_done() {
    let mut parent = procedure(10, "DeleteDatabase", ProcedureView::Suspended);
    parent.children = vec![ProcedureId(11), ProcedureId(12), ProcedureId(13)];
    let mut children = Vec::new();
    for (id, status) in [
        (11, ProcedureView::Succeeded),
        (12, ProcedureView::Running),
        (13, ProcedureView::Waiting),
    ] {
        let mut child = procedure(id, "RemoveRegionGroup", status);
        child.parent = Some(ProcedureId(10));
        children.push(child);
    }
    let mut all = vec![parent];
    all.extend(children);
    let page = render(&snapshot(all));

    assert!(page.contains("waiting for its children"), "{page}");
    assert!(
        !page.contains("running RemoveGroups"),
        "a suspended parent must not read as running its next state: {page}"
    );
    assert!(page.contains("1 of 3 children done"), "{page}");
    assert!(page.contains("1 top-level, 3 in all"), "{page}");
    // Children are counted in the parent's progress, not listed as rows of their own.
    assert!(!page.contains("<td>RemoveRegionGroup</td>"), "{page}");
    assert!(page.contains("1m05s"), "age of the parent: {page}");
}

#[test]
fn the_page_lists_datanodes_databases_and_refreshes_itself() {
    let page = render(&snapshot(Vec::new()));
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");
    assert!(page.contains("127.0.0.1:6001"), "{page}");
    assert!(page.contains("class=\"unknown\">Unknown"), "{page}");
    assert!(page.contains("<td>12</td>"), "replica count: {page}");
    assert!(page.contains("<td>metrics</td>"), "{page}");
    assert!(page.contains("4 × 3"), "data groups × RF: {page}");
    assert!(page.contains("being deleted"), "{page}");
    assert!(page.contains("epoch 7"), "{page}");
    assert!(page.contains("2 queued creates"), "{page}");
}

#[test]
fn failures_are_listed_newest_first_with_their_errors_escaped() {
    let mut old = procedure(1, "CreateDatabase", ProcedureView::Failed);
    old.updated_unix_ms = NOW - 60_000;
    old.last_error = Some("old failure".into());
    let mut new = procedure(2, "DeleteDatabase", ProcedureView::RolledBack);
    new.updated_unix_ms = NOW - 1_000;
    new.last_error = Some("<script>alert(1)</script> & more".into());
    let ok = procedure(3, "CreateDatabase", ProcedureView::Succeeded);
    let page = render(&snapshot(vec![old, new, ok]));

    assert!(page.contains("Recent failures (2)"), "{page}");
    let newer = page.find("&lt;script&gt;").expect("escaped error shown");
    let older = page.find("old failure").expect("old error shown");
    assert!(newer < older, "newest first: {page}");
    assert!(!page.contains("<script>"), "nothing unescaped: {page}");
    assert!(page.contains("&amp; more"), "{page}");
    assert!(page.contains(&rfc3339(NOW - 1_000)), "{page}");
}

#[test]
fn times_and_durations_read_as_people_write_them() {
    assert_eq!(rfc3339(0), "-");
    assert_eq!(rfc3339(1_000), "1970-01-01T00:00:01.000Z");
    assert_eq!(human_duration(350), "350ms");
    assert_eq!(human_duration(4_250), "4.2s");
    assert_eq!(human_duration(185_000), "3m05s");
    assert_eq!(human_duration(3_720_000), "1h02m");
}
