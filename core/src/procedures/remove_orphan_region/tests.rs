//! Per-step tests of [`RemoveOrphanRegionProcedure`]: one test per DataNode answer.

use std::time::Duration;

use super::*;
use crate::api::{ApiError, SubmitOutcome, TaskStatus};
use crate::model::{
    DataNodeId, DatabaseName, Epoch, ProcedureId, RegionId, RegionKind, RegionReplicaSet,
};
use crate::plan::{ConfigPlan, RecordReplicaFootprints};
use crate::procedure::Step;
use crate::procedures::testing::{Call, StepEnv};

const ID: ProcedureId = ProcedureId(4);

fn planted() -> RegionId {
    RegionId::new(RegionKind::Data, 77)
}

async fn step(
    env: &StepEnv,
    procedure: &mut RemoveOrphanRegionProcedure,
) -> Result<Step, ProcedureError> {
    env.step(procedure, ID, Vec::new()).await
}

/// An orphan of region 77 on dn-1, checked, its task id persisted.
async fn persisted() -> (StepEnv, RemoveOrphanRegionProcedure) {
    let env = StepEnv::new(2).await;
    let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 4096);
    assert!(matches!(
        step(&env, &mut procedure).await.expect("check"),
        Step::Continue
    ));
    assert!(matches!(
        step(&env, &mut procedure).await.expect("persist"),
        Step::Continue
    ));
    assert!(procedure.data().task.is_some());
    (env, procedure)
}

/// [`persisted`], then the step that submits the task: a DataNode status (`Ok`) is what
/// the long-poll of the submitted task answers, and the step after it is returned; an error
/// is the submission's answer.
async fn deleting(
    answer: Result<TaskStatus, ApiError>,
) -> (StepEnv, RemoveOrphanRegionProcedure, Step) {
    let (env, mut procedure) = persisted().await;
    let step = env
        .step_with_task_answer(&mut procedure, ID, 1, answer)
        .await;
    (env, procedure, step.expect("step"))
}

fn submits(env: &StepEnv, node: u32) -> Vec<crate::api::MaintainTask> {
    env.nodes
        .calls_to(node)
        .into_iter()
        .filter_map(|c| match c {
            Call::Submit(task) => Some(task),
            _ => None,
        })
        .collect()
}

#[test]
fn the_deletion_fences_every_generation_handed_out_so_far() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        env.group("db", 2, &[0, 1]).await;
        let last = env.state().last_generation;
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 1);
        step(&env, &mut procedure).await.expect("check");
        step(&env, &mut procedure).await.expect("persist");
        assert!(last > 0);
        assert_eq!(procedure.data().generation, last);
    });
}

#[test]
fn a_replica_back_in_the_footprint_is_left_alone() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        let region = env.group("db", 1, &[0]).await;
        env.commit(ConfigPlan::RecordReplicaFootprints(
            RecordReplicaFootprints {
                database: DatabaseName::new("db").expect("name"),
                groups: vec![RegionReplicaSet::new(region, vec![DataNodeId(1)])],
            },
        ))
        .await
        .expect("footprint");
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), region, 1);
        let done = step(&env, &mut procedure).await.expect("check");
        assert!(matches!(done, Step::Done(_)));
        assert!(env.nodes.calls_to(1).is_empty());
    });
}

#[test]
fn not_exist_submits_a_deletion_under_the_persisted_id() {
    smol::block_on(async {
        let (env, procedure, step) = deleting(Ok(TaskStatus::NotExist)).await;
        assert!(matches!(step, Step::Await { .. }), "{step:?}");
        // Submitted, then again once its poll found nothing: always the persisted id.
        let submitted = submits(&env, 1);
        assert_eq!(submitted.len(), 2);
        assert!(
            submitted
                .iter()
                .all(|task| Some(task.task_id) == procedure.data().task)
        );
    });
}

#[test]
fn processing_is_followed_without_a_commit() {
    smol::block_on(async {
        let (env, procedure, step) = deleting(Ok(TaskStatus::Processing)).await;
        assert!(matches!(step, Step::Await { .. }));
        assert!(!procedure.data().deleted);
        assert_eq!(submits(&env, 1).len(), 1, "followed, not submitted again");
    });
}

#[test]
fn success_is_persisted_before_the_task_is_acked() {
    smol::block_on(async {
        let (env, mut procedure, first) = deleting(Ok(TaskStatus::Success)).await;
        assert!(matches!(first, Step::Continue));
        assert!(procedure.data().deleted);
        let acked = |env: &StepEnv| {
            env.nodes
                .calls_to(1)
                .iter()
                .any(|c| matches!(c, Call::Ack(_)))
        };
        assert!(!acked(&env));
        let done = step(&env, &mut procedure).await.expect("ack");
        assert!(matches!(done, Step::Done(_)));
        assert!(acked(&env));
    });
}

#[test]
fn a_failed_deletion_waits_and_takes_a_new_id() {
    smol::block_on(async {
        let (_, procedure, step) = deleting(Ok(TaskStatus::Fail("busy".into()))).await;
        assert!(matches!(&step, Step::Wait { waiting_for, .. } if waiting_for.contains("busy")));
        assert_eq!(
            (procedure.data().task, procedure.data().failures),
            (None, 1)
        );
    });
}

#[test]
fn an_unreachable_datanode_keeps_the_step_waiting_visibly() {
    smol::block_on(async {
        let (_, procedure, step) = deleting(Err(ApiError::Timeout(Duration::from_secs(1)))).await;
        assert!(matches!(&step, Step::Wait { waiting_for, .. } if waiting_for.contains("dn-1")));
        assert!(procedure.data().task.is_some());
    });
}

#[test]
fn a_rejected_task_aborts_with_the_reason() {
    smol::block_on(async {
        let (env, mut procedure) = persisted().await;
        env.nodes
            .answer_submits(1, vec![Ok(SubmitOutcome::Rejected("reused".into()))]);
        let aborted = step(&env, &mut procedure).await;
        assert!(matches!(&aborted, Err(ProcedureError::Abort(m)) if m.contains("reused")));
    });
}

#[test]
fn stale_leader_stops_the_session() {
    smol::block_on(async {
        let (env, mut procedure) = persisted().await;
        env.nodes.answer_submits(
            1,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen: Epoch(env.epoch.0 + 3),
            })],
        );
        let stopped = step(&env, &mut procedure).await;
        assert!(matches!(stopped, Err(ProcedureError::StaleLeader { .. })));
    });
}
