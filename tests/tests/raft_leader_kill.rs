//! The leader of a 3-ConfigNode Raft group is killed at every commit of each region
//! procedure (just before it is proposed, and just after it committed); the new leader
//! resumes the procedure to the end state of an uninterrupted run, each replica deleted once
//! and no task id accepted twice by any DataNode (see `shoal_tests::raft_harness`).

use std::sync::Arc;

use shoal_core::model::{DatabaseSchema, RegionKind, ReplicationFactor};
use shoal_core::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, RemoveRegionGroupProcedure,
};
use shoal_tests::cluster::db;
use shoal_tests::raft_harness::{MakeProcedure, Setup, kill_leader_at_every_commit};

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[test]
fn create_region_groups_survives_a_leader_kill_at_every_commit() {
    init_logs();
    smol::block_on(async {
        let make: MakeProcedure = Arc::new(|_| {
            let rf = ReplicationFactor::new(3).expect("rf");
            Box::new(CreateRegionGroupsProcedure::new_database(
                DatabaseSchema {
                    name: db("db"),
                    schema_replication_factor: rf,
                    data_replication_factor: rf,
                },
                1,
                2,
            ))
        });
        let report = kill_leader_at_every_commit(Setup::Registered, make).await;
        eprintln!("{report:?}");
        assert!(report.reference_commits >= 5, "{report:?}");
        assert!(
            report.kills * 10 >= report.runs * 9,
            "most runs killed: {report:?}"
        );
    });
}

#[test]
fn remove_region_group_survives_a_leader_kill_at_every_commit() {
    init_logs();
    smol::block_on(async {
        let make: MakeProcedure = Arc::new(|cluster| {
            // The first data group, as the leader (which created it) has it.
            let region = cluster
                .members()
                .iter()
                .filter(|m| m.consensus.leadership().get().is_leader)
                .find_map(|m| {
                    m.consensus.state().read(|s| {
                        s.partition_tables
                            .get(&db("db"))
                            .and_then(|t| t.groups.keys().find(|r| r.kind == RegionKind::Data))
                            .copied()
                    })
                })
                .expect("a data group on the leader");
            Box::new(RemoveRegionGroupProcedure::group(db("db"), region))
        });
        let report = kill_leader_at_every_commit(
            Setup::Database {
                data_groups: 2,
                bytes: 4096,
            },
            make,
        )
        .await;
        eprintln!("{report:?}");
        assert!(report.reference_commits >= 5, "{report:?}");
        assert!(
            report.kills * 10 >= report.runs * 9,
            "most runs killed: {report:?}"
        );
    });
}

#[test]
fn delete_database_survives_a_leader_kill_at_every_commit() {
    init_logs();
    smol::block_on(async {
        let make: MakeProcedure = Arc::new(|_| Box::new(DeleteDatabaseProcedure::new(db("db"))));
        // One schema and one data group: two removals run side by side under the deletion.
        let report = kill_leader_at_every_commit(
            Setup::Database {
                data_groups: 1,
                bytes: 4096,
            },
            make,
        )
        .await;
        eprintln!("{report:?}");
        assert!(report.reference_commits >= 10, "{report:?}");
        assert!(
            report.kills * 10 >= report.runs * 9,
            "most runs killed: {report:?}"
        );
    });
}
