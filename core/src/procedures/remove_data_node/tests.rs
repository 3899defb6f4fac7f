//! Per-step tests of [`RemoveDataNodeProcedure`].

use super::*;
use crate::model::{DataNodeId, ProcedureId};
use crate::procedure::{ChildOutcome, Step};
use crate::procedures::testing::StepEnv;
use crate::state::{DataNodeStatus, ProcedureStatus};

const ID: ProcedureId = ProcedureId(3);

fn status(env: &StepEnv, node: u32) -> Option<DataNodeStatus> {
    env.state()
        .data_nodes
        .get(&DataNodeId(node))
        .map(|n| n.status)
}

async fn step(
    env: &StepEnv,
    procedure: &mut RemoveDataNodeProcedure,
    children: Vec<ChildOutcome>,
) -> Result<Step, ProcedureError> {
    env.step(procedure, ID, children).await
}

fn child(status: ProcedureStatus, error: Option<&str>) -> ChildOutcome {
    ChildOutcome {
        id: ProcedureId(4),
        type_code: crate::procedures::MIGRATE_REGION,
        status,
        output: None,
        error: error.map(String::from),
    }
}

#[test]
fn a_planned_removal_marks_the_node_then_moves_each_replica_to_placement_targets() {
    smol::block_on(async {
        let env = StepEnv::new(5).await;
        for _ in 0..3 {
            env.group("db", 3, &[0, 1, 2]).await;
        }
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(1), false);
        step(&env, &mut procedure, vec![]).await.expect("mark");
        assert_eq!(status(&env, 1), Some(DataNodeStatus::Removing));
        let Step::SpawnChildren(children) =
            step(&env, &mut procedure, vec![]).await.expect("round")
        else {
            panic!("no migrations spawned");
        };
        assert_eq!(children.len(), 3);
        assert!(children.iter().all(|c| c.type_name() == "MigrateRegion"));
        assert_eq!(procedure.data().moved, 3);
    });
}

#[test]
fn a_removal_with_nowhere_to_move_is_refused_before_anything_changes() {
    smol::block_on(async {
        let env = StepEnv::new(3).await;
        env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(1), false);
        let refused = step(&env, &mut procedure, vec![]).await;
        assert!(
            matches!(&refused, Err(ProcedureError::Abort(m)) if m.contains("no running DataNode")),
            "{refused:?}"
        );
        assert_eq!(status(&env, 1), Some(DataNodeStatus::Running));
    });
}

#[test]
fn a_forced_removal_abandons_then_repairs_each_group_below_its_rf() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(2), true);
        step(&env, &mut procedure, vec![]).await.expect("mark");
        step(&env, &mut procedure, vec![]).await.expect("abandon");
        assert!(env.state().is_abandoned(region, DataNodeId(2)));
        assert_eq!(procedure.data().abandoned, vec![region]);
        let Step::SpawnChildren(children) =
            step(&env, &mut procedure, vec![]).await.expect("round")
        else {
            panic!("no repair spawned");
        };
        assert_eq!(children.len(), 1);
        assert_eq!(procedure.data().repaired, 1);
        // The repair published a replica on dn-3; nothing is left, the node is unregistered.
        env.commit(crate::plan::ConfigPlan::AddRegionLocation(
            crate::plan::AddRegionLocation {
                region,
                data_node: DataNodeId(3),
            },
        ))
        .await
        .expect("published");
        let done = vec![child(ProcedureStatus::Succeeded, None)];
        step(&env, &mut procedure, done.clone())
            .await
            .expect("nothing left");
        assert_eq!(procedure.data().state, RemoveDataNodeState::Unregister);
        let finished = step(&env, &mut procedure, done).await.expect("unregister");
        assert!(matches!(finished, Step::Done(_)));
        assert_eq!(status(&env, 2), None);
    });
}

#[test]
fn a_forced_removal_of_a_last_replica_is_refused_unless_its_database_is_being_deleted() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        env.group("db", 1, &[1]).await;
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(1), true);
        let refused = step(&env, &mut procedure, vec![]).await;
        assert!(
            matches!(&refused, Err(ProcedureError::Abort(m)) if m.contains("last replica")),
            "{refused:?}"
        );
    });
}

#[test]
fn a_failed_child_fails_the_removal_with_its_reason() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(1), false);
        step(&env, &mut procedure, vec![]).await.expect("mark");
        step(&env, &mut procedure, vec![]).await.expect("round");
        let failed = vec![child(ProcedureStatus::Failed, Some("copy failed"))];
        let aborted = step(&env, &mut procedure, failed).await;
        assert!(matches!(&aborted, Err(ProcedureError::Abort(m)) if m.contains("copy failed")));
    });
}

