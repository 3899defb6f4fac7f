//! The consensus seam over the file stores: a ConfigNode's state survives a restart through
//! a snapshot, log compaction and replay of the entries after the snapshot.

use std::sync::Arc;

use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::plan::{ConfigPlan, RegisterDataNode};
use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, LogOptions};

fn register(port: u32) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: format!("127.0.0.1:{}", 10_000 + port),
    })
}

fn open(dir: &std::path::Path) -> (Arc<FsLogStore>, LocalConsensus) {
    // Small segments, so the snapshot's compaction really removes files.
    let log = Arc::new(
        FsLogStore::open(
            dir.join("log"),
            LogOptions {
                segment_size: 4096,
                ..LogOptions::default()
            },
        )
        .expect("log"),
    );
    let snapshots = Arc::new(FsSnapshotStore::open(dir.join("snapshots"), 2).expect("snapshots"));
    let consensus = LocalConsensus::new(log.clone(), snapshots);
    (log, consensus)
}

#[test]
fn state_survives_restart_through_snapshot_compaction_and_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = smol::block_on(async {
        let (log, node) = open(dir.path());
        let epoch = node.campaign().await.expect("campaign");
        for port in 0..200 {
            node.propose(epoch, register(port))
                .await
                .expect("commit")
                .expect("apply");
        }
        let segments_before = std::fs::read_dir(dir.path().join("log"))
            .expect("dir")
            .count();
        assert_eq!(node.take_snapshot().await.expect("snapshot"), 200);
        let segments_after = std::fs::read_dir(dir.path().join("log"))
            .expect("dir")
            .count();
        assert!(
            segments_after < segments_before,
            "{segments_before} -> {segments_after}"
        );
        assert!(log.first_index() > 1, "covered entries were compacted");
        for port in 200..250 {
            node.propose(epoch, register(port))
                .await
                .expect("commit")
                .expect("apply");
        }
        (node.state().snapshot(), epoch)
    });
    let (state, epoch) = before;
    smol::block_on(async {
        let (_log, node) = open(dir.path());
        let new_epoch = node.campaign().await.expect("campaign after restart");
        assert!(new_epoch > epoch, "the claimed term survived the restart");
        assert_eq!(node.applied_index(), 250);
        assert_eq!(node.state().snapshot(), state);
        assert_eq!(state.data_nodes.len(), 250);
    });
}
