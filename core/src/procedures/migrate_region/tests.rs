//! Per-step tests of [`MigrateRegionProcedure`]: each step against fake DataNodes on a
//! manual clock, one test per answer a step can get.

use super::*;
use crate::api::{ApiError, RegionDigest, SubmitOutcome, TaskStatus};
use crate::model::{DataNodeId, DatabaseName, Epoch, ProcedureId, RegionId};
use crate::procedure::{ChildOutcome, Step};
use crate::procedures::testing::{Call, StepEnv};
use crate::state::ProcedureStatus;

const ID: ProcedureId = ProcedureId(9);

fn db() -> DatabaseName {
    DatabaseName::new("db").expect("name")
}

/// One step of `procedure` with no children.
async fn step(
    env: &StepEnv,
    procedure: &mut MigrateRegionProcedure,
) -> Result<Step, ProcedureError> {
    env.step(procedure, ID, Vec::new()).await
}

/// The tasks submitted to `node`, in order.
fn submitted(env: &StepEnv, node: u32) -> Vec<crate::api::MaintainTask> {
    env.nodes
        .calls_to(node)
        .into_iter()
        .filter_map(|c| match c {
            Call::Submit(task) => Some(task),
            _ => None,
        })
        .collect()
}

/// 4 DataNodes; one data group on dn-0, dn-1, dn-2 (RF 3); a move of dn-0's replica to
/// dn-3, stepped up to (not including) `until`.
async fn setup(until: MigrateRegionState) -> (StepEnv, RegionId, MigrateRegionProcedure) {
    let env = StepEnv::new(4).await;
    let region = env.group("db", 3, &[0, 1, 2]).await;
    let mut procedure =
        MigrateRegionProcedure::new(db(), region, DataNodeId(0), Some(DataNodeId(3)));
    while procedure.data().state != until {
        let mut past_await = false;
        match procedure.data().state {
            MigrateRegionState::CopyData if procedure.data().task.is_some() => {
                // The copy is submitted, and its long-poll answers it finished.
                env.nodes.answer_polls(3, vec![Ok(TaskStatus::Success)]);
                past_await = true;
            }
            MigrateRegionState::Verify => {
                env.nodes.answer_digests(3, vec![Ok(digest(100, 7))]);
                env.nodes.answer_digests(0, vec![Ok(digest(100, 7))]);
            }
            _ => {}
        }
        let step = if past_await {
            env.step_past_await(&mut procedure, ID, Vec::new()).await
        } else {
            step(&env, &mut procedure).await
        }
        .expect("step");
        assert!(matches!(step, Step::Continue), "{step:?}");
    }
    (env, region, procedure)
}

fn digest(len: u64, crc32c: u32) -> RegionDigest {
    RegionDigest {
        len,
        crc32c,
        region_len: len,
    }
}

#[test]
fn prepare_keeps_the_named_target_and_copies_from_the_live_source() {
    smol::block_on(async {
        let (_, _, procedure) = setup(MigrateRegionState::CreateTarget).await;
        assert_eq!(procedure.data().target, Some(DataNodeId(3)));
        assert_eq!(procedure.data().copy_from, Some(DataNodeId(0)));
    });
}

#[test]
fn prepare_without_a_target_lets_placement_pick_a_running_node_outside_the_group() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure = MigrateRegionProcedure::new(db(), region, DataNodeId(1), None);
        step(&env, &mut procedure).await.expect("step");
        assert_eq!(procedure.data().target, Some(DataNodeId(3)));
    });
}

#[test]
fn prepare_with_nothing_to_move_finishes_as_skipped() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure =
            MigrateRegionProcedure::new(db(), region, DataNodeId(3), Some(DataNodeId(3)));
        step(&env, &mut procedure).await.expect("prepare");
        assert_eq!(procedure.data().state, MigrateRegionState::Finish);
        let Step::Done(output) = step(&env, &mut procedure).await.expect("finish") else {
            panic!("not done");
        };
        let output: MigrateRegionOutput = decode_data(&output).expect("output");
        assert!(
            output.skipped.is_some() && output.to.is_none(),
            "{output:?}"
        );
    });
}

