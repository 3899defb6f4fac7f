//! The crash harnesses (restart at every step, leader change at every step) over the three
//! region-lifecycle procedures, against real DataNodes over in-memory stores: first in a
//! benign world, then in an adversarial one — creates to one DataNode run but lose their
//! reply, replicas of such creates exist with their creates queued, the region cleaner runs
//! beside the procedure on every leader, and every fifth commit has an unknown outcome.

use std::sync::Arc;

use shoal_core::procedure::ProcedureRegistry;
use shoal_core::procedure::testing::{CrashHarness, UnknownOutcomes};
use shoal_core::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, RegionEnv, RemoveRegionGroupProcedure,
    register_region_procedures,
};
use shoal_runtime_smol::SmolSpawner;
use shoal_tests::cluster::db;
use shoal_tests::harness_world::{
    WorldOptions, cleaner, group_ids, observe, published_groups, region_env, registered, schema,
    settled,
};

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn registry() -> Arc<ProcedureRegistry> {
    let mut registry = ProcedureRegistry::new();
    register_region_procedures(&mut registry).expect("codes are unique");
    Arc::new(registry)
}

#[test]
fn create_region_groups_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || region_env(WorldOptions::default()),
            |_| Box::new(CreateRegionGroupsProcedure::new_database(schema(), 1, 2)),
        )
        .with_setup(|_| registered());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(metadata.contains("db"), "database created");
        assert!(
            replicas.iter().all(|(_, r, _)| r.len() == 3),
            "3 groups on every node: {replicas:?}"
        );
        let restarts = harness
            .run_with_restart_at_every_step(observe)
            .await
            .expect("restarts");
        let changes = harness
            .run_with_leader_change_at_every_step(observe)
            .await
            .expect("changes");
        assert!(
            restarts.runs >= 8 && changes.runs + 1 == restarts.runs,
            "{restarts:?} {changes:?}"
        );
    });
}

#[test]
fn remove_region_group_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || {
                region_env(WorldOptions {
                    groups: true,
                    lossy_creates: false,
                })
            },
            |_| Box::new(RemoveRegionGroupProcedure::group(db("db"), group_ids()[0])),
        )
        .with_setup(|_| published_groups(false));
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (_, replicas) = observe(&reference.state, &reference.env);
        assert!(
            replicas
                .iter()
                .all(|(_, r, _)| r == &vec![(group_ids()[1], 100)]),
            "only the other group is left: {replicas:?}"
        );
        assert_every_step_survived(&harness).await;
    });
}

#[test]
fn delete_database_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || {
                region_env(WorldOptions {
                    groups: true,
                    lossy_creates: false,
                })
            },
            |_| Box::new(DeleteDatabaseProcedure::new(db("db"))),
        )
        .with_setup(|_| published_groups(false));
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(reference.state.databases.is_empty(), "{metadata}");
        assert!(
            replicas.iter().all(|(_, r, _)| r.is_empty()),
            "no replica left: {replicas:?}"
        );
        assert_every_step_survived(&harness).await;
    });
}

/// Restart and leader change at every step must each end as the uninterrupted run did.
async fn assert_every_step_survived(harness: &CrashHarness<RegionEnv>) {
    let restarts = harness
        .run_with_restart_at_every_step(observe)
        .await
        .expect("restarts");
    let changes = harness
        .run_with_leader_change_at_every_step(observe)
        .await
        .expect("leader changes");
    eprintln!("restarts: {restarts:?}; leader changes: {changes:?}");
    assert!(
        restarts.runs >= 10 && changes.runs >= 9,
        "{restarts:?} {changes:?}"
    );
}

/// The adversarial harness: see the module docs.
fn adversarial<F>(groups: bool, make_procedure: F) -> CrashHarness<RegionEnv>
where
    F: Fn(&RegionEnv) -> Box<dyn shoal_core::procedure::Procedure> + Send + Sync + 'static,
{
    CrashHarness::new(
        Arc::new(SmolSpawner),
        registry(),
        move || {
            region_env(WorldOptions {
                groups,
                lossy_creates: true,
            })
        },
        make_procedure,
    )
    .with_companion(cleaner)
    .with_settle(settled)
    .with_unknown_outcomes(UnknownOutcomes { every: 5 })
}

#[test]
fn create_region_groups_survives_every_crash_in_an_adversarial_world() {
    init_logs();
    smol::block_on(async {
        let harness = adversarial(false, |_| {
            Box::new(CreateRegionGroupsProcedure::new_database(schema(), 1, 2))
        })
        .with_setup(|_| registered());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(
            replicas
                .iter()
                .all(|(_, r, twice)| r.len() == 3 && twice.is_empty()),
            "every group completed on every node, by the cleaner where replies were lost: {replicas:?} {metadata}"
        );
        assert_every_step_survived(&harness).await;
    });
}

#[test]
fn remove_region_group_survives_every_crash_in_an_adversarial_world() {
    init_logs();
    smol::block_on(async {
        let harness = adversarial(true, |_| {
            Box::new(RemoveRegionGroupProcedure::group(db("db"), group_ids()[0]))
        })
        .with_setup(|_| published_groups(true));
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(
            replicas
                .iter()
                .all(|(_, r, _)| r == &vec![(group_ids()[1], 100)]),
            "the removed group is gone everywhere, the queued replica included: {replicas:?}"
        );
        assert!(!metadata.contains("id: 0 }: RegionFootprint"), "{metadata}");
        assert_every_step_survived(&harness).await;
    });
}

#[test]
fn delete_database_survives_every_crash_in_an_adversarial_world() {
    init_logs();
    smol::block_on(async {
        let harness = adversarial(true, |_| Box::new(DeleteDatabaseProcedure::new(db("db"))))
            .with_setup(|_| published_groups(true));
        let reference = harness.run_uninterrupted().await.expect("reference run");
        let (metadata, replicas) = observe(&reference.state, &reference.env);
        assert!(reference.state.databases.is_empty(), "{metadata}");
        assert!(reference.state.footprints.is_empty(), "{metadata}");
        assert!(
            replicas.iter().all(|(_, r, _)| r.is_empty()),
            "no replica left, the queued ones included: {replicas:?}"
        );
        assert_every_step_survived(&harness).await;
    });
}
