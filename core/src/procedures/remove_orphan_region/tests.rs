//! Per-step tests of [`RemoveOrphanRegionProcedure`]: one test per DataNode answer.

use super::*;
use crate::api::{ApiError, SubmitOutcome, TaskStatus};
use crate::model::{DataNodeId, Epoch, RegionId, RegionKind, RegionReplicaSet};
use crate::plan::{ConfigPlan, RecordReplicaFootprints};
use crate::procedure::Step;
use crate::procedures::testing::StepEnv;

const ID: u64 = 4;

fn planted() -> RegionId {
    RegionId::new(RegionKind::Data, 77)
}

fn push<T>(queue: &std::sync::Mutex<std::collections::VecDeque<T>>, value: T) {
    queue.lock().expect("script").push_back(value);
}

/// An orphan of region 77 on dn-1, checked and its task id persisted.
async fn deleting(
    answer: Result<TaskStatus, ApiError>,
) -> (StepEnv, RemoveOrphanRegionProcedure, Step) {
    let env = StepEnv::new(2).await;
    let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 4096);
    let ctx = env.ctx(ID);
    assert!(matches!(
        procedure.step(&ctx).await.expect("check"),
        Step::Continue
    ));
    assert!(matches!(
        procedure.step(&ctx).await.expect("persist"),
        Step::Continue
    ));
    assert!(procedure.data().task.is_some());
    push(&env.node(1).task_results, answer);
    let step = procedure.step(&ctx).await.expect("step");
    (env, procedure, step)
}

#[test]
fn the_deletion_fences_every_generation_handed_out_so_far() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        let region = env.group("db", 2, &[0, 1]).await;
        let last = env.state(|s| s.last_generation);
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 1);
        let ctx = env.ctx(ID);
        procedure.step(&ctx).await.expect("check");
        procedure.step(&ctx).await.expect("persist");
        assert!(last > 0 && procedure.data().generation == last, "{region}");
    });
}

#[test]
fn a_replica_back_in_the_footprint_is_left_alone() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        let region = env.group("db", 1, &[0]).await;
        env.apply(ConfigPlan::RecordReplicaFootprints(
            RecordReplicaFootprints {
                database: crate::model::DatabaseName::new("db").expect("name"),
                groups: vec![RegionReplicaSet::new(region, vec![DataNodeId(1)])],
            },
        ))
        .await;
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), region, 1);
        let step = procedure.step(&env.ctx(ID)).await.expect("check");
        assert!(matches!(step, Step::Done(_)));
        assert!(env.node(1).calls().is_empty());
    });
}

#[test]
fn not_exist_submits_a_deletion_under_the_persisted_id() {
    smol::block_on(async {
        let (env, procedure, step) = deleting(Ok(TaskStatus::NotExist)).await;
        assert!(matches!(step, Step::Await { .. }), "{step:?}");
        let submitted = env.node(1).submitted.lock().expect("log").clone();
        assert_eq!(submitted.len(), 1);
        assert_eq!(Some(submitted[0].task_id), procedure.data().task);
    });
}

#[test]
fn processing_is_followed_without_a_commit() {
    smol::block_on(async {
        let (_, procedure, step) = deleting(Ok(TaskStatus::Processing)).await;
        assert!(matches!(step, Step::Await { .. }));
        assert!(!procedure.data().deleted);
    });
}

#[test]
fn success_is_persisted_before_the_task_is_acked() {
    smol::block_on(async {
        let (env, mut procedure, step) = deleting(Ok(TaskStatus::Success)).await;
        assert!(matches!(step, Step::Continue));
        assert!(procedure.data().deleted);
        assert!(
            env.node(1)
                .calls()
                .iter()
                .all(|c| !c.starts_with("ack_task"))
        );
        let done = procedure.step(&env.ctx(ID)).await.expect("ack");
        assert!(matches!(done, Step::Done(_)));
        assert!(
            env.node(1)
                .calls()
                .iter()
                .any(|c| c.starts_with("ack_task"))
        );
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
        let env = StepEnv::new(2).await;
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 1);
        let ctx = env.ctx(ID);
        procedure.step(&ctx).await.expect("check");
        procedure.step(&ctx).await.expect("persist");
        push(
            &env.node(1).submits,
            Ok(SubmitOutcome::Rejected("reused".into())),
        );
        let aborted = procedure.step(&ctx).await;
        assert!(matches!(&aborted, Err(ProcedureError::Abort(m)) if m.contains("reused")));
    });
}

#[test]
fn stale_leader_stops_the_session() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        let mut procedure = RemoveOrphanRegionProcedure::new(DataNodeId(1), planted(), 1);
        let ctx = env.ctx(ID);
        procedure.step(&ctx).await.expect("check");
        procedure.step(&ctx).await.expect("persist");
        push(
            &env.node(1).task_results,
            Err(ApiError::StaleLeader {
                request: env.epoch,
                seen: Epoch(env.epoch.0 + 3),
            }),
        );
        let stopped = procedure.step(&ctx).await;
        assert!(matches!(stopped, Err(ProcedureError::StaleLeader { .. })));
    });
}

use std::time::Duration;
