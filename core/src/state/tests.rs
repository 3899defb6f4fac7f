use proptest::prelude::*;

use super::*;
use crate::model::*;
use crate::plan::*;
use crate::snapshot::{self, Snapshot};
use crate::test_support::plan_history;

fn name(s: &str) -> DatabaseName {
    DatabaseName::new(s).unwrap()
}

fn schema(s: &str) -> DatabaseSchema {
    DatabaseSchema {
        name: name(s),
        schema_replication_factor: ReplicationFactor::new(1).unwrap(),
        data_replication_factor: ReplicationFactor::new(3).unwrap(),
    }
}

fn register(state: &mut ClusterState, port: u16) -> DataNodeId {
    match state.apply(&ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: format!("127.0.0.1:{port}"),
    })) {
        Ok(Applied::DataNodeRegistered(id)) => id,
        other => panic!("{other:?}"),
    }
}

fn cluster_with_db() -> (ClusterState, Vec<DataNodeId>) {
    let mut state = ClusterState::default();
    let nodes = (0..3).map(|i| register(&mut state, 7000 + i)).collect();
    state
        .apply(&ConfigPlan::CreateDatabase(CreateDatabase {
            schema: schema("db"),
            created_by: None,
        }))
        .unwrap();
    (state, nodes)
}

fn reserve(state: &mut ClusterState, count: u32) -> u32 {
    match state.apply(&ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count,
        for_procedure: None,
    })) {
        Ok(Applied::RegionIdsReserved { first, .. }) => first,
        other => panic!("{other:?}"),
    }
}

#[test]
fn retired_plan_applies_as_a_no_op() {
    let (mut state, nodes) = cluster_with_db();
    let before = state.clone();
    let retired = ConfigPlan::RetiredRegionLeaderHint(RetiredRegionLeaderHint {
        region: RegionId::new(RegionKind::Data, 0),
        leader: nodes[0],
    });
    let decoded = ConfigPlan::decode(&retired.encode().unwrap()).unwrap();
    assert_eq!(state.apply(&decoded), Ok(Applied::Unchanged));
    assert_eq!(state, before);
}

#[test]
fn duplicate_database_is_rejected() {
    let (mut state, _) = cluster_with_db();
    let again = ConfigPlan::CreateDatabase(CreateDatabase {
        schema: schema("db"),
        created_by: None,
    });
    assert_eq!(
        state.apply(&again),
        Err(Rejection::DatabaseExists(name("db")))
    );
}

#[test]
fn deleting_database_refuses_new_region_groups_and_creates() {
    let (mut state, nodes) = cluster_with_db();
    let first = reserve(&mut state, 1);
    state
        .apply(&ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: name("db"),
            deleting: true,
        }))
        .unwrap();
    let group = RegionReplicaSet::new(RegionId::new(RegionKind::Data, first), nodes.clone());
    let create = ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: name("db"),
        groups: vec![group],
    });
    assert_eq!(
        state.apply(&create),
        Err(Rejection::DatabaseDeleting(name("db")))
    );
    let recreate = ConfigPlan::CreateDatabase(CreateDatabase {
        schema: schema("db"),
        created_by: None,
    });
    assert_eq!(
        state.apply(&recreate),
        Err(Rejection::DatabaseDeleting(name("db")))
    );
    // Undo the mark (rollback) and the group can be created.
    state
        .apply(&ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: name("db"),
            deleting: false,
        }))
        .unwrap();
    assert_eq!(state.apply(&create), Ok(Applied::Done));
}

