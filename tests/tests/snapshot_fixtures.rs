//! Committed fixtures of every snapshot format version, and of an old log, load under the
//! current code, forever.

use shoal_core::model::{DataNodeId, MaintainQueueId, RegionId, RegionKind};
use shoal_core::snapshot;
use shoal_core::state::ClusterState;
use shoal_tests::fixtures::{
    self, LEGACY_LOG, SNAPSHOT_V1, SNAPSHOT_V2, SNAPSHOT_V3, decode_log, fixture_dir,
};

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).expect("fixture file is committed")
}

#[test]
fn v1_fixture_loads_with_legacy_deletions_pending() {
    let loaded = snapshot::decode(&read(SNAPSHOT_V1)).expect("v1 fixture decodes");
    assert_eq!((loaded.last_index, loaded.last_term), (40, 2));
    let state = loaded.state;
    let pending: Vec<_> = state.legacy_deletions.keys().copied().collect();
    assert_eq!(
        pending,
        [MaintainQueueId(100), MaintainQueueId(101)],
        "no legacy deletion is dropped"
    );
    for (task, node) in [
        (MaintainQueueId(100), DataNodeId(0)),
        (MaintainQueueId(101), DataNodeId(1)),
    ] {
        let deletion = &state.legacy_deletions[&task];
        assert_eq!(deletion.group.region, RegionId::new(RegionKind::Data, 9));
        assert_eq!(deletion.target, node);
        assert_eq!(deletion.database.as_str(), "old_db");
    }
    // The create task stays in the queue; the rest of the state is intact.
    assert_eq!(state.create_queue.len(), 1);
    assert_eq!(state.data_nodes.len(), 3);
    assert_eq!(state.databases.len(), 2);
    assert_eq!(state.region_groups().count(), 4);
    assert_eq!(state.procedures.len(), 1);
    assert_eq!(state.next_queue_id, 102);
}

#[test]
fn v2_fixture_loads_with_footprints_derived() {
    let loaded = snapshot::decode(&read(SNAPSHOT_V2)).expect("v2 fixture decodes");
    assert_eq!((loaded.last_index, loaded.last_term), (12, 3));
    let state = loaded.state;
    assert_eq!(state.region_groups().count(), 4);
    assert!(state.legacy_deletions.is_empty());
    // Every published replica and the queued create's target may hold a replica.
    for (_, group) in state.region_groups() {
        let footprint = state.footprint(group.region);
        for node in &group.replicas {
            assert!(footprint.contains(node), "{} misses {node}", group.region);
        }
    }
    let queued = state.create_queue.values().next().expect("queued");
    assert_eq!(queued.target, DataNodeId(2));
    assert!(
        state
            .footprint(queued.group.region)
            .contains(&DataNodeId(2))
    );
    // v3 is the same state with footprints: the upgrade and the current code agree (up to
    // which generation number each footprint entry got: unique either way).
    let without_generations = |mut s: ClusterState| {
        for footprint in s.footprints.values_mut() {
            footprint.data_nodes.values_mut().for_each(|g| *g = 0);
        }
        s.last_generation = 0;
        s
    };
    let generations: Vec<u64> = state
        .footprints
        .values()
        .flat_map(|f| f.data_nodes.values().copied())
        .collect();
    let unique: std::collections::BTreeSet<u64> = generations.iter().copied().collect();
    assert_eq!(unique.len(), generations.len(), "generations are unique");
    assert!(
        generations
            .iter()
            .all(|g| *g > 0 && *g <= state.last_generation)
    );
    assert_eq!(
        without_generations(state),
        without_generations(fixtures::base_state())
    );
}

#[test]
fn v2_shape_is_frozen() {
    let bytes = snapshot::encode_v2(&fixtures::snapshot_v2()).expect("encodes");
    assert!(
        bytes == read(SNAPSHOT_V2),
        "the frozen v2 shape no longer writes the committed v2 fixture"
    );
}

#[test]
fn v3_fixture_loads_and_reencodes_byte_identically() {
    let bytes = read(SNAPSHOT_V3);
    let loaded = snapshot::decode(&bytes).expect("v3 fixture decodes");
    assert_eq!((loaded.last_index, loaded.last_term), (13, 3));
    assert_eq!(loaded.state.region_groups().count(), 4);
    assert!(!loaded.state.footprints.is_empty());
    // A replica abandoned on a DataNode removed for good stays on record.
    let region = shoal_core::model::RegionId::new(shoal_core::model::RegionKind::Data, 2);
    assert!(loaded.state.is_abandoned(region, DataNodeId(2)));
    assert!(!loaded.state.footprint(region).contains(&DataNodeId(2)));
    let reencoded = snapshot::encode(&loaded).expect("encodes");
    assert!(
        reencoded == bytes,
        "v3 re-encoding differs from the committed fixture"
    );
}

/// Rule 10: a pre-procedure log's `PollRegionMaintainTask` pops the task it popped when it
/// was written — the legacy delete it had just executed — not the create behind it.
#[test]
fn old_logs_replay_to_the_same_state() {
    let plans = decode_log(&read(LEGACY_LOG)).expect("log fixture decodes");
    assert_eq!(
        plans,
        fixtures::legacy_log(),
        "the fixture is what we think it is"
    );
    let mut state = ClusterState::default();
    for plan in &plans {
        let _ = state.apply(plan);
    }
    assert!(
        state.legacy_deletions.is_empty(),
        "the executed legacy delete was polled: {:?}",
        state.legacy_deletions
    );
    let queued: Vec<_> = state.create_queue.iter().collect();
    assert_eq!(queued.len(), 1, "the create stays queued: {queued:?}");
    let (id, task) = queued[0];
    assert_eq!(*id, MaintainQueueId(1));
    assert_eq!(task.target, DataNodeId(2));
}

#[test]
fn damaged_fixture_is_a_checksum_error() {
    let mut bytes = read(SNAPSHOT_V3);
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    assert!(matches!(
        snapshot::decode(&bytes),
        Err(snapshot::SnapshotError::Checksum { .. })
    ));
}
