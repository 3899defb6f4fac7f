//! One test per answer a DataNode can give a creation's steps, and the publish and failure
//! paths.

use crate::api::ApiError;
use crate::model::{DataNodeId, Epoch, ProcedureId, RegionId};
use crate::plan::{AddRegionLocation, ConfigPlan, DropQueuedCreates};
use crate::procedure::{ChildOutcome, ProcedureError, Step, decode_data};
use crate::procedures::testing::{Call, StepEnv, db, schema};
use crate::state::ProcedureStatus;

use super::{CreateRegionGroupsOutput, CreateRegionGroupsProcedure, CreateRegionGroupsState};

const ID: ProcedureId = ProcedureId(3);

/// Runs steps until the creation reaches `state` (each must continue).
async fn run_to(
    env: &StepEnv,
    creation: &mut CreateRegionGroupsProcedure,
    state: CreateRegionGroupsState,
) {
    while creation.data.state != state {
        let step = env.step(creation, ID, Vec::new()).await;
        assert!(
            matches!(step, Ok(Step::Continue)),
            "{:?}: {step:?}",
            creation.data.state
        );
    }
}

/// A creation of database `db` with two data groups over three DataNodes, at `CreateReplicas`.
async fn creating() -> (StepEnv, CreateRegionGroupsProcedure) {
    let env = StepEnv::new(3).await;
    let mut creation = CreateRegionGroupsProcedure::new_database(schema(), 0, 2);
    run_to(&env, &mut creation, CreateRegionGroupsState::CreateReplicas).await;
    (env, creation)
}

fn regions(creation: &CreateRegionGroupsProcedure) -> Vec<RegionId> {
    creation.data.groups.iter().map(|g| g.region).collect()
}

#[test]
fn prepare_places_and_reserves_before_anything_is_created() {
    smol::block_on(async {
        let (env, creation) = creating().await;
        assert_eq!(creation.data.groups.len(), 2);
        for group in &creation.data.groups {
            assert_eq!(group.replicas.len(), 3);
            assert!(group.created.is_empty());
        }
        assert!(env.nodes.calls().is_empty());
    });
}

#[test]
fn the_footprint_is_recorded_before_any_create_leaves() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        run_to(&env, &mut creation, CreateRegionGroupsState::Publish).await;
        let state = env.state();
        for (node, call) in env.nodes.calls() {
            let Call::Create(region, generation) = call else {
                panic!("{call:?}");
            };
            assert_eq!(
                state.creation_generation(region, node),
                Some(generation),
                "{region} on {node} was sent the generation the footprint holds"
            );
            assert!(generation > 0);
        }
        for group in &creation.data.groups {
            assert_eq!(group.created, group.replicas, "every replica created");
        }
    });
}

#[test]
fn a_transient_create_failure_is_retried_within_the_window() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        env.nodes.answer_creates(
            2,
            vec![Err(ApiError::Timeout(std::time::Duration::from_secs(1)))],
        );
        run_to(&env, &mut creation, CreateRegionGroupsState::Publish).await;
        assert!(
            creation
                .data
                .groups
                .iter()
                .all(|g| g.created.contains(&DataNodeId(2)))
        );
        assert_eq!(
            env.nodes.calls_to(2).len(),
            3,
            "one retry after the timeout"
        );
    });
}

#[test]
fn creates_still_unreachable_after_the_window_count_as_missing() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        env.nodes.answer_creates(
            2,
            (0..50)
                .map(|_| Err(ApiError::Unreachable("connection refused".into())))
                .collect(),
        );
        run_to(&env, &mut creation, CreateRegionGroupsState::Publish).await;
        assert!(
            creation
                .data
                .groups
                .iter()
                .all(|g| !g.created.contains(&DataNodeId(2)))
        );
        let attempts = env.nodes.calls_to(2).len();
        assert!(
            attempts > 2 && attempts < 50,
            "retried, then gave up: {attempts}"
        );
    });
}

#[test]
fn a_refused_create_is_not_retried_and_counts_as_missing() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        env.nodes.answer_creates(
            2,
            vec![
                Err(ApiError::Refused("exists with another config".into())),
                Err(ApiError::Refused("exists with another config".into())),
            ],
        );
        run_to(&env, &mut creation, CreateRegionGroupsState::Publish).await;
        assert!(
            creation
                .data
                .groups
                .iter()
                .all(|g| !g.created.contains(&DataNodeId(2)))
        );
        assert_eq!(
            env.nodes.calls_to(2).len(),
            2,
            "one call per group, no retry"
        );
    });
}

#[test]
fn stale_leader_on_a_create_stops_the_session_and_asks_for_a_higher_epoch() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        let seen = Epoch(env.epoch.0 + 7);
        env.nodes.answer_creates(
            1,
            vec![Err(ApiError::StaleLeader {
                request: env.epoch,
                seen,
            })],
        );
        let step = env.step(&mut creation, ID, Vec::new()).await;
        assert!(
            matches!(step, Err(ProcedureError::StaleLeader { .. })),
            "{step:?}"
        );
        assert_eq!(env.healer.pending(), Some((DataNodeId(1), env.epoch, seen)));
    });
}