#[test]
fn prepare_refuses_a_target_that_already_may_hold_a_replica() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1, 2]).await;
        let mut procedure =
            MigrateRegionProcedure::new(db(), region, DataNodeId(0), Some(DataNodeId(1)));
        step(&env, &mut procedure).await.expect("prepare");
        assert_eq!(procedure.data().state, MigrateRegionState::Finish);
        let failed = step(&env, &mut procedure).await;
        assert!(
            matches!(&failed, Err(ProcedureError::Abort(m)) if m.contains("already holds")),
            "{failed:?}"
        );
        assert!(env.nodes.calls_to(1).is_empty(), "nothing was sent");
    });
}

#[test]
fn the_target_joins_the_footprint_before_its_create_leaves() {
    smol::block_on(async {
        let (env, region, mut procedure) = setup(MigrateRegionState::CreateTarget).await;
        env.nodes
            .answer_creates(3, vec![Err(ApiError::Unreachable("refused".into()))]);
        let step = step(&env, &mut procedure).await.expect("step");
        // The create never made it, yet the footprint names the target: a create whose
        // reply is lost still made a replica.
        let generation = env.state().creation_generation(region, DataNodeId(3));
        assert!(generation.is_some());
        assert_eq!(
            env.nodes.calls_to(3),
            vec![Call::Create(region, generation.unwrap_or(0))]
        );
        assert!(
            matches!(&step, Step::Wait { waiting_for, .. } if waiting_for.contains("dn-3")),
            "{step:?}"
        );
        assert_eq!(procedure.data().state, MigrateRegionState::CreateTarget);
    });
}

#[test]
fn a_refused_create_undoes_the_migration() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CreateTarget).await;
        env.nodes
            .answer_creates(3, vec![Err(ApiError::Refused("conflict".into()))]);
        step(&env, &mut procedure).await.expect("step");
        assert_eq!(procedure.data().state, MigrateRegionState::Undo);
        assert!(
            procedure
                .data()
                .failure
                .as_deref()
                .is_some_and(|f| f.contains("conflict"))
        );
    });
}

#[test]
fn a_create_answered_stale_leader_stops_the_session() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CreateTarget).await;
        env.nodes.answer_creates(
            3,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen: Epoch(env.epoch.0 + 5),
            })],
        );
        let stopped = step(&env, &mut procedure).await;
        assert!(
            matches!(stopped, Err(ProcedureError::StaleLeader { .. })),
            "{stopped:?}"
        );
    });
}

#[test]
fn the_copy_task_id_is_persisted_before_anything_is_submitted() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CopyData).await;
        let step = step(&env, &mut procedure).await.expect("step");
        assert!(matches!(step, Step::Continue));
        assert!(procedure.data().task.is_some());
        assert_eq!(
            procedure.data().task_source.as_ref().map(|l| l.id),
            Some(DataNodeId(0))
        );
        assert!(submitted(&env, 3).is_empty());
    });
}

/// Steps from a persisted copy task id: a status (`Ok`) is what the long-poll of the
/// submitted copy answers, and the step after it is returned; an error is the submission's
/// answer.
async fn copy_step(
    answer: Result<TaskStatus, ApiError>,
) -> (StepEnv, MigrateRegionProcedure, Step) {
    let (env, _, mut procedure) = setup(MigrateRegionState::CopyData).await;
    step(&env, &mut procedure).await.expect("persist the id");
    let step = env
        .step_with_task_answer(&mut procedure, ID, 3, answer)
        .await;
    (env, procedure, step.expect("step"))
}

#[test]
fn a_copy_task_the_target_does_not_know_is_submitted_under_the_persisted_id() {
    smol::block_on(async {
        let (env, procedure, step) = copy_step(Ok(TaskStatus::NotExist)).await;
        assert!(matches!(step, Step::Await { .. }), "{step:?}");
        // Submitted, and again once its poll found nothing: always the persisted id.
        let submitted = submitted(&env, 3);
        assert_eq!(submitted.len(), 2);
        assert!(
            submitted
                .iter()
                .all(|task| Some(task.task_id) == procedure.data().task)
        );
        assert!(matches!(
            &submitted[0].kind,
            crate::api::MaintainTaskKind::CopyRegion { source, .. } if source.id == DataNodeId(0)
        ));
    });
}

