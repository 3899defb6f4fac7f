//! Creating region groups under failures, racing a deletion, adopting legacy deletions, and
//! a large create/delete round trip.

use std::time::Duration;

use shoal_core::consensus::Consensus;
use shoal_core::model::{DataNodeId, RegionKind, RegionReplicaSet};
use shoal_core::plan::{
    ConfigPlan, NewRegionMaintainTask, OfferRegionMaintainTasks, RemoveRegionGroup,
    SetDatabaseDeleting,
};
use shoal_core::procedure::ProcedureView;
use shoal_core::state::RegionMaintainKind;
use shoal_core::storage::RegionStore;
use shoal_core::storage::faulty::StoreOp;
use shoal_tests::cluster::{ClusterOptions, TestCluster, db, replicas_of};

const LIMIT: Duration = Duration::from_secs(60);

fn queue_len(cluster: &TestCluster) -> usize {
    cluster
        .leader()
        .consensus()
        .state()
        .read(|s| s.create_queue.len())
}

#[test]
fn one_refusing_datanode_serves_with_quorum_and_the_missing_replicas_appear_later() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.data_nodes[2]
            .store
            .fail_next(StoreOp::Create, u32::MAX);
        let info = cluster.create_database("partial", 3, 1, 4).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");

        // Every group serves with the two replicas that exist; the third is queued.
        let groups = replicas_of(&cluster, "partial");
        assert_eq!(groups.len(), 5);
        for (region, replicas) in &groups {
            assert_eq!(replicas, &vec![DataNodeId(0), DataNodeId(1)], "{region}");
        }
        assert_eq!(queue_len(&cluster), 5);
        smol::Timer::after(Duration::from_millis(300)).await;
        assert_eq!(
            queue_len(&cluster),
            5,
            "the cleaner keeps the tasks while dn-2 refuses"
        );

        // dn-2 recovers: the region cleaner creates every missing replica.
        cluster.data_nodes[2].store.fail_next(StoreOp::Create, 0);
        cluster
            .eventually("the queue to drain", LIMIT, || queue_len(&cluster) == 0)
            .await;
        for (region, replicas) in replicas_of(&cluster, "partial") {
            assert_eq!(replicas.len(), 3, "{region} has every replica");
        }
        let on_dn2 = cluster.data_nodes[2].mem.list().await.expect("list").len();
        assert_eq!(on_dn2, 5);
        cluster.shutdown().await;
    });
}

#[test]
fn two_refusing_datanodes_tear_the_groups_down_and_leave_nothing() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        for i in [1, 2] {
            cluster.data_nodes[i]
                .store
                .fail_next(StoreOp::Create, u32::MAX);
        }
        let info = cluster.create_database("doomed", 3, 1, 3).await;
        assert_eq!(info.status, ProcedureView::Failed, "{info:?}");
        let error = info.last_error.clone().unwrap_or_default();
        assert!(error.contains("could not reach a quorum"), "{error}");
        // dn-0 had created its replicas: they were torn down by the child removals.
        assert!(
            cluster.data_nodes[0]
                .store
                .deletions_executed(shoal_core::model::RegionId::new(RegionKind::Data, 1))
                >= 1
        );
        assert_eq!(cluster.replica_count().await, 0, "no replica left anywhere");
        assert_eq!(queue_len(&cluster), 0);
        assert!(
            cluster.leader().list_region_groups(None).is_empty(),
            "nothing published"
        );
        assert!(
            cluster.leader().list_databases().is_empty(),
            "the database was not created"
        );
        assert!(cluster.unfinished_procedures().is_empty());
        cluster.shutdown().await;
    });
}

#[test]
fn creating_groups_racing_a_database_deletion_leaves_no_orphan() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.create_database("raced", 3, 1, 2).await;
        // Queued create tasks and the cleaner join the race too.
        cluster.data_nodes[1].store.fail_next(StoreOp::Create, 3);
        let leader = cluster.leader();
        let create = leader.create_region_groups(db("raced"), 0, 6);
        let delete = leader.delete_database(db("raced"), None);
        let (create, delete) = futures_lite::future::zip(create, delete).await;
        let delete = delete.expect("delete submitted");
        let info = cluster.wait(delete, LIMIT).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        if let Ok(create) = create {
            let created = cluster.wait(create, LIMIT).await;
            assert!(
                matches!(
                    created.status,
                    ProcedureView::Succeeded | ProcedureView::Failed
                ),
                "{created:?}"
            );
        }
        // Give the cleaner a few passes: nothing may resurrect a region.
        smol::Timer::after(Duration::from_millis(300)).await;
        cluster
            .assert_database_gone_without_leftovers("raced")
            .await;
        assert_eq!(queue_len(&cluster), 0);
        cluster.shutdown().await;
    });
}

