//! The ghost-task regression (DESIGN.md, "The problem this solves").
//!
//! A region deletion that takes three times the RPC timeout:
//! (a) the legacy synchronous delete with timeout-and-retry reports success while the
//!     DataNode is still deleting — the hazard is real;
//! (b) deleting the database through the procedure reports done only when no deletion runs
//!     on any DataNode and no region data remains.

use std::time::{Duration, Instant};

use shoal_core::api::{ApiError, DataNodeApi};
use shoal_core::consensus::Consensus;
use shoal_core::model::Epoch;
use shoal_tests::cluster::{ClusterOptions, TestCluster, db, replicas_of};

const RPC_TIMEOUT: Duration = Duration::from_millis(300);
/// Bytes per replica and delete rate: one replica takes 900 ms = 3 x the RPC timeout.
const BYTES: usize = 900 * 1024;
const RATE: u64 = 1024 * 1024;

fn options() -> ClusterOptions {
    ClusterOptions {
        data_nodes: 3,
        rpc_timeout: RPC_TIMEOUT,
        delete_rate: Some(RATE),
        ..ClusterOptions::default()
    }
}

/// The deletion loop the procedure replaces: a synchronous delete, retried after a timeout,
/// done at the first success.
async fn legacy_delete_with_retry(
    client: &dyn DataNodeApi,
    epoch: Epoch,
    region: shoal_core::model::RegionId,
) -> u32 {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client.delete_region(epoch, region).await {
            Ok(()) => return attempts,
            Err(ApiError::Timeout(_) | ApiError::Unreachable(_)) => {
                smol::Timer::after(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("legacy delete failed: {other}"),
        }
    }
}

#[test]
fn legacy_synchronous_delete_reports_success_while_the_datanode_still_deletes() {
    smol::block_on(async {
        let cluster = TestCluster::start(options()).await;
        cluster.create_database("legacy", 1, 0, 1).await;
        cluster.load("legacy", BYTES).await;
        let (region, nodes) = replicas_of(&cluster, "legacy").remove(0);
        let slot = &cluster.data_nodes[nodes[0].0 as usize];
        let epoch = cluster.leader_slot().consensus.leadership().get().epoch;
        let client = cluster.network.client("legacy-coordinator", &slot.address);

        let attempts = legacy_delete_with_retry(&client, epoch, region).await;

        // The coordinator now believes the region is gone. It is not:
        assert!(attempts >= 2, "the first call timed out and was retried");
        assert_eq!(
            slot.mem.regions_being_deleted(),
            [region],
            "a deletion is still running"
        );
        assert!(slot.mem.total_bytes() > 0, "region data remains");
        // ... and it keeps running after the "success" (the ghost), until it ends by itself.
        cluster
            .eventually("the ghost deletion to end", Duration::from_secs(10), || {
                slot.mem.total_bytes() == 0
            })
            .await;
        cluster.shutdown().await;
    });
}

#[test]
fn procedure_reports_the_database_deleted_only_after_every_deletion_finished() {
    smol::block_on(async {
        let cluster = TestCluster::start(options()).await;
        cluster.create_database("metrics", 3, 1, 2).await;
        cluster.load("metrics", BYTES).await;
        let groups = replicas_of(&cluster, "metrics");
        assert_eq!(groups.len(), 3);

        let leader = cluster.leader();
        let started = Instant::now();
        let id = leader
            .delete_database(db("metrics"), None)
            .await
            .expect("submitted");
        let info = cluster.wait(id, Duration::from_secs(60)).await;

        // At the very moment the procedure reports done:
        assert_eq!(
            info.status,
            shoal_core::procedure::ProcedureView::Succeeded,
            "{info:?}"
        );
        assert_eq!(
            cluster.running_tasks(),
            0,
            "no deletion runs on any DataNode"
        );
        assert_eq!(cluster.region_bytes(), 0, "no region data remains");
        for slot in &cluster.data_nodes {
            assert!(slot.mem.regions_being_deleted().is_empty());
        }
        // The deletions really were slow: each replica alone takes 3 x the RPC timeout.
        assert!(started.elapsed() >= 3 * RPC_TIMEOUT);
        for (region, replicas) in groups {
            for node in replicas {
                assert_eq!(
                    cluster.deletions(region)[node.0 as usize],
                    1,
                    "{region} on {node}"
                );
            }
        }
        cluster
            .assert_database_gone_without_leftovers("metrics")
            .await;
        cluster.shutdown().await;
    });
}
