//! "Every replica accounted for": one regression test per rule of issue 10 that an
//! in-process cluster can show. Each scenario was found from outside (review, chaos, a
//! foreign client) and failed on the code before the rule was built.

use std::time::Duration;

use shoal_core::api::{ApiError, DataNodeApi};
use shoal_core::confignode::ConfigNodeError;
use shoal_core::consensus::Consensus;
use shoal_core::model::{DataNodeId, DatabaseSchema, Epoch, RegionReplicaSet, ReplicationFactor};
use shoal_core::plan::{ConfigPlan, NewRegionMaintainTask, OfferRegionMaintainTasks};
use shoal_core::procedure::{ProcedureType, ProcedureView, encode_data};
use shoal_core::procedures::{
    CreateRegionGroupsData, CreateRegionGroupsProcedure, CreateRegionGroupsState, PlannedGroup,
};
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

fn schema(name: &str, rf: u8) -> DatabaseSchema {
    DatabaseSchema {
        name: db(name),
        schema_replication_factor: ReplicationFactor::new(rf).expect("rf"),
        data_replication_factor: ReplicationFactor::new(rf).expect("rf"),
    }
}

async fn replicas_on(cluster: &TestCluster, node: usize) -> usize {
    cluster.data_nodes[node]
        .mem
        .list()
        .await
        .expect("list")
        .len()
}

/// Rule 1: every DataNode a create was sent to is in the group's footprint, and a removal
/// deletes on the whole footprint — including a DataNode whose create ran but whose reply
/// was lost, whose queued create the deletion dropped.
#[test]
fn deleting_a_database_deletes_replicas_whose_create_reply_was_lost() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let dn2 = cluster.data_nodes[2].address.clone();
        cluster.network.update_link("cn-0", &dn2, |l| {
            l.drop_replies_of.insert("create_region", u32::MAX);
        });
        let info = cluster.create_database("lost", 3, 0, 2).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        assert_eq!(replicas_on(&cluster, 2).await, 2, "the creates ran on dn-2");
        for (_, replicas) in replicas_of(&cluster, "lost") {
            assert!(
                !replicas.contains(&DataNodeId(2)),
                "unconfirmed: not published"
            );
        }
        cluster.network.partition("cn-0", &dn2);

        let delete = cluster
            .leader()
            .delete_database(db("lost"), None)
            .await
            .expect("submitted");
        smol::Timer::after(Duration::from_millis(800)).await;
        let waiting = cluster.leader().get_procedure(delete).expect("recorded");
        assert_ne!(
            waiting.status,
            ProcedureView::Succeeded,
            "a deletion cannot be done while dn-2 may hold replicas: {waiting:?}"
        );

        cluster.network.heal("cn-0", &dn2);
        cluster.network.update_link("cn-0", &dn2, |l| {
            l.drop_replies_of.clear();
        });
        let info = cluster.wait(delete, LIMIT).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        cluster.assert_database_gone_without_leftovers("lost").await;
        cluster.shutdown().await;
    });
}

