//! One test per answer a DataNode can give a removal's steps.

use crate::api::{ApiError, MaintainTask, MaintainTaskKind, SubmitOutcome, TaskStatus};
use crate::model::{DataNodeId, Epoch, ProcedureId, RegionId};
use crate::procedure::{ProcedureError, ProcedureType, Step, encode_data};
use crate::procedures::env::task_id_for;
use crate::procedures::testing::{Call, StepEnv, db};

use super::{RemoveRegionGroupProcedure, RemoveRegionGroupState};

const ID: ProcedureId = ProcedureId(7);

/// A removal of the one published group (replicas on dn-0..2), past `DropQueuedCreates`.
async fn deleting() -> (StepEnv, RegionId, RemoveRegionGroupProcedure) {
    let env = StepEnv::new(3).await;
    let region = env.published(1, &[0, 1, 2]).await[0];
    let mut removal = RemoveRegionGroupProcedure::group(db(), region);
    let step = env.step(&mut removal, ID, Vec::new()).await;
    assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
    assert_eq!(removal.data.state, RemoveRegionGroupState::DeleteReplicas);
    (env, region, removal)
}

/// Like [`deleting`], checking that the first task id (for dn-0) was persisted with it: the
/// step that drops queued creates goes straight on to assign it.
async fn with_task() -> (StepEnv, RegionId, RemoveRegionGroupProcedure) {
    let (env, region, removal) = deleting().await;
    assert_eq!(removal.data.task_node, Some(DataNodeId(0)));
    (env, region, removal)
}

fn first_task() -> crate::model::TaskId {
    task_id_for(ID, 0).expect("fits")
}

#[test]
fn a_task_id_is_persisted_before_anything_is_sent() {
    smol::block_on(async {
        let (env, region, removal) = with_task().await;
        assert_eq!(removal.data.task, Some(first_task()));
        assert_eq!(removal.data.task_node, Some(DataNodeId(0)));
        let generation = env.state().creation_generation(region, DataNodeId(0));
        assert_eq!(Some(removal.data.task_generation), generation);
        assert!(
            env.nodes.calls().is_empty(),
            "nothing sent before the id is durable"
        );
    });
}

#[test]
fn the_persisted_id_is_submitted_with_its_generation_and_followed() {
    smol::block_on(async {
        let (env, region, mut removal) = with_task().await;
        let step = env.step(&mut removal, ID, Vec::new()).await;
        let Ok(Step::Await { until, .. }) = step else {
            panic!("{step:?}");
        };
        let expected = MaintainTask {
            task_id: first_task(),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region,
                generation: removal.data.task_generation,
            },
        };
        assert_eq!(env.nodes.calls_to(0), vec![Call::Submit(expected.clone())]);
        // The await long-polls the task; its answer is what the next step acts on.
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::Processing)]);
        env.run_await(until).await;
        assert_eq!(
            env.nodes.calls_to(0),
            vec![Call::Submit(expected.clone()), Call::Poll(first_task())]
        );
        assert_eq!(
            removal.data.task,
            Some(first_task()),
            "the same id, not a new one"
        );
    });
}

#[test]
fn not_exist_resubmits_the_same_id_with_its_generation() {
    smol::block_on(async {
        let (env, region, mut removal) = with_task().await;
        // The long-poll finds nothing: the DataNode evicted the unacked task (or lost the
        // submission): the same id is submitted again, never a new one.
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::NotExist)]);
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Await { .. })), "{step:?}");
        let expected = MaintainTask {
            task_id: first_task(),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region,
                generation: removal.data.task_generation,
            },
        };
        assert_eq!(
            env.nodes.calls_to(0),
            vec![
                Call::Submit(expected.clone()),
                Call::Poll(first_task()),
                Call::Submit(expected)
            ]
        );
        assert_eq!(removal.data.task, Some(first_task()));
    });
}

#[test]
fn a_rerun_after_a_restart_resubmits_and_learns_the_outcome_from_the_poll() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        let _ = env.step(&mut removal, ID, Vec::new()).await;
        // A new leader decodes the record: nothing was observed in this process, so the
        // task is submitted again (a duplicate runs nothing) and its poll says it finished.
        let mut rerun =
            RemoveRegionGroupProcedure::decode(&encode_data(&removal.data).expect("encodes"))
                .expect("decodes");
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::Success)]);
        let step = env.step_past_await(&mut rerun, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        assert!(rerun.data.deleted.contains(&DataNodeId(0)));
        let submits = env
            .nodes
            .calls_to(0)
            .into_iter()
            .filter(|call| matches!(call, Call::Submit(_)))
            .count();
        assert_eq!(
            submits, 2,
            "the same task submitted twice, by design idempotent"
        );
    });
}

