//! Region migration, DataNode removal and orphan reconciliation on an in-process cluster.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use shoal_core::api::{DataNodeApi, RegionDigest};
use shoal_core::confignode::orphans::OrphanPolicy;
use shoal_core::model::{DataNodeId, RegionId, RegionKind};
use shoal_core::procedure::ProcedureView;
use shoal_core::state::DataNodeStatus;
use shoal_core::storage::{RegionConfig, RegionStore};
use shoal_tests::cluster::{ClusterOptions, TestCluster, db, fast_config, replicas_of};

const LIMIT: Duration = Duration::from_secs(60);

fn options(data_nodes: usize) -> ClusterOptions {
    ClusterOptions {
        data_nodes,
        rpc_timeout: Duration::from_secs(2),
        delete_rate: None,
        config: fast_config(),
    }
}

/// Each replica's digest, by region and DataNode.
async fn digests(cluster: &TestCluster, name: &str) -> BTreeMap<RegionId, Vec<RegionDigest>> {
    let mut out = BTreeMap::new();
    for (region, replicas) in replicas_of(cluster, name) {
        let mut list = Vec::new();
        for node in replicas {
            let dn = cluster.data_nodes[node.0 as usize]
                .node()
                .expect("replica's DataNode is up");
            list.push(dn.region_digest(region, None).await.expect("digest"));
        }
        out.insert(region, list);
    }
    out
}