#[test]
fn a_running_copy_is_followed_without_a_commit() {
    smol::block_on(async {
        let (env, procedure, step) = copy_step(Ok(TaskStatus::Processing)).await;
        assert!(matches!(step, Step::Await { .. }), "{step:?}");
        assert_eq!(procedure.data().state, MigrateRegionState::CopyData);
        assert_eq!(submitted(&env, 3).len(), 1, "followed, not submitted again");
    });
}

#[test]
fn a_finished_copy_moves_to_verify_and_is_acked_only_after_that_is_persisted() {
    smol::block_on(async {
        let (env, procedure, step) = copy_step(Ok(TaskStatus::Success)).await;
        assert!(matches!(step, Step::Continue));
        assert_eq!(procedure.data().state, MigrateRegionState::Verify);
        assert!(procedure.data().ack.is_some());
        assert!(
            env.nodes
                .calls_to(3)
                .iter()
                .all(|c| !matches!(c, Call::Ack(_)))
        );
    });
}

#[test]
fn a_failed_copy_waits_and_takes_a_new_id() {
    smol::block_on(async {
        let (_, procedure, step) = copy_step(Ok(TaskStatus::Fail("disk".into()))).await;
        assert!(matches!(&step, Step::Wait { waiting_for, .. } if waiting_for.contains("disk")));
        assert_eq!(procedure.data().task, None);
        assert_eq!(procedure.data().failures, 1);
        assert_eq!(procedure.data().state, MigrateRegionState::CopyData);
    });
}

#[test]
fn too_many_failed_copies_undo_the_migration() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CopyData).await;
        for _ in 0..MAX_COPY_FAILURES {
            step(&env, &mut procedure).await.expect("persist the id");
            env.nodes
                .answer_polls(3, vec![Ok(TaskStatus::Fail("disk".into()))]);
            env.step_past_await(&mut procedure, ID, Vec::new())
                .await
                .expect("step");
        }
        assert_eq!(procedure.data().state, MigrateRegionState::Undo);
        let Step::SpawnChildren(children) = step(&env, &mut procedure).await.expect("undo") else {
            panic!("the target replica is not deleted");
        };
        assert_eq!(children.len(), 1);
    });
}

#[test]
fn an_unreachable_target_keeps_the_copy_waiting_visibly() {
    smol::block_on(async {
        let (_, procedure, step) = copy_step(Err(ApiError::Unreachable("down".into()))).await;
        assert!(
            matches!(&step, Step::Wait { waiting_for, .. } if waiting_for.contains("dn-3")),
            "{step:?}"
        );
        assert!(
            procedure.data().task.is_some(),
            "the same id is polled again"
        );
    });
}

#[test]
fn a_copy_answered_stale_leader_stops_the_session() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CopyData).await;
        step(&env, &mut procedure).await.expect("persist the id");
        env.nodes.answer_submits(
            3,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen: Epoch(env.epoch.0 + 1),
            })],
        );
        let stopped = step(&env, &mut procedure).await;
        assert!(matches!(stopped, Err(ProcedureError::StaleLeader { .. })));
    });
}

#[test]
fn a_rejected_copy_task_undoes_the_migration() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::CopyData).await;
        step(&env, &mut procedure).await.expect("persist the id");
        env.nodes
            .answer_submits(3, vec![Ok(SubmitOutcome::Rejected("id reused".into()))]);
        step(&env, &mut procedure).await.expect("step");
        assert_eq!(procedure.data().state, MigrateRegionState::Undo);
    });
}

