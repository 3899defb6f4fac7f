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