#[test]
fn database_is_dropped_only_after_every_region_group_is_gone() {
    let (mut state, nodes) = cluster_with_db();
    let first = reserve(&mut state, 2);
    let groups: Vec<_> = (first..first + 2)
        .map(|id| RegionReplicaSet::new(RegionId::new(RegionKind::Data, id), nodes.clone()))
        .collect();
    state
        .apply(&ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name("db"),
            groups: groups.clone(),
        }))
        .unwrap();
    let drop = ConfigPlan::DeleteDatabase(DeleteDatabase { name: name("db") });
    assert_eq!(
        state.apply(&drop),
        Err(Rejection::DatabaseNotDeleting(name("db")))
    );
    state
        .apply(&ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: name("db"),
            deleting: true,
        }))
        .unwrap();
    assert_eq!(
        state.apply(&drop),
        Err(Rejection::RegionGroupsRemain {
            name: name("db"),
            groups: 2
        })
    );
    for group in &groups {
        let remove = ConfigPlan::RemoveRegionGroup(RemoveRegionGroup {
            database: name("db"),
            region: group.region,
        });
        assert_eq!(state.apply(&remove), Ok(Applied::Done));
        assert_eq!(state.apply(&remove), Ok(Applied::Unchanged));
    }
    assert_eq!(state.apply(&drop), Ok(Applied::Done));
    assert!(state.databases.is_empty() && state.partition_tables.is_empty());
    assert_eq!(
        state.apply(&drop),
        Ok(Applied::Unchanged),
        "re-apply after a crash converges"
    );
}

#[test]
fn unreserved_region_and_unknown_node_are_rejected() {
    let (mut state, nodes) = cluster_with_db();
    let unreserved = RegionReplicaSet::new(RegionId::new(RegionKind::Data, 0), nodes.clone());
    let create = |groups| {
        ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name("db"),
            groups,
        })
    };
    assert_eq!(
        state.apply(&create(vec![unreserved])),
        Err(Rejection::RegionConflict(RegionId::new(
            RegionKind::Data,
            0
        )))
    );
    let first = reserve(&mut state, 1);
    let stranger =
        RegionReplicaSet::new(RegionId::new(RegionKind::Data, first), vec![DataNodeId(42)]);
    assert_eq!(
        state.apply(&create(vec![stranger])),
        Err(Rejection::UnknownDataNode(DataNodeId(42)))
    );
    assert_eq!(
        state.apply(&ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
            only_from: None,
            id: DataNodeId(42),
            status: DataNodeStatus::Unknown,
        })),
        Err(Rejection::UnknownDataNode(DataNodeId(42)))
    );
}

#[test]
fn retried_registration_keeps_one_id() {
    let mut state = ClusterState::default();
    let a = register(&mut state, 7000);
    let again = register(&mut state, 7000);
    let b = register(&mut state, 7001);
    assert_eq!(a, again);
    assert_ne!(a, b);
    assert_eq!(state.data_nodes.len(), 2);
}

#[test]
fn legacy_delete_offer_becomes_pending_legacy_deletion() {
    let (mut state, nodes) = cluster_with_db();
    let task = NewRegionMaintainTask {
        kind: RegionMaintainKind::LegacyDelete,
        database: name("db"),
        region: RegionReplicaSet::new(RegionId::new(RegionKind::Data, 9), nodes.clone()),
        target: state.data_nodes[&nodes[0]].location.clone(),
    };
    let result = state.apply(&ConfigPlan::OfferRegionMaintainTasks(
        OfferRegionMaintainTasks { tasks: vec![task] },
    ));
    let Ok(Applied::TasksOffered(ids)) = result else {
        panic!("{result:?}")
    };
    assert!(state.create_queue.is_empty());
    assert_eq!(state.legacy_deletions.len(), 1);
    state
        .apply(&ConfigPlan::ResolveLegacyDeletion(ResolveLegacyDeletion {
            id: ids[0],
        }))
        .unwrap();
    assert!(state.legacy_deletions.is_empty());
}