/// Rule 2: a Publish that runs again (the ConfigNode died after it committed) finds its
/// group completed by the region cleaner meanwhile; it must not take that for a refusal and
/// tear the serving group down.
#[test]
fn a_rerun_publish_never_tears_down_a_group_the_cleaner_completed() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.data_nodes[2]
            .store
            .fail_next(StoreOp::Create, u32::MAX);
        let info = cluster.create_database("kept", 3, 0, 1).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        let (region, replicas) = replicas_of(&cluster, "kept").remove(0);
        assert_eq!(replicas, vec![DataNodeId(0), DataNodeId(1)]);
        cluster.load("kept", 4096).await;
        // The cleaner completes the missing replica.
        cluster.data_nodes[2].store.fail_next(StoreOp::Create, 0);
        cluster
            .eventually("the cleaner to complete the group", LIMIT, || {
                queue_len(&cluster) == 0
            })
            .await;
        let bytes_before = cluster.region_bytes();

        // Publish runs again from its persisted data, as after a crash right after it
        // committed.
        let data = CreateRegionGroupsData {
            state: CreateRegionGroupsState::Publish,
            database: db("kept"),
            schema_groups: 0,
            data_groups: 1,
            groups: vec![PlannedGroup {
                region,
                replicas: vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
                created: vec![DataNodeId(0), DataNodeId(1)],
            }],
            torn_down: Vec::new(),
            new_database: None,
            failure: None,
        };
        let rerun = CreateRegionGroupsProcedure::decode(&encode_data(&data).expect("encodes"))
            .expect("decodes");
        let id = cluster
            .leader()
            .executor()
            .submit(Box::new(rerun), None)
            .await
            .expect("submitted");
        let info = cluster.wait(id, LIMIT).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        let (_, replicas) = replicas_of(&cluster, "kept").remove(0);
        assert_eq!(
            replicas,
            vec![DataNodeId(0), DataNodeId(1), DataNodeId(2)],
            "the serving group keeps every replica"
        );
        assert_eq!(
            cluster.region_bytes(),
            bytes_before,
            "no serving byte deleted"
        );
        for node in 0..3 {
            assert_eq!(cluster.data_nodes[node].store.deletions_executed(region), 0);
        }
        cluster.shutdown().await;
    });
}

/// Rule 5: a DataNode that is unreachable for a moment when its replica is created (it is
/// restarting) gets its replica within the creating step, not a queued repair.
#[test]
fn a_replica_create_that_finds_its_datanode_unreachable_is_retried_within_the_step() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.stop_data_node(2);
        let leader = cluster.leader();
        let create = leader.create_database(schema("bounce", 3), 0, 2, None);
        let restart = async {
            smol::Timer::after(Duration::from_millis(150)).await;
            cluster.start_data_node(2).await;
        };
        let (id, ()) = futures_lite::future::zip(create, restart).await;
        let info = cluster.wait(id.expect("submitted"), LIMIT).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        for (region, replicas) in replicas_of(&cluster, "bounce") {
            assert_eq!(replicas.len(), 3, "{region} published with every replica");
        }
        assert_eq!(queue_len(&cluster), 0, "nothing left for the cleaner");
        cluster.shutdown().await;
    });
}

/// Rule 7: queued creates name a DataNode id; the cleaner dials the address the DataNode
/// registered last.
#[test]
fn a_datanode_reregistered_at_a_new_address_gets_its_missing_replica() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.data_nodes[2]
            .store
            .fail_next(StoreOp::Create, u32::MAX);
        let info = cluster.create_database("moved", 3, 0, 2).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        assert_eq!(queue_len(&cluster), 2);
        cluster.data_nodes[2].store.fail_next(StoreOp::Create, 0);
        cluster.move_data_node(2, "127.0.0.1:27002").await;
        cluster
            .eventually("the missing replicas on the moved DataNode", LIMIT, || {
                queue_len(&cluster) == 0
            })
            .await;
        assert_eq!(replicas_on(&cluster, 2).await, 2);
        for (region, replicas) in replicas_of(&cluster, "moved") {
            assert_eq!(replicas.len(), 3, "{region}");
        }
        cluster.shutdown().await;
    });
}