#[test]
fn a_quorum_publishes_and_queues_the_missing_replica() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        env.nodes.answer_creates(
            2,
            vec![
                Err(ApiError::Refused("no".into())),
                Err(ApiError::Refused("no".into())),
            ],
        );
        run_to(&env, &mut creation, CreateRegionGroupsState::Finish).await;
        let state = env.state();
        for region in regions(&creation) {
            let group = state.region_group(region).expect("published");
            assert_eq!(group.replicas, vec![DataNodeId(0), DataNodeId(1)]);
            assert!(
                state
                    .create_queue
                    .values()
                    .any(|c| c.group.region == region && c.target == DataNodeId(2))
            );
        }
        let Ok(Step::Done(output)) = env.step(&mut creation, ID, Vec::new()).await else {
            panic!("finish succeeds");
        };
        let output: CreateRegionGroupsOutput = decode_data(&output).expect("output");
        assert_eq!(output.degraded, regions(&creation));
    });
}

#[test]
fn a_rerun_publish_leaves_a_group_the_cleaner_completed() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        env.nodes.answer_creates(
            2,
            vec![
                Err(ApiError::Refused("no".into())),
                Err(ApiError::Refused("no".into())),
            ],
        );
        run_to(&env, &mut creation, CreateRegionGroupsState::Finish).await;
        // The cleaner completes the groups; then Publish runs again (a crash before its
        // transition was committed).
        let queued: Vec<_> = env.state().create_queue.keys().copied().collect();
        for region in regions(&creation) {
            env.commit(ConfigPlan::AddRegionLocation(AddRegionLocation {
                region,
                data_node: DataNodeId(2),
            }))
            .await
            .expect("cleaner");
        }
        env.commit(ConfigPlan::DropQueuedCreates(DropQueuedCreates {
            ids: queued,
        }))
        .await
        .expect("cleaner");
        creation.data.state = CreateRegionGroupsState::Publish;
        run_to(&env, &mut creation, CreateRegionGroupsState::Finish).await;
        assert!(creation.data.torn_down.is_empty(), "nothing torn down");
        let state = env.state();
        for region in regions(&creation) {
            assert_eq!(
                state
                    .region_group(region)
                    .expect("published")
                    .replicas
                    .len(),
                3
            );
        }
        assert!(state.create_queue.is_empty(), "nothing queued again");
    });
}

#[test]
fn groups_without_a_quorum_are_torn_down_and_never_published() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        for node in [1, 2] {
            env.nodes.answer_creates(
                node,
                vec![
                    Err(ApiError::Refused("no".into())),
                    Err(ApiError::Refused("no".into())),
                ],
            );
        }
        run_to(&env, &mut creation, CreateRegionGroupsState::TearDown).await;
        assert_eq!(creation.data.torn_down, regions(&creation));
        assert!(env.state().partition_tables[&db()].groups.is_empty());
        let Ok(Step::SpawnChildren(children)) = env.step(&mut creation, ID, Vec::new()).await
        else {
            panic!("teardown spawns removals");
        };
        assert_eq!(children.len(), 2);
    });
}

#[test]
fn a_creation_that_failed_before_publishing_drops_its_database() {
    smol::block_on(async {
        let (env, mut creation) = creating().await;
        for node in [1, 2] {
            env.nodes.answer_creates(
                node,
                vec![
                    Err(ApiError::Refused("no".into())),
                    Err(ApiError::Refused("no".into())),
                ],
            );
        }
        run_to(&env, &mut creation, CreateRegionGroupsState::TearDown).await;
        let _ = env.step(&mut creation, ID, Vec::new()).await;
        // The teardown children deleted the footprints; what they committed, in short.
        for region in regions(&creation) {
            for node in 0..3 {
                env.commit(ConfigPlan::ReplicaDeleted(crate::plan::ReplicaDeleted {
                    region,
                    data_node: DataNodeId(node),
                }))
                .await
                .expect("deleted");
            }
        }
        let children = vec![
            ChildOutcome {
                id: ProcedureId(10),
                type_code: super::super::REMOVE_REGION_GROUP,
                status: ProcedureStatus::Succeeded,
                output: None,
                error: None,
            };
            2
        ];
        let step = env.step(&mut creation, ID, children).await;
        assert!(
            matches!(&step, Err(ProcedureError::Abort(r)) if r.contains("not created")),
            "{step:?}"
        );
        assert!(env.state().databases.is_empty(), "the database was dropped");
    });
}

#[test]
fn a_creation_that_cannot_be_placed_fails_and_drops_its_database() {
    smol::block_on(async {
        let env = StepEnv::new(2).await;
        let mut creation = CreateRegionGroupsProcedure::new_database(schema(), 0, 1);
        run_to(&env, &mut creation, CreateRegionGroupsState::Finish).await;
        assert!(
            creation.data.failure.is_some(),
            "Prepare failed into Finish"
        );
        let step = env.step(&mut creation, ID, Vec::new()).await;
        assert!(matches!(step, Err(ProcedureError::Abort(_))), "{step:?}");
        assert!(env.state().databases.is_empty());
        assert!(env.nodes.calls().is_empty());
    });
}
