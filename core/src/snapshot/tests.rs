use proptest::prelude::*;

use super::*;
use crate::test_support::plan_history;

fn state_after(plans: &[crate::plan::ConfigPlan]) -> ClusterState {
    let mut state = ClusterState::default();
    for plan in plans {
        let _ = state.apply(plan);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn snapshot_round_trips(plans in plan_history(60), index in 0u64..1000, term in 0u64..9) {
        let snap = Snapshot { last_index: index, last_term: term, state: state_after(&plans) };
        let bytes = encode(&snap).unwrap();
        prop_assert_eq!(&bytes[..8], MAGIC.as_slice());
        prop_assert_eq!(decode(&bytes).unwrap(), snap);
    }

    #[test]
    fn flipped_byte_is_a_checksum_error(
        plans in plan_history(30),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let snap = Snapshot { last_index: 3, last_term: 1, state: state_after(&plans) };
        let mut bytes = encode(&snap).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= mask;
        let err = decode(&bytes).unwrap_err();
        if i < MAGIC.len() {
            prop_assert_eq!(err, SnapshotError::BadMagic);
        } else {
            prop_assert!(matches!(err, SnapshotError::Checksum { .. }), "byte {i}: {err:?}");
        }
    }

    #[test]
    fn truncation_is_a_typed_error(plans in plan_history(20), cut in any::<prop::sample::Index>()) {
        let snap = Snapshot { last_index: 3, last_term: 1, state: state_after(&plans) };
        let bytes = encode(&snap).unwrap();
        let len = cut.index(bytes.len());
        let err = decode(&bytes[..len]).unwrap_err();
        prop_assert!(
            matches!(err, SnapshotError::Truncated { .. } | SnapshotError::BadMagic | SnapshotError::Checksum { .. }),
            "{err:?}"
        );
    }
}

#[test]
fn future_version_is_refused_by_number() {
    let bytes = frame(9, &[0xa0]);
    assert_eq!(decode(&bytes), Err(SnapshotError::UnsupportedVersion(9)));
}

#[test]
fn v1_legacy_delete_tasks_become_pending_legacy_deletions() {
    use crate::model::*;
    use crate::state::RegionMaintainKind;
    let task = |kind| RegionMaintainTaskV2 {
        kind,
        database: DatabaseName::new("db").unwrap(),
        region: RegionReplicaSet::new(RegionId::new(RegionKind::Data, 1), vec![DataNodeId(0)]),
        target: DataNodeLocation::new(DataNodeId(0), "127.0.0.1:1").unwrap(),
    };
    let mut v1 = ClusterStateV1::default();
    v1.region_maintain_queue
        .insert(TaskId(1), task(RegionMaintainKind::Create));
    v1.region_maintain_queue
        .insert(TaskId(2), task(RegionMaintainKind::LegacyDelete));
    let bytes = encode_v1(&SnapshotV1 {
        last_index: 5,
        last_term: 2,
        state: v1,
    })
    .unwrap();
    let loaded = decode(&bytes).unwrap();
    assert_eq!(loaded.last_index, 5);
    assert_eq!(
        loaded
            .state
            .region_maintain_queue
            .keys()
            .collect::<Vec<_>>(),
        [&TaskId(1)]
    );
    assert_eq!(
        loaded
            .state
            .pending_legacy_deletions
            .keys()
            .collect::<Vec<_>>(),
        [&TaskId(2)]
    );
}

#[test]
fn v2_upgrade_derives_footprints_from_what_could_hold_a_replica() {
    use crate::model::*;
    use crate::state::{PartitionTable, RegionMaintainKind};
    let db = DatabaseName::new("db").unwrap();
    let region = |id| RegionId::new(RegionKind::Data, id);
    let location = |n| DataNodeLocation::new(DataNodeId(n), format!("127.0.0.1:{n}")).unwrap();
    let task = |kind, r, n| RegionMaintainTaskV2 {
        kind,
        database: db.clone(),
        region: RegionReplicaSet::new(region(r), vec![DataNodeId(0), DataNodeId(1)]),
        target: location(n),
    };
    let mut v2 = ClusterStateV2::default();
    let mut table = PartitionTable::default();
    table.groups.insert(
        region(1),
        RegionReplicaSet::new(region(1), vec![DataNodeId(0), DataNodeId(1)]),
    );
    v2.partition_tables.insert(db.clone(), table);
    v2.region_maintain_queue
        .insert(TaskId(4), task(RegionMaintainKind::Create, 1, 2));
    v2.pending_legacy_deletions
        .insert(TaskId(3), task(RegionMaintainKind::LegacyDelete, 7, 5));
    let bytes = encode_v2(&SnapshotV2 {
        last_index: 9,
        last_term: 2,
        state: v2,
    })
    .unwrap();
    let state = decode(&bytes).unwrap().state;
    assert_eq!(
        state.footprint(region(1)),
        vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
        "published replicas and the queued create's target"
    );
    assert_eq!(
        state.footprint(region(7)),
        vec![DataNodeId(5)],
        "legacy deletion"
    );
    assert_eq!(
        state.region_maintain_queue[&TaskId(4)].target,
        DataNodeId(2)
    );
    assert_eq!(
        state.pending_legacy_deletions[&TaskId(3)].target,
        DataNodeId(5)
    );
    // Re-encoded as the current version, it reads back the same.
    let again = encode(&Snapshot {
        last_index: 9,
        last_term: 2,
        state: state.clone(),
    })
    .unwrap();
    assert_eq!(u16::from_be_bytes([again[8], again[9]]), CURRENT_VERSION);
    assert_eq!(decode(&again).unwrap().state, state);
}
