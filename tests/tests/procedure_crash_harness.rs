//! The crash harnesses (restart at every step, leader change at every step) over the three
//! region-lifecycle procedures, against real DataNodes over in-memory stores: first in a
//! benign world, then in an adversarial one — creates to one DataNode run but lose their
//! reply, replicas of such creates exist with their creates queued, the region cleaner runs
//! beside the procedure on every leader, and every fifth commit has an unknown outcome.

use std::sync::Arc;

use shoal_core::model::DataNodeId;
use shoal_core::procedure::ProcedureRegistry;
use shoal_core::procedure::testing::{CrashHarness, UnknownOutcomes};
use shoal_core::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, MigrateRegionProcedure, RegionEnv,
    RemoveDataNodeProcedure, RemoveRegionGroupProcedure, register_region_procedures,
};
use shoal_runtime_smol::SmolSpawner;
use shoal_tests::cluster::db;
use shoal_tests::harness_world::{
    WorldOptions, cleaner, group_ids, migration_env, migration_setup, observe, published_groups,
    region_env, registered, schema, settled,
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

/// A migration's end state, observed as the harness compares runs: metadata, every
/// DataNode's replicas (`observe`), and the migrated group's digest on each node holding it.
fn observe_migration(
    state: &shoal_core::state::ClusterState,
    env: &RegionEnv,
) -> (shoal_tests::harness_world::Observed, Vec<(u32, u32)>) {
    let region = group_ids()[0];
    let mut digests = Vec::new();
    for info in state.data_nodes.values() {
        let client = env.clients.client(&info.location);
        if let Ok(digest) = futures_lite::future::block_on(client.region_digest(region, None)) {
            digests.push((info.location.id.0, digest.crc32c));
        }
    }
    (observe(state, env), digests)
}

fn assert_migrated(state: &shoal_core::state::ClusterState, env: &RegionEnv, from: u32) {
    let region = group_ids()[0];
    let (_, digests) = observe_migration(state, env);
    let expected = crc32c::crc32c(&shoal_tests::harness_world::migration_data());
    assert_eq!(
        digests.len(),
        3,
        "three replicas hold the data: {digests:?}"
    );
    assert!(
        digests
            .iter()
            .all(|(node, crc)| *node != from && *crc == expected),
        "{digests:?}"
    );
    let replicas = state.region_group(region).map(|g| g.replicas.clone());
    assert_eq!(replicas.map(|r| r.len()), Some(3));
    assert!(state.unfinished_procedures().next().is_none());
}

#[test]
fn migrate_region_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || migration_env(false),
            |_| {
                Box::new(MigrateRegionProcedure::new(
                    db("db"),
                    group_ids()[0],
                    DataNodeId(0),
                    Some(DataNodeId(3)),
                ))
            },
        )
        .with_setup(|_| migration_setup());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        assert_migrated(&reference.state, &reference.env, 0);
        let restarts = harness
            .run_with_restart_at_every_step(observe_migration)
            .await
            .expect("restarts");
        let changes = harness
            .run_with_leader_change_at_every_step(observe_migration)
            .await
            .expect("leader changes");
        eprintln!("restarts: {restarts:?}; leader changes: {changes:?}");
        assert!(
            restarts.runs >= 10 && changes.runs >= 9,
            "{restarts:?} {changes:?}"
        );
    });
}

#[test]
fn migrate_region_survives_every_crash_in_an_adversarial_world() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || migration_env(true),
            |_| {
                Box::new(MigrateRegionProcedure::new(
                    db("db"),
                    group_ids()[0],
                    DataNodeId(1),
                    Some(DataNodeId(3)),
                ))
            },
        )
        .with_setup(|_| migration_setup())
        .with_companion(cleaner)
        .with_settle(settled)
        .with_unknown_outcomes(UnknownOutcomes { every: 5 });
        let reference = harness.run_uninterrupted().await.expect("reference run");
        assert_migrated(&reference.state, &reference.env, 1);
        harness
            .run_with_restart_at_every_step(observe_migration)
            .await
            .expect("restarts");
        harness
            .run_with_leader_change_at_every_step(observe_migration)
            .await
            .expect("leader changes");
    });
}

#[test]
fn remove_data_node_survives_restart_and_leader_change_at_every_step() {
    init_logs();
    smol::block_on(async {
        let harness = CrashHarness::new(
            Arc::new(SmolSpawner),
            registry(),
            || migration_env(false),
            |_| Box::new(RemoveDataNodeProcedure::new(DataNodeId(2), false)),
        )
        .with_setup(|_| migration_setup());
        let reference = harness.run_uninterrupted().await.expect("reference run");
        assert_migrated(&reference.state, &reference.env, 2);
        assert!(!reference.state.data_nodes.contains_key(&DataNodeId(2)));
        harness
            .run_with_restart_at_every_step(observe_migration)
            .await
            .expect("restarts");
        harness
            .run_with_leader_change_at_every_step(observe_migration)
            .await
            .expect("leader changes");
    });
}