#[test]
fn request_key_returns_the_first_procedure_id() {
    let mut state = ClusterState::default();
    let new = NewProcedure {
        type_code: 1,
        type_name: "T".into(),
        state_code: 0,
        state_name: "S".into(),
        data: vec![],
        lock_keys: vec![],
        submitted_at_ms: 0,
        submitted_unix_ms: 0,
    };
    let submit = ConfigPlan::SubmitProcedure(SubmitProcedure {
        procedure: new,
        request_key: Some("req-1".into()),
    });
    let first = state.apply(&submit).unwrap();
    let second = state.apply(&submit).unwrap();
    let Applied::ProcedureSubmitted {
        id,
        existing: false,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!(second, Applied::ProcedureSubmitted { id, existing: true });
    assert_eq!(state.procedures.len(), 1);
}

#[test]
fn unfinished_procedure_cannot_be_deleted() {
    let mut state = ClusterState::default();
    let new = NewProcedure {
        type_code: 1,
        type_name: "T".into(),
        state_code: 0,
        state_name: "S".into(),
        data: vec![],
        lock_keys: vec![],
        submitted_at_ms: 0,
        submitted_unix_ms: 0,
    };
    let Ok(Applied::ProcedureSubmitted { id, .. }) =
        state.apply(&ConfigPlan::SubmitProcedure(SubmitProcedure {
            procedure: new,
            request_key: None,
        }))
    else {
        panic!()
    };
    let delete = ConfigPlan::DeleteProcedures(DeleteProcedures { ids: vec![id] });
    assert_eq!(
        state.apply(&delete),
        Err(Rejection::ProcedureNotFinished(id))
    );
    assert!(state.procedures.contains_key(&id));
}

#[test]
fn children_are_allocated_in_the_same_entry_as_the_parent_transition() {
    let mut state = ClusterState::default();
    let new = |code| NewProcedure {
        type_code: code,
        type_name: "T".into(),
        state_code: 0,
        state_name: "S".into(),
        data: vec![],
        lock_keys: vec![],
        submitted_at_ms: 0,
        submitted_unix_ms: 0,
    };
    let Ok(Applied::ProcedureSubmitted { id, .. }) =
        state.apply(&ConfigPlan::SubmitProcedure(SubmitProcedure {
            procedure: new(1),
            request_key: None,
        }))
    else {
        panic!()
    };
    let mut record = state.procedures[&id].clone();
    record.status = ProcedureStatus::Suspended;
    let result = state
        .apply(&ConfigPlan::UpdateProcedure(UpdateProcedure {
            record,
            spawn: vec![new(2), new(2)],
            expect_version: None,
        }))
        .unwrap();
    let Applied::ProcedureUpdated { children } = result else {
        panic!("{result:?}")
    };
    assert_eq!(children.len(), 2);
    assert_eq!(state.procedures[&id].children, children);
    for child in &children {
        assert_eq!(state.procedures[child].parent, Some(id));
    }
}

fn replay(plans: &[ConfigPlan]) -> ClusterState {
    let mut state = ClusterState::default();
    for plan in plans {
        let _ = state.apply(plan);
    }
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Applying a plan by value (replay) gives the result and state applying it by
    /// reference does, plan after plan.
    #[test]
    fn apply_owned_equals_apply(plans in plan_history(60)) {
        let (mut by_ref, mut owned) = (ClusterState::default(), ClusterState::default());
        for plan in plans {
            let expected = by_ref.apply(&plan);
            prop_assert_eq!(owned.apply_owned(plan), expected);
            prop_assert_eq!(&owned, &by_ref);
        }
    }

    /// State after N plans == state loaded from a snapshot taken at k, plus plans k..N.
    #[test]
    fn snapshot_then_replay_equals_full_replay(
        plans in plan_history(60),
        cut in any::<prop::sample::Index>(),
    ) {
        let k = cut.index(plans.len() + 1);
        let full = replay(&plans);
        let snap = Snapshot { last_index: k as u64, last_term: 1, state: replay(&plans[..k]) };
        let mut loaded = snapshot::decode(&snapshot::encode(&snap).unwrap()).unwrap();
        prop_assert_eq!(loaded.last_index, k as u64);
        for plan in &plans[k..] {
            // Plans also go through their encoding, as they would through the log.
            let decoded = ConfigPlan::decode(&plan.encode().unwrap()).unwrap();
            let _ = loaded.state.apply(&decoded);
        }
        prop_assert_eq!(loaded.state, full);
    }

    /// A rejected plan leaves the state exactly as it was.
    #[test]
    fn rejected_plans_change_nothing(plans in plan_history(60)) {
        let mut state = ClusterState::default();
        for plan in &plans {
            let before = state.clone();
            if state.apply(plan).is_err() {
                prop_assert_eq!(&state, &before);
            }
        }
    }
}

#[test]
fn re_offered_create_task_is_queued_once() {
    let (mut state, nodes) = cluster_with_db();
    let task = NewRegionMaintainTask {
        kind: RegionMaintainKind::Create,
        database: name("db"),
        region: RegionReplicaSet::new(RegionId::new(RegionKind::Data, 0), nodes.clone()),
        target: state.data_nodes[&nodes[2]].location.clone(),
    };
    let offer =
        ConfigPlan::OfferRegionMaintainTasks(OfferRegionMaintainTasks { tasks: vec![task] });
    let first = state.apply(&offer).unwrap();
    let second = state.apply(&offer).unwrap();
    assert_eq!(first, second, "the same task id is returned");
    assert_eq!(state.create_queue.len(), 1);
}

#[test]
fn re_applied_create_by_the_same_procedure_is_unchanged() {
    let mut state = ClusterState::default();
    let create = |by| {
        ConfigPlan::CreateDatabase(CreateDatabase {
            schema: schema("db"),
            created_by: Some(ProcedureId(by)),
        })
    };
    assert_eq!(state.apply(&create(7)), Ok(Applied::Done));
    assert_eq!(state.apply(&create(7)), Ok(Applied::Unchanged));
    assert_eq!(
        state.apply(&create(8)),
        Err(Rejection::DatabaseExists(name("db")))
    );
}

#[test]
fn a_procedures_reservation_is_returned_again_on_re_run() {
    let mut state = ClusterState::default();
    let reserve = |owner: Option<u64>| {
        ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: 3,
            for_procedure: owner.map(ProcedureId),
        })
    };
    let first = state.apply(&reserve(Some(5))).unwrap();
    assert_eq!(
        state.apply(&reserve(Some(5))).unwrap(),
        first,
        "same ids on re-run"
    );
    assert_eq!(
        state.apply(&reserve(None)).unwrap(),
        Applied::RegionIdsReserved { first: 3, count: 3 }
    );
    assert_eq!(
        state.apply(&reserve(Some(6))).unwrap(),
        Applied::RegionIdsReserved { first: 6, count: 3 }
    );
}

