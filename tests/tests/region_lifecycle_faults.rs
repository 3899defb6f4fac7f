//! Deleting a database under every fault DESIGN.md names. Each scenario must converge to:
//! database gone, no region data left, no task running, every procedure finished, and
//! exactly one deletion executed per replica.

use std::time::Duration;

use shoal_core::consensus::Consensus;
use shoal_core::model::{DataNodeId, ProcedureId, RegionId};
use shoal_tests::cluster::{ClusterOptions, TestCluster, db, replicas_of};

const LIMIT: Duration = Duration::from_secs(60);

fn slow_deletes() -> ClusterOptions {
    // 64 KiB per replica at 128 KiB/s: each deletion takes about half a second.
    ClusterOptions {
        delete_rate: Some(128 * 1024),
        ..ClusterOptions::default()
    }
}

async fn cluster_with_database(
    options: ClusterOptions,
) -> (TestCluster, Vec<(RegionId, Vec<DataNodeId>)>) {
    let cluster = TestCluster::start(options).await;
    let info = cluster.create_database("doomed", 3, 1, 3).await;
    assert_eq!(
        info.status,
        shoal_core::procedure::ProcedureView::Succeeded,
        "{info:?}"
    );
    cluster.load("doomed", 64 * 1024).await;
    let groups = replicas_of(&cluster, "doomed");
    assert_eq!(groups.len(), 4);
    (cluster, groups)
}

/// The end state every scenario must reach.
async fn assert_converged(cluster: &TestCluster, groups: &[(RegionId, Vec<DataNodeId>)]) {
    cluster
        .assert_database_gone_without_leftovers("doomed")
        .await;
    for (region, replicas) in groups {
        let deletions = cluster.deletions(*region);
        for (index, count) in deletions.iter().enumerate() {
            let expected = u64::from(replicas.contains(&DataNodeId(index as u32)));
            assert_eq!(
                *count, expected,
                "deletions of {region} on dn-{index}: {deletions:?}"
            );
        }
    }
}

async fn submit_delete(cluster: &TestCluster) -> ProcedureId {
    let leader = cluster.leader();
    leader
        .delete_database(db("doomed"), None)
        .await
        .expect("submitted")
}

/// Waits for the deletion and asserts it succeeded.
async fn finish(cluster: &TestCluster, id: ProcedureId) {
    let info = cluster.wait(id, LIMIT).await;
    assert_eq!(
        info.status,
        shoal_core::procedure::ProcedureView::Succeeded,
        "{info:?}"
    );
}

async fn delete_and_wait(cluster: &TestCluster) {
    let id = submit_delete(cluster).await;
    finish(cluster, id).await;
}

#[test]
fn lost_reply_to_a_task_submission_converges() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        for slot in &cluster.data_nodes {
            cluster.network.update_link("cn-0", &slot.address, |l| {
                l.drop_replies_of.insert("submit_task", 1);
            });
        }
        delete_and_wait(&cluster).await;
        for slot in &cluster.data_nodes {
            assert_eq!(
                cluster.network.stats("cn-0", &slot.address).dropped_replies,
                1
            );
        }
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}

#[test]
fn lost_replies_to_result_polls_converge() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        for slot in &cluster.data_nodes {
            cluster.network.update_link("cn-0", &slot.address, |l| {
                l.drop_replies_of.insert("task_result", 3);
            });
        }
        delete_and_wait(&cluster).await;
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}

#[test]
fn datanode_restart_mid_delete_converges() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        let id = submit_delete(&cluster).await;
        cluster
            .eventually("a deletion running on dn-1", LIMIT, || {
                cluster.data_nodes[1]
                    .node()
                    .is_some_and(|n| n.task_counts().running > 0)
            })
            .await;
        cluster.restart_data_node(1).await;
        finish(&cluster, id).await;
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}

#[test]
fn confignode_leader_change_mid_delete_converges() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        let id = submit_delete(&cluster).await;
        cluster
            .eventually("a deletion running somewhere", LIMIT, || {
                cluster.running_tasks() > 0
            })
            .await;
        let old = cluster.leader_slot();
        let new = cluster.add_leader().await;
        assert!(new.consensus.leadership().get().epoch > old.consensus.leadership().get().epoch);
        // The new leader resumes the procedure from the shared log and finishes it.
        finish(&cluster, id).await;
        assert!(
            !old.consensus.leadership().get().is_leader,
            "the old leader was fenced"
        );
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}

#[test]
fn datanode_down_for_a_while_then_back_converges() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        cluster.stop_data_node(2);
        let id = submit_delete(&cluster).await;
        // The deletion waits, visibly, and is not reported done.
        cluster
            .eventually("a removal waiting for dn-2", LIMIT, || {
                cluster
                    .leader()
                    .list_procedures()
                    .iter()
                    .any(|p| p.waiting_for.as_deref().is_some_and(|w| w.contains("dn-2")))
            })
            .await;
        smol::Timer::after(Duration::from_millis(500)).await;
        let info = cluster.leader().get_procedure(id).expect("recorded");
        assert!(
            info.status != shoal_core::procedure::ProcedureView::Succeeded,
            "done while dn-2 is down: {info:?}"
        );
        assert!(
            cluster
                .leader()
                .list_databases()
                .iter()
                .any(|d| d.entry.deleting)
        );
        cluster.start_data_node(2).await;
        finish(&cluster, id).await;
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}

#[test]
fn partition_that_heals_converges() {
    smol::block_on(async {
        let (cluster, groups) = cluster_with_database(slow_deletes()).await;
        let target = cluster.data_nodes[0].address.clone();
        cluster.network.partition("cn-0", &target);
        let id = submit_delete(&cluster).await;
        smol::Timer::after(Duration::from_millis(800)).await;
        let info = cluster.leader().get_procedure(id).expect("recorded");
        assert_ne!(
            info.status,
            shoal_core::procedure::ProcedureView::Succeeded,
            "done across a partition: {info:?}"
        );
        cluster.network.heal("cn-0", &target);
        finish(&cluster, id).await;
        assert_converged(&cluster, &groups).await;
        cluster.shutdown().await;
    });
}