#[test]
fn legacy_deletions_from_an_old_log_are_finished_by_the_next_leader() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.create_database("old", 3, 0, 1).await;
        cluster.load("old", 4096).await;
        let (region, replicas) = replicas_of(&cluster, "old").remove(0);
        let slot = cluster.leader_slot();
        let epoch = slot.consensus.leadership().get().epoch;
        let state = slot.consensus.state().snapshot();
        // What an old release left in its log: the group dropped from the partition table,
        // and one synchronous-delete task per replica in the maintain queue.
        let tasks = replicas
            .iter()
            .map(|node| NewRegionMaintainTask {
                kind: RegionMaintainKind::LegacyDelete,
                database: db("old"),
                region: RegionReplicaSet::new(region, replicas.clone()),
                target: state.data_nodes[node].location.clone(),
            })
            .collect();
        let plans = [
            ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
                name: db("old"),
                deleting: true,
            }),
            ConfigPlan::OfferRegionMaintainTasks(OfferRegionMaintainTasks { tasks }),
            ConfigPlan::RemoveRegionGroup(RemoveRegionGroup {
                database: db("old"),
                region,
            }),
        ];
        for plan in plans {
            slot.consensus
                .propose(epoch, plan)
                .await
                .expect("committed")
                .expect("applied");
        }
        assert_eq!(slot.consensus.state().read(|s| s.legacy_deletions.len()), 3);
        assert!(cluster.region_bytes() > 0, "the replicas still hold data");

        // An upgraded leader takes over and adopts every pending deletion.
        let new = cluster.add_leader().await;
        cluster
            .eventually("legacy deletions to be adopted and finished", LIMIT, || {
                new.consensus
                    .state()
                    .read(|s| s.legacy_deletions.is_empty())
                    && cluster.unfinished_procedures().is_empty()
            })
            .await;
        let adopted = new
            .node
            .list_procedures()
            .into_iter()
            .filter(|p| p.type_name == "RemoveRegionGroup")
            .count();
        assert_eq!(adopted, 3, "one removal per legacy deletion");
        for node in &replicas {
            assert_eq!(
                cluster.deletions(region)[node.0 as usize],
                1,
                "{region} on {node}"
            );
        }
        assert_eq!(cluster.region_bytes(), 0);
        cluster.shutdown().await;
    });
}

#[test]
fn two_hundred_region_groups_are_created_and_deleted_without_leftovers() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let info = cluster.create_database("big", 3, 0, 200).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        assert_eq!(replicas_of(&cluster, "big").len(), 200);
        let per_node: Vec<usize> = {
            let mut counts = Vec::new();
            for slot in &cluster.data_nodes {
                counts.push(slot.mem.list().await.expect("list").len());
            }
            counts
        };
        assert_eq!(per_node, vec![200, 200, 200]);
        let id = cluster
            .leader()
            .delete_database(db("big"), None)
            .await
            .expect("submitted");
        let info = cluster.wait(id, Duration::from_secs(120)).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        cluster.assert_database_gone_without_leftovers("big").await;
        cluster.shutdown().await;
    });
}

#[test]
fn a_datanode_that_stops_heartbeating_gets_no_new_replicas() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let status_of = |i: u32| {
            cluster
                .leader()
                .list_data_nodes()
                .into_iter()
                .find(|n| n.location.id == DataNodeId(i))
                .map(|n| n.status)
        };
        cluster.stop_data_node(2);
        cluster
            .eventually("dn-2 to be marked unknown", LIMIT, || {
                status_of(2) == Some(shoal_core::state::DataNodeStatus::Unknown)
            })
            .await;
        let info = cluster.create_database("placed", 2, 0, 4).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        for (region, replicas) in replicas_of(&cluster, "placed") {
            assert_eq!(replicas, vec![DataNodeId(0), DataNodeId(1)], "{region}");
        }
        cluster.start_data_node(2).await;
        cluster
            .eventually("dn-2 to run again", LIMIT, || {
                status_of(2) == Some(shoal_core::state::DataNodeStatus::Running)
            })
            .await;
        cluster.shutdown().await;
    });
}

#[test]
fn admin_requests_are_refused_with_clear_errors() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions {
            delete_rate: Some(64 * 1024),
            ..ClusterOptions::default()
        })
        .await;
        cluster.create_database("taken", 3, 0, 2).await;
        cluster.load("taken", 64 * 1024).await;
        let leader = cluster.leader();
        let schema = shoal_core::model::DatabaseSchema {
            name: db("taken"),
            schema_replication_factor: shoal_core::model::ReplicationFactor::new(3).unwrap(),
            data_replication_factor: shoal_core::model::ReplicationFactor::new(3).unwrap(),
        };
        let again = leader
            .create_database(schema, 0, 1, None)
            .await
            .unwrap_err();
        assert_eq!(again.to_string(), "database taken already exists");
        let missing = leader
            .delete_database(db("nothere"), None)
            .await
            .unwrap_err();
        assert_eq!(missing.to_string(), "database nothere does not exist");

        // While the deletion runs, new region groups are refused, naming the reason.
        let id = leader
            .delete_database(db("taken"), None)
            .await
            .expect("submitted");
        cluster
            .eventually("the database to be marked deleting", LIMIT, || {
                leader.list_databases().iter().any(|d| d.entry.deleting)
            })
            .await;
        let refused = leader
            .create_region_groups(db("taken"), 0, 1)
            .await
            .unwrap_err();
        assert_eq!(refused.to_string(), "database taken is being deleted");
        let info = cluster.wait(id, LIMIT).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        cluster
            .assert_database_gone_without_leftovers("taken")
            .await;
        cluster.shutdown().await;
    });
}