#[test]
fn processing_is_awaited_without_changing_persistent_data() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::Processing)]);
        let before = encode_data(&removal.data).expect("encodes");
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Await { .. })), "{step:?}");
        assert_eq!(encode_data(&removal.data).expect("encodes"), before);
    });
}

#[test]
fn success_is_recorded_before_the_task_is_acked() {
    smol::block_on(async {
        let (env, region, mut removal) = with_task().await;
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::Success)]);
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        let state = env.state();
        assert!(!state.footprint(region).contains(&DataNodeId(0)));
        assert!(
            !state
                .region_group(region)
                .expect("group")
                .replicas
                .contains(&DataNodeId(0))
        );
        assert!(removal.data.deleted.contains(&DataNodeId(0)));
        assert!(
            !env.nodes.calls_to(0).contains(&Call::Ack(first_task())),
            "no ack before the step's progress is persisted"
        );
        // The same transition persists the ack still owed and the next DataNode's task id:
        // one commit per replica.
        assert_eq!(
            removal.data.ack,
            Some(super::PendingAck {
                node: DataNodeId(0),
                task: first_task()
            })
        );
        assert_eq!(removal.data.task_node, Some(DataNodeId(1)));
        assert_eq!(removal.data.task, Some(task_id_for(ID, 1).expect("fits")));
        assert!(
            env.nodes.calls_to(1).is_empty(),
            "nothing sent to the next DataNode before its id is durable"
        );
        // The next step (after that transition is committed) acks, then submits the next.
        let step = env.step(&mut removal, ID, Vec::new()).await;
        let Ok(Step::Await { until, .. }) = step else {
            panic!("{step:?}");
        };
        assert!(env.nodes.calls_to(0).contains(&Call::Ack(first_task())));
        assert!(matches!(
            env.nodes.calls_to(1).as_slice(),
            [Call::Submit(_)]
        ));
        // The step after the await does not ack again (the instance remembers it).
        env.nodes.answer_polls(1, vec![Ok(TaskStatus::Processing)]);
        env.run_await(until).await;
        let _ = env.step(&mut removal, ID, Vec::new()).await;
        let acks = env
            .nodes
            .calls()
            .into_iter()
            .filter(|(_, call)| matches!(call, Call::Ack(_)))
            .count();
        assert_eq!(acks, 1);
    });
}

#[test]
fn fail_backs_off_and_the_retry_gets_a_new_id_persisted_first() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes
            .answer_polls(0, vec![Ok(TaskStatus::Fail("disk full".into()))]);
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        match step {
            Ok(Step::Wait { waiting_for, .. }) => assert!(waiting_for.contains("disk full")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            removal.data.task, None,
            "a failed task is never resubmitted"
        );
        let calls = env.nodes.calls().len();
        let step = env.step(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        assert_eq!(removal.data.task, Some(task_id_for(ID, 1).expect("fits")));
        assert_eq!(
            env.nodes.calls().len(),
            calls,
            "persisted before it is sent"
        );
    });
}

#[test]
fn an_unreachable_datanode_keeps_the_step_waiting_visibly() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_submits(
            0,
            vec![Err(ApiError::Unreachable("connection refused".into()))],
        );
        match env.step(&mut removal, ID, Vec::new()).await {
            Ok(Step::Wait { waiting_for, .. }) => {
                assert!(waiting_for.contains("dn-0"), "{waiting_for}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            removal.data.task,
            Some(first_task()),
            "the same task is followed later"
        );
    });
}

#[test]
fn a_rejected_submission_aborts_with_the_datanodes_reason() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_submits(
            0,
            vec![Ok(SubmitOutcome::Rejected(
                "id used for another task".into(),
            ))],
        );
        match env.step(&mut removal, ID, Vec::new()).await {
            Err(ProcedureError::Abort(reason)) => {
                assert!(reason.contains("id used for another task"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn an_answer_no_retry_can_change_aborts_instead_of_waiting() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes
            .answer_submits(0, vec![Err(ApiError::Malformed("bad reply".into()))]);
        let step = env.step(&mut removal, ID, Vec::new()).await;
        assert!(
            matches!(&step, Err(ProcedureError::Abort(r)) if r.contains("bad reply")),
            "{step:?}"
        );
    });
}

#[test]
fn stale_leader_stops_the_session_and_asks_for_a_higher_epoch() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        let seen = Epoch(env.epoch.0 + 40);
        env.nodes.answer_submits(
            0,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen,
            })],
        );
        let step = env.step(&mut removal, ID, Vec::new()).await;
        match step {
            Err(e @ ProcedureError::StaleLeader { .. }) => assert!(e.is_stop()),
            other => panic!("{other:?}"),
        }
        assert_eq!(env.healer.pending(), Some((DataNodeId(0), env.epoch, seen)));
    });
}