/// Rule 8: a legacy per-replica deletion drops only the queued creates of the replica it
/// removes; the group's other missing replica is still created.
#[test]
fn a_legacy_replica_deletion_keeps_the_groups_other_queued_creates() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        cluster.data_nodes[2]
            .store
            .fail_next(StoreOp::Create, u32::MAX);
        let info = cluster.create_database("legacy", 3, 0, 1).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        let (region, replicas) = replicas_of(&cluster, "legacy").remove(0);
        assert_eq!(replicas, vec![DataNodeId(0), DataNodeId(1)]);
        let slot = cluster.leader_slot();
        let epoch = slot.consensus.leadership().get().epoch;
        let target = slot
            .consensus
            .state()
            .read(|s| s.data_nodes[&DataNodeId(1)].location.clone());
        // An old release's synchronous deletion of dn-1's replica, still pending.
        let offer = OfferRegionMaintainTasks {
            tasks: vec![NewRegionMaintainTask {
                kind: RegionMaintainKind::LegacyDelete,
                database: db("legacy"),
                region: RegionReplicaSet::new(region, replicas.clone()),
                target,
            }],
        };
        slot.consensus
            .propose(epoch, ConfigPlan::OfferRegionMaintainTasks(offer))
            .await
            .expect("committed")
            .expect("applied");
        cluster
            .eventually("the legacy deletion to be finished", LIMIT, || {
                slot.consensus
                    .state()
                    .read(|s| s.legacy_deletions.is_empty())
                    && cluster.unfinished_procedures().is_empty()
            })
            .await;
        cluster.data_nodes[2].store.fail_next(StoreOp::Create, 0);
        cluster
            .eventually("dn-2's replica to be created", LIMIT, || {
                replicas_of(&cluster, "legacy")
                    .first()
                    .is_some_and(|(_, r)| r == &vec![DataNodeId(0), DataNodeId(2)])
            })
            .await;
        assert_eq!(queue_len(&cluster), 0);
        cluster.shutdown().await;
    });
}

/// Rule 9: what can be judged at admission is refused up front: no procedure recorded, no
/// database left behind.
#[test]
fn requests_that_cannot_succeed_are_refused_up_front_and_leave_nothing() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let leader = cluster.leader();
        let key = || Some(format!("key-{}", fastrand_key()));
        let too_wide = leader.create_database(schema("wide", 4), 0, 1, key()).await;
        assert!(
            matches!(&too_wide, Err(ConfigNodeError::Invalid(m)) if m.contains("4")),
            "{too_wide:?}"
        );
        let empty = leader
            .create_database(schema("empty", 1), 0, 0, key())
            .await;
        assert!(
            matches!(empty, Err(ConfigNodeError::Invalid(_))),
            "{empty:?}"
        );
        let unknown = leader.delete_database(db("nope"), key()).await;
        assert!(
            matches!(unknown, Err(ConfigNodeError::Rejected(_))),
            "{unknown:?}"
        );
        assert!(leader.list_procedures().is_empty(), "no procedure recorded");
        assert!(leader.list_databases().is_empty(), "no database left");

        // An existing name is refused, even with a request key, unless that key submitted
        // the first creation (a retry after a lost reply).
        let first_key = key();
        let first = leader
            .create_database(schema("taken", 3), 0, 1, first_key.clone())
            .await
            .expect("created");
        cluster.wait(first, LIMIT).await;
        let again = leader
            .create_database(schema("taken", 3), 0, 1, first_key)
            .await;
        assert_eq!(again, Ok(first), "the retry finds its own procedure");
        let other = leader
            .create_database(schema("taken", 3), 0, 1, key())
            .await;
        assert!(
            matches!(other, Err(ConfigNodeError::Rejected(_))),
            "{other:?}"
        );
        assert_eq!(leader.list_procedures().len(), 1);
        cluster.shutdown().await;
    });
}

/// Rule 9: a creation that fails before it publishes anything (here: it cannot be placed,
/// because it bypassed admission) drops the database it created.
#[test]
fn a_creation_that_fails_before_publishing_drops_its_database() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let leader = cluster.leader();
        let procedure = CreateRegionGroupsProcedure::new_database(schema("unplaced", 5), 0, 1);
        let id = leader
            .executor()
            .submit(Box::new(procedure), None)
            .await
            .expect("submitted");
        let info = cluster.wait(id, LIMIT).await;
        assert_eq!(info.status, ProcedureView::Failed, "{info:?}");
        assert!(
            leader.list_databases().is_empty(),
            "the failed creation left its database: {:?}",
            leader.list_databases()
        );
        cluster.shutdown().await;
    });
}