#[test]
fn verify_acks_the_copy_then_publishes_equal_digests() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::Verify).await;
        env.nodes.answer_digests(3, vec![Ok(digest(4096, 0xabc))]);
        env.nodes.answer_digests(0, vec![Ok(digest(4096, 0xabc))]);
        step(&env, &mut procedure).await.expect("step");
        assert_eq!(procedure.data().state, MigrateRegionState::Publish);
        assert_eq!(procedure.data().copied, Some(digest(4096, 0xabc)));
        assert_eq!(procedure.data().ack, None);
        let calls = env.nodes.calls_to(3);
        let ack = calls.iter().position(|c| matches!(c, Call::Ack(_)));
        let digest_call = calls.iter().position(|c| matches!(c, Call::Digest(..)));
        assert!(ack.is_some() && ack < digest_call, "{calls:?}");
        assert_eq!(
            env.nodes.calls_to(0),
            vec![Call::Digest(procedure.data().region, Some(4096))]
        );
    });
}

#[test]
fn verify_sends_a_mismatch_back_to_copying_under_a_new_id() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::Verify).await;
        env.nodes.answer_digests(3, vec![Ok(digest(4096, 1))]);
        env.nodes.answer_digests(0, vec![Ok(digest(4096, 2))]);
        let step = step(&env, &mut procedure).await.expect("step");
        assert!(matches!(step, Step::Wait { .. }));
        assert_eq!(procedure.data().state, MigrateRegionState::CopyData);
        assert_eq!(
            (procedure.data().task, procedure.data().failures),
            (None, 1)
        );
    });
}

#[test]
fn verify_copies_on_when_the_source_grew() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::Verify).await;
        env.nodes.answer_digests(3, vec![Ok(digest(4096, 1))]);
        env.nodes.answer_digests(
            0,
            vec![Ok(RegionDigest {
                len: 4096,
                crc32c: 1,
                region_len: 8192,
            })],
        );
        step(&env, &mut procedure).await.expect("step");
        assert_eq!(procedure.data().state, MigrateRegionState::CopyData);
        assert_eq!(procedure.data().failures, 0);
    });
}

#[test]
fn publish_adds_the_target_so_the_group_is_never_below_its_rf() {
    smol::block_on(async {
        let (env, region, mut procedure) = setup(MigrateRegionState::Publish).await;
        step(&env, &mut procedure).await.expect("step");
        let replicas = env.state().region_group(region).map(|g| g.replicas.clone());
        assert_eq!(
            replicas,
            Some(vec![
                DataNodeId(0),
                DataNodeId(1),
                DataNodeId(2),
                DataNodeId(3)
            ])
        );
        assert_eq!(procedure.data().state, MigrateRegionState::RemoveSource);
        let Step::SpawnChildren(children) = step(&env, &mut procedure).await.expect("step") else {
            panic!("the source is not removed by a child");
        };
        assert_eq!(children.len(), 1);
        assert_eq!(children[0].type_name(), "RemoveRegionGroup");
    });
}

#[test]
fn finish_reports_the_verified_copy_or_a_failed_source_removal() {
    smol::block_on(async {
        let (env, _, mut procedure) = setup(MigrateRegionState::Publish).await;
        step(&env, &mut procedure).await.expect("publish");
        step(&env, &mut procedure).await.expect("spawn");
        let failed_child = ChildOutcome {
            id: crate::model::ProcedureId(10),
            type_code: crate::procedures::REMOVE_REGION_GROUP,
            status: ProcedureStatus::Failed,
            output: None,
            error: Some("dn-0 refused".into()),
        };
        let failed = env
            .step(&mut procedure.clone(), ID, vec![failed_child.clone()])
            .await;
        assert!(matches!(&failed, Err(ProcedureError::Abort(m)) if m.contains("refused")));
        let ok_child = ChildOutcome {
            status: ProcedureStatus::Succeeded,
            error: None,
            ..failed_child
        };
        let Step::Done(output) = env
            .step(&mut procedure, ID, vec![ok_child])
            .await
            .expect("done")
        else {
            panic!("not done");
        };
        let output: MigrateRegionOutput = decode_data(&output).expect("output");
        assert_eq!(
            (output.to, output.bytes, output.crc32c),
            (Some(DataNodeId(3)), 100, 7)
        );
    });
}