/// A state with one published group on three DataNodes and one running procedure.
fn with_group_and_procedure() -> (ClusterState, RegionId, ProcedureId) {
    let (mut state, nodes) = cluster_with_db();
    let region = RegionId::new(RegionKind::Data, reserve(&mut state, 1));
    state
        .apply(&ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name("db"),
            groups: vec![RegionReplicaSet::new(region, nodes)],
        }))
        .unwrap();
    let Ok(Applied::ProcedureSubmitted { id, .. }) =
        state.apply(&ConfigPlan::SubmitProcedure(SubmitProcedure {
            procedure: NewProcedure {
                type_code: 1,
                type_name: "T".into(),
                state_code: 1,
                state_name: "S".into(),
                data: vec![],
                lock_keys: vec![],
                submitted_at_ms: 0,
                submitted_unix_ms: 0,
            },
            request_key: None,
        }))
    else {
        panic!()
    };
    (state, region, id)
}

fn transition(
    state: &ClusterState,
    id: ProcedureId,
    expect_version: u64,
    effect: ConfigPlan,
) -> ConfigPlan {
    let mut record = state.procedures[&id].clone();
    record.state_code = 2;
    record.state_name = "Next".into();
    ConfigPlan::TransitionWithEffect(TransitionWithEffect {
        update: UpdateProcedure {
            record,
            spawn: Vec::new(),
            expect_version: Some(expect_version),
        },
        effect: Box::new(effect),
    })
}