/// Rule 11: a DataNode answer that no retry can change ends the removal with the reason,
/// instead of retrying it forever.
#[test]
fn a_refused_task_poll_fails_the_removal_with_the_reason() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let info = cluster.create_database("refusing", 1, 0, 1).await;
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        for slot in &cluster.data_nodes {
            cluster.network.update_link("cn-0", &slot.address, |l| {
                l.answer_of.insert(
                    "task_result",
                    ApiError::Refused("task ids are u32 here".into()),
                );
            });
        }
        let id = cluster
            .leader()
            .delete_database(db("refusing"), None)
            .await
            .expect("submitted");
        let info = cluster.wait(id, Duration::from_secs(10)).await;
        assert_eq!(info.status, ProcedureView::Failed, "{info:?}");
        let removal = cluster
            .leader()
            .list_procedures()
            .into_iter()
            .find(|p| p.type_name == "RemoveRegionGroup")
            .expect("a removal ran");
        assert_eq!(removal.status, ProcedureView::Failed, "{removal:?}");
        let error = removal.last_error.unwrap_or_default();
        assert!(error.contains("task ids are u32 here"), "{error}");
        cluster.shutdown().await;
    });
}

/// Rule 12: a DataNode fenced by a huge epoch (one authenticated call can do it) makes the
/// leader claim a higher epoch instead of staying fenced out for good.
#[test]
fn a_datanode_fenced_by_a_huge_epoch_is_healed_by_a_higher_leader_epoch() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let dn0 = cluster.data_nodes[0].node().expect("up");
        dn0.heartbeat(Epoch(1_000_000)).await.expect("heartbeat");
        // The leader may already have met the fence and raised dn0 past it.
        assert!(dn0.highest_epoch() >= Epoch(1_000_000));
        let slot = cluster.leader_slot();
        cluster
            .eventually(
                "the leader to claim an epoch above the fence",
                LIMIT,
                || slot.consensus.leadership().get().epoch > Epoch(1_000_000),
            )
            .await;
        // Raising the epoch is a campaign: the leader's session restarts, and a submission
        // in that window is answered NotLeader (retryable), which a client retries.
        let leader = cluster.leader();
        let id = loop {
            leader.executor().wait_running().await;
            match leader
                .create_database(schema("healed", 3), 0, 2, Some("healed-key".into()))
                .await
            {
                Ok(id) => break id,
                Err(e) if e.is_retryable() => smol::Timer::after(Duration::from_millis(20)).await,
                Err(e) => panic!("create refused: {e}"),
            };
        };
        let info = leader.wait_procedure(id).await.expect("create finished");
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        for (region, replicas) in replicas_of(&cluster, "healed") {
            assert_eq!(replicas.len(), 3, "{region}");
        }
        assert_eq!(queue_len(&cluster), 0);
        cluster.shutdown().await;
    });
}

/// Rule 11: a ConfigNode whose log failed for good (a poisoned file log) steps down and
/// says so, instead of retrying forever; its process then exits non-zero.
#[test]
fn a_confignode_whose_log_failed_steps_down_and_reports_it() {
    smol::block_on(async {
        let cluster = TestCluster::start(ClusterOptions::default()).await;
        let leader = cluster.leader();
        cluster.log.poison();
        let create = leader.create_database(schema("never", 3), 0, 1, None).await;
        assert!(create.is_err(), "nothing can be committed: {create:?}");
        let failure = futures_lite::future::or(async { Some(leader.failed().await) }, async {
            smol::Timer::after(Duration::from_secs(10)).await;
            None
        })
        .await
        .expect("the failure is reported");
        assert!(failure.is_fatal(), "{failure}");
        assert!(!leader.consensus().leadership().get().is_leader);
        assert!(!leader.executor().is_running(), "the executor stopped");
        cluster.shutdown().await;
    });
}

fn fastrand_key() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}