/// Simulator (seed 26 of the first migration workload): a migration to dn-3 had recorded
/// dn-3 in the footprint but not published it when dn-3's planned removal planned its round;
/// the replica looked held without serving, so a replicas-scope removal was spawned. It ran
/// after the migration published dn-3 and deleted a serving replica: the group fell below its
/// RF. A replica whose group another procedure holds is planned only once that one finished.
#[test]
fn a_replica_a_migration_is_still_moving_onto_the_node_is_not_deleted_from_under_it() {
    smol::block_on(async {
        let env = StepEnv::new(5).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        // The migration of dn-0's replica to dn-3, past CreateTarget: dn-3 is in the
        // footprint, not in the group, and the migration holds the group.
        let migration = MigrateRegionProcedure::new(
            crate::procedures::testing::db(),
            region,
            DataNodeId(0),
            Some(DataNodeId(3)),
        );
        let state = migration.state();
        env.commit(ConfigPlan::SubmitProcedure(crate::plan::SubmitProcedure {
            procedure: crate::state::NewProcedure {
                type_code: migration.type_code(),
                type_name: migration.type_name().to_string(),
                state_code: state.code,
                state_name: state.name.to_string(),
                data: migration.encode().expect("encode"),
                lock_keys: migration.lock_keys(),
                submitted_at_ms: 0,
                submitted_unix_ms: 0,
            },
            request_key: None,
        }))
        .await
        .expect("submitted");
        env.commit(ConfigPlan::RecordReplicaFootprints(
            crate::plan::RecordReplicaFootprints {
                database: crate::procedures::testing::db(),
                groups: vec![crate::model::RegionReplicaSet::new(
                    region,
                    vec![DataNodeId(3)],
                )],
            },
        ))
        .await
        .expect("recorded");
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(3), false);
        step(&env, &mut procedure, vec![]).await.expect("mark");
        let round = step(&env, &mut procedure, vec![]).await.expect("round");
        assert!(
            matches!(&round, Step::Wait { waiting_for, .. } if waiting_for.contains("to finish")),
            "{round:?}"
        );
        assert_eq!(procedure.data().removed, 0);
        assert_eq!(procedure.data().state, RemoveDataNodeState::MoveReplicas);
    });
}

/// Simulator (seed 51 of the first migration workload): a forced removal abandoned dn-2's
/// replicas, then failed (its repair found no running DataNode while another was down). The
/// removal run again had nothing left to abandon, so it knew of no group to repair and
/// unregistered the node, leaving the group below its RF for good.
#[test]
fn a_forced_removal_run_again_repairs_what_an_earlier_one_abandoned() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        let mut first = RemoveDataNodeProcedure::new(DataNodeId(2), true);
        step(&env, &mut first, vec![]).await.expect("mark");
        step(&env, &mut first, vec![]).await.expect("abandon");
        assert!(env.state().is_abandoned(region, DataNodeId(2)));
        // The first removal failed here; the operator removes the node again.
        let mut again = RemoveDataNodeProcedure::new(DataNodeId(2), true);
        step(&env, &mut again, vec![]).await.expect("mark");
        while again.data().state != RemoveDataNodeState::MoveReplicas {
            step(&env, &mut again, vec![]).await.expect("abandon");
        }
        let round = step(&env, &mut again, vec![]).await.expect("round");
        let Step::SpawnChildren(children) = round else {
            panic!("no repair spawned: {round:?}");
        };
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].type_name(), "MigrateRegion");
        assert_eq!(again.data().repaired, 1);
    });
}

/// Simulator (seed 144 of the first migration workload): a creation published a group on
/// dn-1 and dn-3 and queued the create of its third replica on dn-0, which was being removed.
/// The removal saw a replica held without serving, deleted it with the queued create, and the
/// group stayed at 2 of its 3 replicas. It now waits for the queued create, then moves the
/// replica like any other.
#[test]
fn a_replica_a_queued_create_still_owes_the_group_is_not_deleted() {
    smol::block_on(async {
        let env = StepEnv::new(5).await;
        let region = env.group("db", 3, &[1, 3]).await;
        let group = crate::model::RegionReplicaSet::new(
            region,
            vec![DataNodeId(0), DataNodeId(1), DataNodeId(3)],
        );
        env.commit(ConfigPlan::RecordReplicaFootprints(
            crate::plan::RecordReplicaFootprints {
                database: crate::procedures::testing::db(),
                groups: vec![group.clone()],
            },
        ))
        .await
        .expect("recorded");
        let target = env.state().data_nodes[&DataNodeId(0)].location.clone();
        env.commit(ConfigPlan::OfferRegionMaintainTasks(
            crate::plan::OfferRegionMaintainTasks {
                tasks: vec![crate::plan::NewRegionMaintainTask {
                    kind: crate::state::RegionMaintainKind::Create,
                    database: crate::procedures::testing::db(),
                    region: group,
                    target,
                }],
            },
        ))
        .await
        .expect("queued");
        let mut procedure = RemoveDataNodeProcedure::new(DataNodeId(0), false);
        step(&env, &mut procedure, vec![]).await.expect("mark");
        let round = step(&env, &mut procedure, vec![]).await.expect("round");
        assert!(matches!(round, Step::Wait { .. }), "{round:?}");
        assert_eq!(procedure.data().removed, 0);
        assert_eq!(
            env.state().create_queue.len(),
            1,
            "the queued create was dropped"
        );
    });
}
