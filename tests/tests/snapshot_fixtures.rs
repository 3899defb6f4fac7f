//! Committed snapshot fixtures of every format version load under the current code, forever.

use shoal_core::model::{DataNodeId, RegionId, RegionKind, TaskId};
use shoal_core::snapshot;
use shoal_core::state::RegionMaintainKind;
use shoal_tests::fixtures::{SNAPSHOT_V1, SNAPSHOT_V2, fixture_dir};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).expect("fixture file is committed")
}

#[test]
fn v1_fixture_loads_with_legacy_deletions_pending() {
    let loaded = snapshot::decode(&read(SNAPSHOT_V1)).expect("v1 fixture decodes");
    assert_eq!((loaded.last_index, loaded.last_term), (40, 2));
    let state = loaded.state;
    let pending: Vec<_> = state.pending_legacy_deletions.keys().copied().collect();
    assert_eq!(
        pending,
        [TaskId(100), TaskId(101)],
        "no legacy deletion is dropped"
    );
    for (task, node) in [(TaskId(100), DataNodeId(0)), (TaskId(101), DataNodeId(1))] {
        let deletion = &state.pending_legacy_deletions[&task];
        assert_eq!(deletion.kind, RegionMaintainKind::LegacyDelete);
        assert_eq!(deletion.region.region, RegionId::new(RegionKind::Data, 9));
        assert_eq!(deletion.target.id, node);
        assert_eq!(deletion.database.as_str(), "old_db");
    }
    // The create task stays in the queue; the rest of the state is intact.
    assert_eq!(state.region_maintain_queue.len(), 1);
    assert!(
        state
            .region_maintain_queue
            .values()
            .all(|t| t.kind == RegionMaintainKind::Create)
    );
    assert_eq!(state.data_nodes.len(), 3);
    assert_eq!(state.databases.len(), 2);
    assert_eq!(state.region_groups().count(), 4);
    assert_eq!(state.procedures.len(), 1);
    assert_eq!(state.next_task_id, 102);
}

#[test]
fn v2_fixture_loads_and_reencodes_byte_identically() {
    let bytes = read(SNAPSHOT_V2);
    let loaded = snapshot::decode(&bytes).expect("v2 fixture decodes");
    assert_eq!((loaded.last_index, loaded.last_term), (12, 3));
    assert_eq!(loaded.state.region_groups().count(), 4);
    assert!(loaded.state.pending_legacy_deletions.is_empty());
    let reencoded = snapshot::encode(&loaded).expect("encodes");
    assert!(
        reencoded == bytes,
        "v2 re-encoding differs from the committed fixture"
    );
}

#[test]
fn damaged_fixture_is_a_checksum_error() {
    let mut bytes = read(SNAPSHOT_V2);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    assert!(matches!(
        snapshot::decode(&bytes),
        Err(snapshot::SnapshotError::Checksum { .. })
    ));
}