/// Simulator (seeds 7, 9, 21 of the first migration workload): a deletion of the database
/// (submitted first, holding the database) spawned a removal of the group after a migration
/// of it was submitted; the migration waited for the database, the removal for the group.
#[test]
fn a_migration_never_waits_behind_a_deletion_whose_child_waits_for_the_group() {
    use crate::procedure::{LockTable, normalize_lock_keys};
    use crate::procedures::{DeleteDatabaseProcedure, RemoveRegionGroupProcedure};
    let region = RegionId::new(crate::model::RegionKind::Data, 4);
    let deletion = ProcedureId(1);
    let migration = ProcedureId(2);
    let removal = ProcedureId(3);
    let mut locks = LockTable::new();
    let keys = |p: &dyn crate::procedure::Procedure| normalize_lock_keys(p.lock_keys());
    assert!(locks.enqueue(
        deletion,
        keys(&DeleteDatabaseProcedure::new(db())),
        Default::default()
    ));
    let migrating = locks.enqueue(
        migration,
        keys(&MigrateRegionProcedure::new(
            db(),
            region,
            DataNodeId(0),
            None,
        )),
        Default::default(),
    );
    assert!(
        migrating,
        "the migration waits behind the deletion: {:?}",
        locks.blocker(migration)
    );
    // The deletion's child waits for the migration, which can finish.
    assert!(!locks.enqueue(
        removal,
        keys(&RemoveRegionGroupProcedure::group(db(), region)),
        [deletion].into_iter().collect()
    ));
    assert_eq!(locks.release(migration), vec![removal]);
}

/// Simulator (seeds 191, 247, 355 of the first migration workload): the copy source was
/// lost for good during Verify; the migration asked it for a digest forever while the forced
/// removal of its DataNode waited for the group.
#[test]
fn verify_copies_on_from_another_replica_when_the_source_was_removed_for_good() {
    smol::block_on(async {
        let (env, region, mut procedure) = setup(MigrateRegionState::Verify).await;
        assert_eq!(procedure.data().copy_from, Some(DataNodeId(0)));
        env.commit(crate::plan::ConfigPlan::AbandonReplica(
            crate::plan::AbandonReplica {
                region,
                data_node: DataNodeId(0),
                by: ProcedureId(99),
                deletions: Vec::new(),
            },
        ))
        .await
        .expect("abandoned");
        let before = env.nodes.calls_to(0).len();
        let next = step(&env, &mut procedure).await.expect("step");
        assert!(matches!(next, Step::Continue), "{next:?}");
        assert_eq!(procedure.data().state, MigrateRegionState::CopyData);
        assert_eq!(env.nodes.calls_to(0).len(), before, "asked the lost source");
        // The next copy reads from a surviving replica.
        step(&env, &mut procedure).await.expect("new copy task");
        assert!(matches!(
            procedure.data().copy_from,
            Some(DataNodeId(1 | 2))
        ));
    });
}

