use std::sync::Arc;

use openraft::vote::leader_id_std::CommittedLeaderId;
use shoal_core::plan::RegisterDataNode;
use shoal_core::storage::mem::MemSnapshotStore;

use super::*;

fn sm() -> (StateMachine, Arc<StateCell>) {
    let state = Arc::new(StateCell::default());
    let sm = StateMachine::new(
        state.clone(),
        Arc::new(MemSnapshotStore::new()),
        None,
        FailureCell::default(),
    )
    .expect("state machine");
    (sm, state)
}

fn entry(term: u64, index: u64, request: RaftRequest) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term), index),
        payload: EntryPayload::Normal(request),
    }
}

fn plan(epoch: u64, address: &str) -> RaftRequest {
    let plan = ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: address.into(),
    });
    RaftRequest::Plan {
        epoch,
        plan: plan.encode().expect("encode"),
    }
}

#[test]
fn a_plan_applies_only_under_the_epoch_in_force() {
    let (sm, state) = sm();
    let shared = sm.shared();
    let applied = shared
        .apply_entry(&entry(3, 1, plan(3, "a:1")))
        .expect("apply");
    assert!(
        matches!(applied, RaftResponse::Applied(Ok(_))),
        "{applied:?}"
    );
    // Proposed at epoch 3 but committed in term 4 (a leader change in between).
    let stale = shared
        .apply_entry(&entry(4, 2, plan(3, "b:1")))
        .expect("apply");
    assert_eq!(
        stale,
        RaftResponse::StaleEpoch {
            proposed: 3,
            current: 4
        }
    );
    assert_eq!(
        state.read(|s| s.data_nodes.len()),
        1,
        "the stale plan changed nothing"
    );
    assert_eq!(shared.last_applied().map(|id| id.index), Some(2));
}

#[test]
fn raising_the_floor_fences_the_old_epoch_and_every_later_term_stays_above() {
    let (sm, state) = sm();
    let shared = sm.shared();
    let raised = shared
        .apply_entry(&entry(
            2,
            1,
            RaftRequest::RaiseEpochFloor {
                epoch: 2,
                above: 1_000_000,
            },
        ))
        .expect("apply");
    assert_eq!(raised, RaftResponse::EpochRaised { epoch: 1_000_001 });
    let old = shared
        .apply_entry(&entry(2, 2, plan(2, "old:1")))
        .expect("apply");
    assert!(matches!(old, RaftResponse::StaleEpoch { .. }), "{old:?}");
    let new = shared
        .apply_entry(&entry(2, 3, plan(1_000_001, "new:1")))
        .expect("apply");
    assert!(matches!(new, RaftResponse::Applied(Ok(_))), "{new:?}");
    assert_eq!(
        epoch_of(3, shared.floor()),
        1_000_002,
        "the next term is higher still"
    );
    // A raise from a stale epoch changes nothing.
    let stale = shared
        .apply_entry(&entry(
            3,
            4,
            RaftRequest::RaiseEpochFloor {
                epoch: 2,
                above: 5_000_000,
            },
        ))
        .expect("apply");
    assert!(
        matches!(stale, RaftResponse::StaleEpoch { .. }),
        "{stale:?}"
    );
    assert_eq!(epoch_of(3, shared.floor()), 1_000_002);
    assert_eq!(state.read(|s| s.data_nodes.len()), 1);
}

#[test]
fn an_undecodable_committed_plan_stops_the_node_instead_of_being_skipped() {
    let (sm, _) = sm();
    let shared = sm.shared();
    let failure = shared.failure.clone();
    let damaged = RaftRequest::Plan {
        epoch: 1,
        plan: vec![0xde, 0xad],
    };
    assert!(shared.apply_entry(&entry(1, 1, damaged)).is_err());
    let recorded = failure.get().expect("recorded");
    assert!(
        matches!(recorded, ConsensusError::CorruptEntry { index: 2, .. }),
        "{recorded:?}"
    );
    assert!(recorded.is_fatal());
}

#[test]
fn snapshot_bytes_round_trip_and_damage_is_refused() {
    let mut state = ClusterState::default();
    state
        .apply(&ConfigPlan::RegisterDataNode(RegisterDataNode {
            known_id: None,
            address: "a:1".into(),
        }))
        .expect("apply");
    let header = SnapshotHeader {
        last_log_id: Some(StoredLogId { term: 4, index: 41 }),
        membership_log_id: Some(StoredLogId { term: 1, index: 0 }),
        membership: StoredMembership {
            configs: vec![[1, 2, 3].into()],
            nodes: [(1, "a".into()), (2, "b".into()), (3, "c".into())].into(),
        },
        floor: 77,
    };
    let bytes = encode_snapshot(&header, &state).expect("encode");
    let decoded = decode_snapshot(&bytes).expect("decode");
    assert_eq!((decoded.header, decoded.state), (header, state));
    assert_eq!(snapshot_store_index(&bytes), Ok(42));
    for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x40;
        assert!(decode_snapshot(&damaged).is_err(), "flip at {at}");
    }
    assert!(decode_snapshot(&bytes[..bytes.len() - 1]).is_err());
}
