//! The single-node data directory written by the release before replicated ConfigNodes
//! (`tests/fixtures/single-node-v1`, see `shoal_tests::upgrade_fixture`) loads under this
//! build with its databases, procedures and pending deletion intact — as a single
//! ConfigNode, and imported into a new 3-member Raft group — and the deletion it was in the
//! middle of runs to the end.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_core::confignode::ConfigNode;
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::model::{DataNodeId, Epoch};
use shoal_core::procedure::ProcedureView;
use shoal_core::state::{ClusterState, ProcedureStatus};
use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};
use shoal_tests::cluster::{DataNodeSlot, NetClients, db, fast_config};
use shoal_tests::raft_cluster::{RaftCluster, RaftClusterOptions};
use shoal_tests::upgrade_fixture::{DELETING, EPOCH, KEPT, fixture_path};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A copy of the fixture (tests never write to the committed files).
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture_path(), dir.path());
    dir
}

fn open(dir: &Path) -> LocalConsensus {
    let log = FsLogStore::open(dir.join("confignode/log"), LogOptions::default()).expect("log");
    let snapshots = FsSnapshotStore::open(dir.join("confignode/snapshots"), 3).expect("snapshots");
    LocalConsensus::new(Arc::new(log), Arc::new(snapshots))
}

/// What the fixture must hold: both databases, the deletion under way.
fn assert_fixture_state(state: &ClusterState) {
    assert_eq!(state.data_nodes.len(), 3);
    let kept = state.databases.get(&db(KEPT)).expect("kept database");
    assert!(!kept.deleting);
    assert_eq!(
        state
            .partition_tables
            .get(&db(KEPT))
            .map(|t| t.groups.len()),
        Some(3),
        "1 schema + 2 data groups"
    );
    let deleting = state
        .databases
        .get(&db(DELETING))
        .expect("deleting database");
    assert!(deleting.deleting, "marked deleting");
    let unfinished: Vec<_> = state
        .procedures
        .values()
        .filter(|r| !r.status.is_finished())
        .collect();
    assert!(
        unfinished
            .iter()
            .any(|r| r.type_name.contains("DeleteDatabase")),
        "the deletion is unfinished: {unfinished:?}"
    );
    assert!(
        unfinished
            .iter()
            .filter(|r| r.type_name.contains("RemoveRegionGroup"))
            .count()
            >= 2,
        "its region removals are under way: {unfinished:?}"
    );
    assert!(
        state
            .procedures
            .values()
            .filter(|r| r.type_name.contains("CreateRegionGroups"))
            .all(|r| r.status == ProcedureStatus::Succeeded),
        "both creations finished"
    );
}

/// After the deletion resumed: the deleted database gone, the kept one intact, nothing
/// unfinished.
fn assert_deletion_finished(state: &ClusterState) {
    assert!(
        state.databases.contains_key(&db(KEPT)),
        "{:?} {:#?}",
        state.databases,
        state
            .procedures
            .values()
            .map(|r| (r.id, &r.type_name, r.status, &r.state_name))
            .collect::<Vec<_>>()
    );
    assert!(!state.databases.contains_key(&db(DELETING)));
    assert!(!state.partition_tables.contains_key(&db(DELETING)));
    assert!(state.databases.contains_key(&db(KEPT)));
    assert_eq!(
        state
            .partition_tables
            .get(&db(KEPT))
            .map(|t| t.groups.len()),
        Some(3)
    );
    assert!(
        state.procedures.values().all(|r| r.status.is_finished()),
        "{:?}",
        state.procedures
    );
}

#[test]
fn the_single_node_fixture_loads_intact_and_its_deletion_finishes() {
    smol::block_on(async {
        let dir = fixture_copy();
        let consensus = Arc::new(open(dir.path()));
        consensus.load().await.expect("load");
        assert_fixture_state(&consensus.state().snapshot());

        // The same data directory keeps running as a single ConfigNode under this build.
        let runtime = shoal_runtime_smol::smol_runtime();
        let network =
            shoal_transport_inproc::InprocNetwork::<dyn shoal_core::api::DataNodeApi>::new(
                runtime.clone(),
                Duration::from_millis(300),
            );
        let slots: Vec<_> = (0..3)
            .map(|i| DataNodeSlot::new(i, &runtime, None))
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            slot.start(DataNodeId(i as u32), &runtime, &network).await;
        }
        let node = ConfigNode::new(
            consensus.clone() as Arc<dyn Consensus>,
            Arc::new(NetClients {
                network: network.clone(),
                from: "cn".into(),
            }),
            runtime,
            fast_config(),
        )
        .expect("ConfigNode");
        let epoch = consensus.campaign().await.expect("campaign");
        assert!(epoch > Epoch(EPOCH), "{epoch}");
        node.start();
        node.executor().wait_running().await;
        let root = consensus
            .state()
            .read(|s| {
                s.procedure_request_keys
                    .get(&format!("delete-{DELETING}"))
                    .copied()
            })
            .expect("the deletion's request key");
        let done = node.wait_procedure(root).await.expect("finished");
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !consensus
            .state()
            .read(|s| s.procedures.values().all(|r| r.status.is_finished()))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "procedures left unfinished"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        assert_deletion_finished(&consensus.state().snapshot());
        node.shutdown().await;
    });
}

#[test]
fn the_single_node_fixture_imported_into_a_raft_group_resumes_its_deletion() {
    smol::block_on(async {
        let dir = fixture_copy();
        let old = open(dir.path());
        old.load().await.expect("load");
        let state = old.state().snapshot();
        assert_fixture_state(&state);
        let floor = FsLogStore::open(dir.path().join("confignode/log"), LogOptions::default())
            .expect("log")
            .current_term();
        assert_eq!(floor, EPOCH);

        let cluster = RaftCluster::start(RaftClusterOptions {
            seed: Some((state, floor)),
            ..RaftClusterOptions::default()
        })
        .await;
        let leader = cluster.leader().await;
        assert_eq!(leader.id, 1, "the seeded member leads the empty ones");
        assert!(
            leader.consensus.leadership().get().epoch > Epoch(EPOCH),
            "epochs continue above the single node's"
        );
        let root = leader
            .consensus
            .state()
            .read(|s| {
                s.procedure_request_keys
                    .get(&format!("delete-{DELETING}"))
                    .copied()
            })
            .expect("the deletion's request key");
        let done = cluster.wait_finished(root, Duration::from_secs(30)).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        cluster
            .eventually(
                "every member to hold the finished state",
                Duration::from_secs(30),
                || {
                    let finished = leader.consensus.state().snapshot();
                    finished.procedures.values().all(|r| r.status.is_finished())
                        && cluster
                            .members()
                            .iter()
                            .all(|m| m.consensus.state().snapshot() == finished)
                },
            )
            .await;
        for member in cluster.members() {
            assert_deletion_finished(&member.consensus.state().snapshot());
        }
        assert_eq!(cluster.task_ids_accepted_twice().await, Vec::new());
        cluster.shutdown().await;
    });
}