#[test]
fn the_group_is_dropped_only_once_no_replica_may_remain() {
    smol::block_on(async {
        let (env, region, mut removal) = deleting().await;
        // Jump to DropMetadata with the whole footprint still there.
        removal.data.state = RemoveRegionGroupState::DropMetadata;
        let step = env.step(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        assert_eq!(removal.data.state, RemoveRegionGroupState::DeleteReplicas);
        assert!(env.state().region_group(region).is_some(), "not dropped");
    });
}

#[test]
fn a_record_written_before_the_footprint_resumes_its_task() {
    smol::block_on(async {
        // An old record: replicas [0, 1, 2] fixed up front, the one at `next` = 1 being
        // deleted under a persisted task id.
        let (env, region, _) = deleting().await;
        #[derive(serde::Serialize)]
        struct Old {
            state: RemoveRegionGroupState,
            database: crate::model::DatabaseName,
            region: RegionId,
            scope: super::RemovalScope,
            extra: Vec<DataNodeId>,
            replicas: Vec<DataNodeId>,
            next: usize,
            task: Option<crate::model::TaskId>,
            task_seq: u32,
            failures: u32,
        }
        let old = Old {
            state: RemoveRegionGroupState::DeleteReplicas,
            database: db(),
            region,
            scope: super::RemovalScope::Group,
            extra: Vec::new(),
            replicas: vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
            next: 1,
            task: Some(task_id_for(ID, 1).expect("fits")),
            task_seq: 2,
            failures: 0,
        };
        let mut removal = RemoveRegionGroupProcedure::decode(&encode_data(&old).expect("encodes"))
            .expect("an old record decodes");
        assert_eq!(removal.data.task_node, Some(DataNodeId(1)));
        assert!(removal.data.deleted.contains(&DataNodeId(0)));
        env.nodes.answer_polls(1, vec![Ok(TaskStatus::Processing)]);
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Await { .. })), "{step:?}");
        let calls = env.nodes.calls_to(1);
        assert!(
            calls.iter().all(|call| match call {
                Call::Submit(task) => task.task_id == task_id_for(ID, 1).expect("fits"),
                Call::Poll(task) => *task == task_id_for(ID, 1).expect("fits"),
                _ => false,
            }) && calls.contains(&Call::Poll(task_id_for(ID, 1).expect("fits"))),
            "the task in flight is followed under its id, not restarted: {calls:?}"
        );
    });
}

#[test]
fn a_lost_ack_is_harmless_but_a_stale_leader_ack_stops_the_session() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_polls(0, vec![Ok(TaskStatus::Success)]);
        let _ = env.step_past_await(&mut removal, ID, Vec::new()).await;
        env.nodes.answer_acks(
            0,
            vec![Err(ApiError::Timeout(std::time::Duration::from_secs(1)))],
        );
        // The lost ack does not hold the removal up: the next task is submitted.
        let step = env.step(&mut removal, ID, Vec::new()).await;
        let Ok(Step::Await { until, .. }) = step else {
            panic!("{step:?}");
        };
        assert_eq!(
            removal.data.task_node,
            Some(DataNodeId(1)),
            "moved on: the result expires on the DataNode"
        );

        // The next replica's ack meets a fence above this leader.
        env.nodes.answer_polls(1, vec![Ok(TaskStatus::Success)]);
        env.run_await(until).await;
        let step = env.step(&mut removal, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        env.nodes.answer_acks(
            1,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen: Epoch(env.epoch.0 + 1),
            })],
        );
        let step = env.step(&mut removal, ID, Vec::new()).await;
        assert!(
            matches!(step, Err(ProcedureError::StaleLeader { .. })),
            "{step:?}"
        );
    });
}

#[test]
fn a_failed_poll_decides_the_step_like_a_failed_call_never_a_resubmit_loop() {
    smol::block_on(async {
        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_polls(
            0,
            vec![Err(ApiError::Unreachable("connection reset".into()))],
        );
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(
            matches!(&step, Ok(Step::Wait { waiting_for, .. }) if waiting_for.contains("connection reset")),
            "{step:?}"
        );
        let submits = |env: &StepEnv| {
            env.nodes
                .calls_to(0)
                .iter()
                .filter(|call| matches!(call, Call::Submit(_)))
                .count()
        };
        assert_eq!(submits(&env), 1, "backs off before anything is sent again");

        let (env, _, mut removal) = with_task().await;
        env.nodes.answer_polls(
            0,
            vec![Err(ApiError::Refused("task ids are u32 here".into()))],
        );
        let step = env.step_past_await(&mut removal, ID, Vec::new()).await;
        assert!(
            matches!(&step, Err(ProcedureError::Abort(r)) if r.contains("task ids are u32 here")),
            "{step:?}"
        );
        assert_eq!(submits(&env), 1);
    });
}
