//! Groups on storage-fs: fatal log failure and restart over on-disk state.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_consensus_raft::RaftStores;
use shoal_consensus_raft::state_machine::snapshot_store_index;
use shoal_core::consensus::Consensus;
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, FsStateFile, LogOptions};
use support::{Group, register, wait_for};

fn fs_stores(dir: &std::path::Path) -> (RaftStores, Arc<FsLogStore>) {
    let log = Arc::new(FsLogStore::open(dir.join("log"), LogOptions::default()).expect("open log"));
    let stores = RaftStores {
        log: log.clone(),
        meta: Arc::new(FsStateFile::open(dir, "vote", *b"SHOALVOT").expect("open vote")),
        snapshots: Arc::new(
            FsSnapshotStore::open_with_format(dir.join("snapshots"), 3, snapshot_store_index)
                .expect("open snapshots"),
        ),
    };
    (stores, log)
}

#[test]
fn fatal_storage_failure_resolves_failed_and_the_node_stops_leading() {
    smol::block_on(async {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let mut logs = BTreeMap::new();
        let mut stores = BTreeMap::new();
        for (id, dir) in (1..=3).zip(&dirs) {
            let (s, log) = fs_stores(dir.path());
            stores.insert(id, s);
            logs.insert(id, log);
        }
        let group = Group::new(stores).await;
        group.bootstrap(&[1, 2, 3]).await;
        let (leader, epoch) = group.leader().await;
        let r = group
            .node(leader)
            .propose(epoch, register("dn0:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");

        logs[&leader].inject_flush_failure();
        let r = group
            .node(leader)
            .propose(epoch, register("dn1:7000"))
            .await;
        // The followers' flushes alone can commit it, so it may be reported applied; if so it
        // really is committed (checked on the next leader below).
        let failure =
            futures_lite::future::or(async { Some(group.node(leader).failed().await) }, async {
                smol::Timer::after(Duration::from_secs(10)).await;
                None
            })
            .await
            .expect("failed() resolves");
        assert!(failure.is_fatal(), "{failure:?}");
        wait_for("the failed node to stop leading", || {
            !group.node(leader).leadership().get().is_leader
        })
        .await;
        let (next_leader, next) = group.new_leader(leader, epoch).await;
        assert!(next > epoch);
        if matches!(r, Ok(Ok(_))) {
            let committed = group
                .state(next_leader)
                .data_nodes
                .values()
                .any(|n| n.location.address == "dn1:7000");
            assert!(committed, "a proposal reported applied is committed");
        }
        // It stays down until restarted.
        let again = group.node(leader).propose(next, register("dn2:7000")).await;
        assert!(again.is_err());
    });
}

#[test]
fn restarted_nodes_recover_vote_log_and_snapshot_from_disk() {
    smol::block_on(async {
        let dirs: Vec<tempfile::TempDir> = (0..3)
            .map(|_| tempfile::tempdir().expect("tempdir"))
            .collect();
        let open = |dirs: &[tempfile::TempDir]| {
            (1..=3)
                .zip(dirs)
                .map(|(id, dir)| {
                    (
                        id,
                        RaftStores::open_fs(dir.path(), LogOptions::default()).expect("open"),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        let (before, epoch, term) = {
            let mut group = Group::new(open(&dirs)).await;
            group.bootstrap(&[1, 2, 3]).await;
            let (leader, epoch) = group.leader().await;
            for i in 0..10 {
                let r = group
                    .node(leader)
                    .propose(epoch, register(&format!("dn{i}:7000")))
                    .await;
                assert!(matches!(r, Ok(Ok(_))), "{r:?}");
            }
            group.converged_on(leader).await;
            for id in [1, 2, 3] {
                group.node(id).take_snapshot().await.expect("snapshot");
            }
            for i in 10..15 {
                let r = group
                    .node(leader)
                    .propose(epoch, register(&format!("dn{i}:7000")))
                    .await;
                assert!(matches!(r, Ok(Ok(_))), "{r:?}");
            }
            group.converged_on(leader).await;
            let state = group.state(leader);
            let term = group.node(leader).metrics().current_term;
            for id in [1, 2, 3] {
                group.stop(id).await;
            }
            (state, epoch, term)
        };
        // Let the stopped nodes' tasks release their files.
        smol::Timer::after(Duration::from_millis(200)).await;

        let group = Group::new(open(&dirs)).await;
        for id in [1, 2, 3] {
            // Metrics start from a default until the node's core has loaded its state.
            wait_for("recovered metrics", || {
                group.node(id).metrics().last_log_index.is_some()
            })
            .await;
            let metrics = group.node(id).metrics();
            assert!(
                metrics.vote.leader_id.term >= term,
                "vote recovered on {id}: {:?}",
                metrics.vote
            );
            assert!(
                metrics.snapshot.is_some_and(|s| s.index >= 10),
                "snapshot recovered on {id}: {:?}",
                metrics.snapshot
            );
            assert!(
                metrics.last_log_index.is_some_and(|i| i >= 15),
                "log recovered on {id}"
            );
        }
        let (leader, new_epoch) = group.leader().await;
        assert!(new_epoch > epoch);
        group.converged_on(leader).await;
        assert_eq!(
            group.state(leader),
            before,
            "every committed plan survives the restart"
        );
        let r = group
            .node(leader)
            .propose(new_epoch, register("after:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
    });
}