#[test]
fn a_transition_and_its_effect_apply_together_or_not_at_all() {
    let (mut state, region, id) = with_group_and_procedure();
    let version = state.procedures[&id].version;
    let node = state.footprint(region)[0];
    let deleted = ConfigPlan::ReplicaDeleted(ReplicaDeleted {
        region,
        data_node: node,
    });

    // A stale version (an earlier attempt's commit landed): neither applies.
    let before = state.clone();
    let stale = transition(&state, id, version + 1, deleted.clone());
    assert!(matches!(
        state.apply(&stale),
        Err(Rejection::ProcedureVersionMismatch { .. })
    ));
    assert_eq!(
        state, before,
        "the effect must not apply without its transition"
    );

    // A refused effect: the transition does not apply either.
    let drop = ConfigPlan::DropRegionGroup(DropRegionGroup {
        database: name("db"),
        region,
    });
    assert!(matches!(
        state.apply(&transition(&state, id, version, drop)),
        Err(Rejection::ReplicasRemain { .. })
    ));
    assert_eq!(
        state, before,
        "the transition must not apply without its effect"
    );

    // Both apply.
    let both = transition(&state, id, version, deleted);
    assert!(matches!(
        state.apply(&both),
        Ok(Applied::ProcedureUpdated { .. })
    ));
    assert!(!state.footprint(region).contains(&node));
    assert_eq!(state.procedures[&id].state_name, "Next");
    assert_eq!(state.procedures[&id].version, version + 1);
    // Re-applied (a retry after an unknown outcome): refused, the effect not doubled.
    let after = state.clone();
    assert!(state.apply(&both).is_err());
    assert_eq!(state, after);
}

#[test]
fn a_procedure_plan_is_never_a_transitions_effect() {
    let (mut state, _, id) = with_group_and_procedure();
    let version = state.procedures[&id].version;
    let before = state.clone();
    let nested = ConfigPlan::DeleteProcedures(DeleteProcedures { ids: vec![id] });
    assert!(matches!(
        state.apply(&transition(&state, id, version, nested)),
        Err(Rejection::Invalid(_))
    ));
    assert_eq!(state, before);
}

fn publish_one(state: &mut ClusterState, replicas: &[DataNodeId]) -> RegionId {
    let first = reserve(state, 1);
    let region = RegionId::new(RegionKind::Data, first);
    state
        .apply(&ConfigPlan::CreateRegionGroups(CreateRegionGroups {
            database: name("db"),
            groups: vec![RegionReplicaSet::new(region, replicas.to_vec())],
        }))
        .unwrap();
    region
}

fn mark(state: &mut ClusterState, id: DataNodeId, status: DataNodeStatus) {
    state
        .apply(&ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
            only_from: None,
            id,
            status,
        }))
        .unwrap();
}

#[test]
fn a_datanode_is_unregistered_only_once_it_may_hold_no_replica() {
    let (mut state, nodes) = cluster_with_db();
    let region = publish_one(&mut state, &nodes[..2]);
    let unregister = ConfigPlan::UnregisterDataNode(UnregisterDataNode { id: nodes[1] });
    assert!(matches!(
        state.apply(&unregister),
        Err(Rejection::Invalid(_))
    ));
    mark(&mut state, nodes[1], DataNodeStatus::Removing);
    assert_eq!(
        state.apply(&unregister),
        Err(Rejection::ReplicasRemain {
            region,
            data_nodes: vec![nodes[1]]
        })
    );
    state
        .apply(&ConfigPlan::ReplicaDeleted(ReplicaDeleted {
            region,
            data_node: nodes[1],
        }))
        .unwrap();
    assert_eq!(state.apply(&unregister), Ok(Applied::Done));
    assert!(!state.data_nodes.contains_key(&nodes[1]));
    assert_eq!(state.apply(&unregister), Ok(Applied::Unchanged));
}