/// Simulator (seeds 743, 1190 of the migration workload): a creation's publish committed
/// although its proposer saw the commit fail; while the creation retried, a migration moved
/// the replica off dn-4, then the creation queued the create it had planned on dn-4 and the
/// group ended with a replica too many. A migration waits for its group's creation to end.
#[test]
fn prepare_waits_while_the_creation_of_the_group_is_unfinished() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let creation = MigrateRegionProcedure::new(
            db(),
            RegionId::new(RegionKind::Data, 0),
            DataNodeId(0),
            None,
        );
        let submitted = env
            .commit(crate::plan::ConfigPlan::SubmitProcedure(
                crate::plan::SubmitProcedure {
                    procedure: crate::state::NewProcedure {
                        type_code: crate::procedures::CREATE_REGION_GROUPS,
                        type_name: "CreateRegionGroups".into(),
                        state_code: 1,
                        state_name: "Prepare".into(),
                        data: creation.encode().expect("encode"),
                        lock_keys: Vec::new(),
                        submitted_at_ms: 0,
                        submitted_unix_ms: 0,
                    },
                    request_key: None,
                },
            ))
            .await;
        let Ok(crate::state::Applied::ProcedureSubmitted { id: owner, .. }) = submitted else {
            panic!("not submitted: {submitted:?}");
        };
        // The group exists (env.group reserves ids without an owner); its creation owns the
        // id of a second group, published the same way.
        env.group("db", 3, &[0, 1, 2]).await;
        let reserved = env
            .commit(crate::plan::ConfigPlan::ReserveRegionIds(
                crate::plan::ReserveRegionIds {
                    kind: RegionKind::Data,
                    count: 1,
                    for_procedure: Some(owner),
                },
            ))
            .await;
        let Ok(crate::state::Applied::RegionIdsReserved { first, .. }) = reserved else {
            panic!("no id reserved: {reserved:?}");
        };
        let region = RegionId::new(RegionKind::Data, first);
        env.commit(crate::plan::ConfigPlan::CreateRegionGroups(
            crate::plan::CreateRegionGroups {
                database: db(),
                groups: vec![crate::model::RegionReplicaSet::new(
                    region,
                    vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
                )],
            },
        ))
        .await
        .expect("published");
        let mut procedure = MigrateRegionProcedure::new(db(), region, DataNodeId(0), None);
        let next = step(&env, &mut procedure).await.expect("prepare");
        assert!(
            matches!(&next, Step::Wait { waiting_for, .. } if waiting_for.contains("creation")),
            "{next:?}"
        );
        assert_eq!(procedure.data().state, MigrateRegionState::Prepare);
        assert_eq!(procedure.data().target, None);
    });
}

/// Simulator (seed 743 of the migration workload): a group published on two DataNodes with
/// the create of its third replica queued lost one of the two for good; the forced removal's
/// repairs counted only published replicas and added two, then the queued create landed: four
/// replicas at RF 3. A repair counts the replicas queued creates still owe the group.
#[test]
fn a_repair_counts_the_replica_a_queued_create_still_owes() {
    smol::block_on(async {
        let env = StepEnv::new(4).await;
        let region = env.group("db", 3, &[0, 1]).await;
        let group = crate::model::RegionReplicaSet::new(
            region,
            vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
        );
        let target = env.state().data_nodes[&DataNodeId(2)].location.clone();
        env.commit(crate::plan::ConfigPlan::OfferRegionMaintainTasks(
            crate::plan::OfferRegionMaintainTasks {
                tasks: vec![crate::plan::NewRegionMaintainTask {
                    kind: crate::state::RegionMaintainKind::Create,
                    database: db(),
                    region: group,
                    target,
                }],
            },
        ))
        .await
        .expect("queued");
        let mut procedure = MigrateRegionProcedure::repair(db(), region, DataNodeId(3), None);
        step(&env, &mut procedure).await.expect("prepare");
        assert!(
            procedure.data().skipped.is_some(),
            "a repair ran: {:?}",
            procedure.data()
        );
        assert_eq!(procedure.data().target, None);
    });
}

/// Simulator (seed 1759 of the migration workload): the only replica of an RF 1 group of a
/// database being deleted was lost for good mid-copy; the migration waited for a live replica
/// forever, and the deletion's removal of the group waited for the migration.
#[test]
fn a_copy_with_no_replica_left_to_copy_from_fails_and_undoes() {
    smol::block_on(async {
        let (env, region, mut procedure) = setup(MigrateRegionState::CopyData).await;
        env.commit(crate::plan::ConfigPlan::SetDatabaseDeleting(
            crate::plan::SetDatabaseDeleting {
                name: db(),
                deleting: true,
            },
        ))
        .await
        .expect("deleting");
        for node in 0..3 {
            env.commit(crate::plan::ConfigPlan::AbandonReplica(
                crate::plan::AbandonReplica {
                    region,
                    data_node: DataNodeId(node),
                    by: ProcedureId(99),
                    deletions: Vec::new(),
                },
            ))
            .await
            .expect("abandoned");
        }
        step(&env, &mut procedure).await.expect("copy");
        assert_eq!(procedure.data().state, MigrateRegionState::Undo);
        assert!(procedure.data().failure.is_some());
    });
}