/// Polls the published groups every few ms while it runs; records the fewest replicas any
/// group of `name` had.
fn watch_replica_counts(
    cluster: &Arc<TestCluster>,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> smol::Task<usize> {
    let cluster = cluster.clone();
    smol::spawn(async move {
        let mut fewest = usize::MAX;
        while !stop.load(Ordering::SeqCst) {
            for (_, replicas) in replicas_of(&cluster, name) {
                fewest = fewest.min(replicas.len());
            }
            smol::Timer::after(Duration::from_millis(2)).await;
        }
        fewest
    })
}

async fn assert_no_task_ran_twice(cluster: &TestCluster) {
    for slot in &cluster.data_nodes {
        assert!(
            slot.task_ids_accepted_twice().await.is_empty(),
            "{} accepted a task id twice",
            slot.address
        );
    }
}

#[test]
fn removing_a_live_datanode_migrates_every_replica_and_never_drops_below_rf() {
    smol::block_on(async {
        let cluster = Arc::new(TestCluster::start(options(4)).await);
        let created = cluster.create_database("metrics", 3, 0, 16).await;
        assert_eq!(created.status, ProcedureView::Succeeded, "{created:?}");
        cluster.load("metrics", 64 * 1024).await;
        let before = digests(&cluster, "metrics").await;
        let leaving = DataNodeId(1);
        let held = replicas_of(&cluster, "metrics")
            .iter()
            .filter(|(_, r)| r.contains(&leaving))
            .count();
        assert!(held > 0, "placement put no replica on {leaving}");

        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_replica_counts(&cluster, "metrics", stop.clone());
        let id = cluster
            .leader()
            .remove_data_node(leaving, false, None)
            .await
            .expect("removal submitted");
        let done = cluster.wait(id, LIMIT).await;
        stop.store(true, Ordering::SeqCst);
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        assert_eq!(watcher.await, 3, "a group had fewer replicas than its RF");

        let leader = cluster.leader();
        assert!(
            leader
                .list_data_nodes()
                .iter()
                .all(|n| n.location.id != leaving)
        );
        let after = digests(&cluster, "metrics").await;
        for (region, replicas) in replicas_of(&cluster, "metrics") {
            assert_eq!(replicas.len(), 3, "{region}: {replicas:?}");
            assert!(!replicas.contains(&leaving));
            // Every replica is byte-identical to what the group held before the move.
            let digest = before[&region][0];
            assert!(after[&region].iter().all(|d| *d == digest), "{region}");
        }
        let slot = &cluster.data_nodes[1];
        assert!(
            slot.mem.list().await.expect("list").is_empty(),
            "old replicas left"
        );
        assert!(slot.mem.regions_being_deleted().is_empty(), "trash left");
        assert_eq!(slot.mem.total_bytes(), 0);
        assert!(cluster.unfinished_procedures().is_empty());
        assert_no_task_ran_twice(&cluster).await;
        cluster.shutdown().await;
    });
}

#[test]
fn a_migration_whose_stream_is_lost_mid_copy_resumes_and_converges() {
    smol::block_on(async {
        let cluster = TestCluster::start(options(4)).await;
        cluster.create_database("logs", 3, 0, 1).await;
        cluster.load("logs", 256 * 1024).await;
        let (region, replicas) = replicas_of(&cluster, "logs").remove(0);
        let from = replicas[0];
        let to = (0..4)
            .map(DataNodeId)
            .find(|n| !replicas.contains(n))
            .expect("a free DataNode");
        // The target's reads from the source lose their replies for a while.
        let (target, source) = (
            cluster.data_nodes[to.0 as usize].address.clone(),
            cluster.data_nodes[from.0 as usize].address.clone(),
        );
        cluster.network.update_link(&target, &source, |link| {
            link.timeout = Some(Duration::from_millis(100));
            link.drop_replies_of.insert("read_region", 3);
        });
        let id = cluster
            .leader()
            .migrate_region(region, from, Some(to), None)
            .await
            .expect("migration submitted");
        let done = cluster.wait(id, LIMIT).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        assert_eq!(cluster.network.stats(&target, &source).dropped_replies, 3);
        let now = replicas_of(&cluster, "logs").remove(0).1;
        assert!(now.contains(&to) && !now.contains(&from), "{now:?}");
        let digests = digests(&cluster, "logs").await;
        assert!(digests[&region].iter().all(|d| d.len == 256 * 1024));
        assert!(digests[&region].windows(2).all(|w| w[0] == w[1]));
        assert_no_task_ran_twice(&cluster).await;
        cluster.shutdown().await;
    });
}

#[test]
fn forced_removal_of_a_dead_datanode_re_replicates_and_shows_abandoned_deletions() {
    smol::block_on(async {
        let cluster = TestCluster::start(options(4)).await;
        cluster.create_database("keep", 3, 0, 6).await;
        cluster.create_database("gone", 3, 0, 2).await;
        cluster.load("keep", 16 * 1024).await;
        let dead = DataNodeId(2);
        cluster.stop_data_node(2);
        // A deletion that must delete on the dead node waits for it, visibly.
        let leader = cluster.leader();
        let deletion = leader
            .delete_database(db("gone"), None)
            .await
            .expect("deletion submitted");
        smol::Timer::after(Duration::from_millis(300)).await;
        let waiting = leader.get_procedure(deletion).expect("recorded").status;
        assert!(
            !matches!(waiting, ProcedureView::Succeeded | ProcedureView::Failed),
            "the deletion cannot finish while the dead node holds replicas: {waiting:?}"
        );
        // A plain removal is refused up front for no reason here, but would wait forever:
        // the operator forces it.
        let id = leader
            .remove_data_node(dead, true, None)
            .await
            .expect("forced removal submitted");
        let done = cluster.wait(id, LIMIT).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        let deleted = cluster.wait(deletion, LIMIT).await;
        assert_eq!(deleted.status, ProcedureView::Succeeded, "{deleted:?}");

        for (region, replicas) in replicas_of(&cluster, "keep") {
            assert_eq!(
                replicas.len(),
                3,
                "{region} is not back at RF: {replicas:?}"
            );
            assert!(!replicas.contains(&dead));
        }
        let digests = digests(&cluster, "keep").await;
        assert!(digests.values().all(|d| d.windows(2).all(|w| w[0] == w[1])));
        // The abandonment is on record and shown, never as a deletion.
        let notes = leader.procedure_notes(id);
        assert!(
            !notes.is_empty() && notes.iter().all(|n| n.contains("abandoned")),
            "{notes:?}"
        );
        let children = leader.get_procedure(deletion).expect("recorded").children;
        let child_notes: Vec<String> = children
            .iter()
            .flat_map(|c| leader.procedure_notes(*c))
            .collect();
        assert!(
            child_notes
                .iter()
                .any(|n| n.contains("deletion of") && n.contains("not done")),
            "{child_notes:?}"
        );
        assert!(
            leader
                .list_data_nodes()
                .iter()
                .all(|n| n.location.id != dead)
        );
        assert!(cluster.unfinished_procedures().is_empty());
        cluster.shutdown().await;
    });
}

#[test]
fn removing_the_last_replica_of_a_group_is_refused_unless_it_is_being_deleted() {
    smol::block_on(async {
        let cluster = TestCluster::start(options(2)).await;
        cluster.create_database("solo", 1, 0, 2).await;
        let (_, replicas) = replicas_of(&cluster, "solo").remove(0);
        let refused = cluster
            .leader()
            .remove_data_node(replicas[0], true, None)
            .await;
        let message = refused.expect_err("refused").to_string();
        assert!(message.contains("last replica"), "{message}");
        assert!(cluster.unfinished_procedures().is_empty());
        let status = cluster
            .leader()
            .list_data_nodes()
            .into_iter()
            .find(|n| n.location.id == replicas[0])
            .expect("still registered")
            .status;
        assert_eq!(status, DataNodeStatus::Running, "nothing was marked");
        cluster.shutdown().await;
    });
}

#[test]
fn a_planted_region_is_reported_then_deleted_after_the_grace_period() {
    smol::block_on(async {
        let mut opts = options(3);
        opts.config.orphans = OrphanPolicy {
            grace: Duration::from_millis(400),
            remove: true,
        };
        let cluster = TestCluster::start(opts).await;
        cluster.create_database("metrics", 2, 0, 2).await;
        let planted = RegionId::new(RegionKind::Data, 900);
        let slot = &cluster.data_nodes[0];
        slot.mem
            .create(&RegionConfig {
                region: planted,
                database: db("ghost"),
                peers: vec![DataNodeId(0)],
            })
            .await
            .expect("plant");
        slot.mem
            .append(planted, &[5; 4096])
            .await
            .expect("plant data");
        let leader = cluster.leader();
        cluster
            .eventually("the planted region to be listed", LIMIT, || {
                leader.list_orphans().is_ok_and(|o| {
                    o.iter().any(|o| {
                        o.region == planted && o.data_node == DataNodeId(0) && o.bytes == 4096
                    })
                })
            })
            .await;
        let size = || smol::block_on(slot.mem.size(planted)).expect("size");
        assert_eq!(
            size(),
            Some(4096),
            "nothing is deleted before the grace period"
        );
        cluster
            .eventually("the planted region to be deleted", LIMIT, || {
                size().is_none()
            })
            .await;
        assert!(slot.mem.regions_being_deleted().is_empty());
        let removals: Vec<_> = leader
            .list_procedures()
            .into_iter()
            .filter(|p| p.type_name == "RemoveOrphanRegion")
            .collect();
        assert_eq!(removals.len(), 1, "{removals:?}");
        // Every real replica is untouched.
        for (region, replicas) in replicas_of(&cluster, "metrics") {
            for node in replicas {
                let store = &cluster.data_nodes[node.0 as usize].mem;
                assert!(store.size(region).await.expect("size").is_some());
            }
        }
        cluster.shutdown().await;
    });
}

#[test]
fn with_no_grace_at_all_no_replica_being_created_or_migrated_is_taken_for_an_orphan() {
    smol::block_on(async {
        let mut opts = options(4);
        opts.config.orphans = OrphanPolicy {
            grace: Duration::ZERO,
            remove: true,
        };
        opts.config.heartbeat_interval = Duration::from_millis(5);
        let cluster = TestCluster::start(opts).await;
        // Creates are slowed so that heartbeats see replicas whose create is in flight.
        for slot in &cluster.data_nodes {
            cluster.network.update_link("cn-0", &slot.address, |link| {
                link.latency = Duration::from_millis(3);
            });
        }
        let rounds = AtomicUsize::new(0);
        for round in 0..3 {
            let name = format!("db{round}");
            let info = cluster.create_database(&name, 3, 1, 6).await;
            assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
            cluster.load(&name, 8 * 1024).await;
            let (region, replicas) = replicas_of(&cluster, &name).remove(0);
            let id = cluster
                .leader()
                .migrate_region(region, replicas[0], None, None)
                .await
                .expect("migration submitted");
            cluster.wait(id, LIMIT).await;
            rounds.fetch_add(1, Ordering::SeqCst);
        }
        smol::Timer::after(Duration::from_millis(100)).await;
        let leader = cluster.leader();
        assert!(
            leader
                .list_procedures()
                .iter()
                .all(|p| p.type_name != "RemoveOrphanRegion"),
            "a replica that was accounted for was taken for an orphan"
        );
        for round in 0..3 {
            for (region, replicas) in replicas_of(&cluster, &format!("db{round}")) {
                assert_eq!(replicas.len(), 3);
                for node in replicas {
                    let store = &cluster.data_nodes[node.0 as usize].mem;
                    assert!(
                        store.size(region).await.expect("size").is_some(),
                        "{region}"
                    );
                }
            }
        }
        cluster.shutdown().await;
    });
}

#[test]
fn a_datanode_that_moved_to_a_new_address_is_migrated_to_and_from() {
    smol::block_on(async {
        let cluster = TestCluster::start(options(3)).await;
        cluster.create_database("moved", 2, 0, 1).await;
        cluster.load("moved", 32 * 1024).await;
        let (region, replicas) = replicas_of(&cluster, "moved").remove(0);
        let to = (0..3)
            .map(DataNodeId)
            .find(|n| !replicas.contains(n))
            .expect("free node");
        cluster
            .move_data_node(to.0 as usize, "127.0.0.1:27999")
            .await;
        let id = cluster
            .leader()
            .migrate_region(region, replicas[0], Some(to), None)
            .await
            .expect("migration submitted");
        let done = cluster.wait(id, LIMIT).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        let digests = digests(&cluster, "moved").await;
        assert!(digests[&region].windows(2).all(|w| w[0] == w[1]));
        cluster.shutdown().await;
    });
}