#[test]
fn a_footprint_never_grows_onto_a_datanode_that_is_leaving() {
    let (mut state, nodes) = cluster_with_db();
    let region = publish_one(&mut state, &nodes[..2]);
    let record = |node: DataNodeId| {
        ConfigPlan::RecordReplicaFootprints(RecordReplicaFootprints {
            database: name("db"),
            groups: vec![RegionReplicaSet::new(region, vec![node])],
        })
    };
    // Being removed: no new replica there; one already in the footprint may be re-recorded
    // (a re-run step), which changes nothing.
    mark(&mut state, nodes[2], DataNodeStatus::Removing);
    mark(&mut state, nodes[1], DataNodeStatus::Removing);
    let before = state.clone();
    assert_eq!(
        state.apply(&record(nodes[2])),
        Err(Rejection::DataNodeLeaving {
            region,
            data_node: nodes[2]
        })
    );
    assert_eq!(state, before);
    assert_eq!(state.apply(&record(nodes[1])), Ok(Applied::Unchanged));
    // A restart re-registers it: it is still being removed.
    let address = state.data_nodes[&nodes[2]].location.address.clone();
    state
        .apply(&ConfigPlan::RegisterDataNode(RegisterDataNode {
            known_id: Some(nodes[2]),
            address,
        }))
        .unwrap();
    assert_eq!(state.data_nodes[&nodes[2]].status, DataNodeStatus::Removing);
    // Abandoned (gone for good): a creation step that re-runs cannot put it back.
    state
        .apply(&ConfigPlan::AbandonReplica(AbandonReplica {
            region,
            data_node: nodes[1],
            by: ProcedureId(7),
            deletions: vec![],
        }))
        .unwrap();
    assert!(!state.footprint(region).contains(&nodes[1]));
    mark(&mut state, nodes[1], DataNodeStatus::Running);
    assert_eq!(
        state.apply(&record(nodes[1])),
        Err(Rejection::DataNodeLeaving {
            region,
            data_node: nodes[1]
        })
    );
    // Another DataNode that stays takes it.
    assert_eq!(state.apply(&record(nodes[0])), Ok(Applied::Unchanged));
}

#[test]
fn an_abandoned_replica_leaves_the_footprint_on_record_never_as_deleted() {
    let (mut state, nodes) = cluster_with_db();
    let region = publish_one(&mut state, &nodes);
    let generation = state.creation_generation(region, nodes[2]).unwrap();
    let abandon = ConfigPlan::AbandonReplica(AbandonReplica {
        region,
        data_node: nodes[2],
        by: ProcedureId(7),
        deletions: vec![ProcedureId(5)],
    });
    assert_eq!(state.apply(&abandon), Ok(Applied::Done));
    assert!(!state.footprint(region).contains(&nodes[2]));
    assert_eq!(state.region_group(region).unwrap().replicas, nodes[..2]);
    let record = &state.abandoned_replicas[&region][&nodes[2]];
    assert_eq!(
        (record.generation, record.by, record.deletions.clone()),
        (generation, ProcedureId(7), vec![ProcedureId(5)])
    );
    // A re-run changes nothing.
    assert_eq!(state.apply(&abandon), Ok(Applied::Unchanged));
}

#[test]
fn abandoning_the_last_replica_is_refused_unless_the_database_is_being_deleted() {
    let (mut state, nodes) = cluster_with_db();
    let region = publish_one(&mut state, &nodes[..1]);
    let abandon = ConfigPlan::AbandonReplica(AbandonReplica {
        region,
        data_node: nodes[0],
        by: ProcedureId(7),
        deletions: vec![],
    });
    assert_eq!(
        state.apply(&abandon),
        Err(Rejection::LastReplica {
            region,
            data_node: nodes[0]
        })
    );
    state
        .apply(&ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: name("db"),
            deleting: true,
        }))
        .unwrap();
    assert_eq!(state.apply(&abandon), Ok(Applied::Done));
    assert!(state.footprint(region).is_empty());
    // Nothing may hold a replica any more: the group can be dropped.
    assert_eq!(
        state.apply(&ConfigPlan::DropRegionGroup(DropRegionGroup {
            database: name("db"),
            region,
        })),
        Ok(Applied::Done)
    );
}

#[test]
fn a_status_update_read_before_a_removal_never_overwrites_removing() {
    let mut state = ClusterState::default();
    let node = register(&mut state, 7001);
    // The heartbeat monitor read `Running`, then a removal marked the node `Removing`, then
    // the monitor's verdict from its stale read arrives.
    mark(&mut state, node, DataNodeStatus::Removing);
    let late = ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
        id: node,
        status: DataNodeStatus::Unknown,
        only_from: Some(DataNodeStatus::Running),
    });
    assert_eq!(state.apply(&late), Ok(Applied::Unchanged));
    assert_eq!(state.data_nodes[&node].status, DataNodeStatus::Removing);
    // From the status it really has, it applies; an entry without the condition (written
    // before it existed) applies as it always did.
    mark(&mut state, node, DataNodeStatus::Running);
    assert_eq!(state.apply(&late), Ok(Applied::Done));
    assert_eq!(state.data_nodes[&node].status, DataNodeStatus::Unknown);
}
