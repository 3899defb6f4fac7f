//! Faults on clusters with a 3-ConfigNode Raft group: a leader partitioned into a minority,
//! a follower that catches up from a snapshot, and membership changes while a deletion runs.
//! Every scenario ends with the database gone, nothing left on any DataNode, each replica
//! deleted once and no task id accepted twice.

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_consensus_raft::{NodeId, RaftConsensusError};
use shoal_core::api::{ApiError, DataNodeApi, MaintainTask, MaintainTaskKind, SubmitOutcome};
use shoal_core::consensus::{Consensus, ConsensusError};
use shoal_core::model::{ProcedureId, RegionId, RegionKind, TaskId};
use shoal_core::plan::{ConfigPlan, RegisterDataNode};
use shoal_core::procedure::{ProcedureInfo, ProcedureView};
use shoal_core::storage::RegionStore;
use shoal_tests::cluster::{ClusterOptions, db};
use shoal_tests::raft_cluster::{RaftCluster, RaftClusterOptions, is_finished, member_address};

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Deletions slow enough to be caught mid-way: 64 KiB/s, 32 KiB per replica.
fn slow_deletes() -> RaftClusterOptions {
    RaftClusterOptions {
        cluster: ClusterOptions {
            delete_rate: Some(64 * 1024),
            ..ClusterOptions::default()
        },
        ..RaftClusterOptions::default()
    }
}

const REPLICA_BYTES: usize = 32 * 1024;
const PATIENCE: Duration = Duration::from_secs(30);

/// Creates `name` (1 schema + 2 data groups, RF 3) and loads every replica.
async fn create_loaded(cluster: &RaftCluster, name: &str) {
    let created = cluster.create_database(name, 3, 1, 2).await;
    assert_eq!(created.status, ProcedureView::Succeeded, "{created:?}");
    let leader = cluster.leader().await;
    for (_, group) in leader.node.list_region_groups(Some(&db(name))) {
        for node in &group.replicas {
            cluster.data_nodes[node.0 as usize]
                .store
                .append(group.region, &vec![7u8; REPLICA_BYTES])
                .await
                .expect("load");
        }
    }
}

/// Every region ever created in the cluster (by the leader's counter).
fn all_regions(
    cluster: &RaftCluster,
    leader_state: &shoal_core::state::ClusterState,
) -> Vec<RegionId> {
    let _ = cluster;
    (0..leader_state.next_region_id)
        .flat_map(|id| {
            [
                RegionId::new(RegionKind::Schema, id),
                RegionId::new(RegionKind::Data, id),
            ]
        })
        .collect()
}

/// The end state of every scenario: `name` gone on the leader, nothing on any DataNode,
/// every procedure finished, each replica deleted once, no task id accepted twice.
async fn assert_gone_once(cluster: &RaftCluster, name: &str) {
    let leader = cluster.leader().await;
    cluster
        .eventually("nothing left on the DataNodes", PATIENCE, || {
            cluster.region_bytes() == 0 && cluster.running_tasks() == 0
        })
        .await;
    assert!(
        leader
            .node
            .list_databases()
            .iter()
            .all(|d| d.entry.schema.name.as_str() != name),
        "{name} still listed"
    );
    assert_eq!(cluster.replica_count().await, 0, "a replica is left");
    let unfinished: Vec<ProcedureInfo> = leader
        .node
        .list_procedures()
        .into_iter()
        .filter(|p| !is_finished(p))
        .collect();
    assert!(unfinished.is_empty(), "{unfinished:?}");
    let state = leader.consensus.state().snapshot();
    for region in all_regions(cluster, &state) {
        let deletions = cluster.deletions(region);
        assert!(
            deletions.iter().all(|n| *n <= 1),
            "{region} deleted more than once somewhere: {deletions:?}"
        );
    }
    assert_eq!(cluster.task_ids_accepted_twice().await, Vec::new());
}

#[test]
fn a_leader_partitioned_into_a_minority_commits_nothing_is_fenced_and_reports_nothing_uncommitted()
{
    init_logs();
    smol::block_on(async {
        let cluster = RaftCluster::start(slow_deletes()).await;
        create_loaded(&cluster, "part").await;
        let old = cluster.leader().await;
        let old_epoch = old.consensus.leadership().get().epoch;
        let root = old
            .node
            .delete_database(db("part"), Some("delete-part".into()))
            .await
            .expect("delete submitted");
        cluster
            .eventually("a deletion running on a DataNode", PATIENCE, || {
                cluster.running_tasks() > 0
            })
            .await;

        cluster.isolate(old.id);
        // What the isolated leader reports finished while it is cut off, and what it proposes.
        let mut reported: BTreeMap<ProcedureId, ProcedureView> = BTreeMap::new();
        let minority_proposal = {
            let raft = old.raft.clone();
            smol::spawn(async move {
                raft.propose(
                    old_epoch,
                    ConfigPlan::RegisterDataNode(RegisterDataNode {
                        known_id: None,
                        address: "minority:1".into(),
                    }),
                )
                .await
            })
        };
        let new = cluster.leader_above(old_epoch).await;
        assert_ne!(new.id, old.id);
        let new_epoch = new.consensus.leadership().get().epoch;
        cluster
            .eventually("the isolated leader to step down", PATIENCE, || {
                for p in old.node.list_procedures() {
                    if is_finished(&p) {
                        reported.insert(p.id, p.status);
                    }
                }
                !old.consensus.leadership().get().is_leader
            })
            .await;

        // Its proposals fail: no quorum answers them, and a stale epoch is refused at once.
        let outcome = minority_proposal.await;
        assert!(
            matches!(
                outcome,
                Err(ConsensusError::NotLeader | ConsensusError::OutcomeUnknown(_))
            ),
            "a minority proposal is never reported committed: {outcome:?}"
        );
        let late = old
            .raft
            .propose(
                old_epoch,
                ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id: None,
                    address: "late:1".into(),
                }),
            )
            .await;
        assert!(late.is_err(), "{late:?}");

        // Its DataNode calls are fenced: a DataNode that heard the new leader refuses the old
        // epoch (the new leader's heartbeats reach every DataNode within a round).
        cluster
            .eventually("every DataNode to hear the new leader", PATIENCE, || {
                cluster
                    .data_nodes
                    .iter()
                    .filter_map(|s| s.node())
                    .all(|n| n.highest_epoch() >= new_epoch)
            })
            .await;
        for slot in &cluster.data_nodes {
            let dn = cluster
                .network
                .client(&format!("cn-{}", old.id), &slot.address);
            let probe = dn
                .submit_task(
                    old_epoch,
                    MaintainTask {
                        task_id: TaskId(u64::MAX - 1),
                        kind: MaintainTaskKind::DeleteRegionPeer {
                            region: RegionId::new(RegionKind::Data, 9_999),
                            generation: 0,
                        },
                    },
                )
                .await;
            match probe {
                Err(ApiError::StaleLeader { request, seen }) => {
                    assert_eq!(request, old_epoch);
                    assert!(seen >= new_epoch, "{seen} below {new_epoch}");
                }
                Ok(SubmitOutcome::Accepted) => panic!("a stale leader's task was accepted"),
                other => panic!("the old leader's call was not fenced: {other:?}"),
            }
        }

        // The majority finishes the deletion.
        let done = cluster.wait_finished(root, PATIENCE).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        cluster.heal();
        cluster
            .eventually("the old leader to catch up", PATIENCE, || {
                old.consensus.state().snapshot() == new.consensus.state().snapshot()
            })
            .await;
        let state = new.consensus.state().snapshot();
        for (id, status) in &reported {
            let committed = state.procedures.get(id).map(|r| r.status);
            assert!(
                committed.is_some_and(|s| s.is_finished()),
                "the isolated leader reported {id} {status:?}, the majority has {committed:?}"
            );
        }
        assert!(
            state
                .data_nodes
                .values()
                .all(|n| !n.location.address.contains("minority")
                    && !n.location.address.contains("late")),
            "nothing proposed in the minority was applied"
        );
        assert_gone_once(&cluster, "part").await;
        cluster.shutdown().await;
    });
}

#[test]
fn a_follower_down_for_a_while_catches_up_from_a_snapshot_and_can_lead() {
    init_logs();
    smol::block_on(async {
        let cluster = RaftCluster::start(RaftClusterOptions::default()).await;
        let leader = cluster.leader().await;
        let lagging: NodeId = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader.id)
            .expect("a follower");
        cluster.kill(lagging).await;
        for name in ["snap_a", "snap_b"] {
            let created = cluster.create_database(name, 3, 1, 2).await;
            assert_eq!(created.status, ProcedureView::Succeeded);
        }
        let deleted = {
            let leader = cluster.leader().await;
            let id = leader
                .node
                .delete_database(db("snap_a"), None)
                .await
                .expect("delete");
            cluster.wait_finished(id, PATIENCE).await
        };
        assert_eq!(deleted.status, ProcedureView::Succeeded);
        // Everyone up snapshots and drops its log: the lagging follower can only catch up
        // from a snapshot.
        for member in cluster.members() {
            member.raft.take_snapshot().await.expect("snapshot");
            member.raft.purge_log().await.expect("purge");
        }
        let back = cluster.start_member(lagging).await;
        let leader = cluster.leader().await;
        cluster
            .eventually("the follower to catch up", PATIENCE, || {
                back.consensus.state().snapshot() == leader.consensus.state().snapshot()
            })
            .await;
        assert!(
            back.raft.metrics().snapshot.is_some(),
            "it installed the leader's snapshot"
        );
        // It can lead: kill the others' leader until it does, then delete through it.
        let epoch = leader.consensus.leadership().get().epoch;
        cluster.kill(leader.id).await;
        let next = cluster.leader_above(epoch).await;
        let id = next
            .node
            .delete_database(db("snap_b"), None)
            .await
            .expect("delete");
        let done = cluster.wait_finished(id, PATIENCE).await;
        assert_eq!(done.status, ProcedureView::Succeeded);
        cluster.start_member(leader.id).await;
        assert_gone_once(&cluster, "snap_b").await;
        cluster.shutdown().await;
    });
}

#[test]
fn membership_changes_while_a_deletion_runs_and_a_quorum_losing_change_is_refused() {
    init_logs();
    smol::block_on(async {
        let cluster = RaftCluster::start(RaftClusterOptions {
            confignodes: 4,
            first_members: Some(3),
            ..slow_deletes()
        })
        .await;
        create_loaded(&cluster, "member").await;
        let leader = cluster.leader().await;
        let root = leader
            .node
            .delete_database(db("member"), Some("delete-member".into()))
            .await
            .expect("delete submitted");
        cluster
            .eventually("a deletion running", PATIENCE, || {
                cluster.running_tasks() > 0
            })
            .await;
        // Add 4, then remove a follower, while the deletion runs.
        leader
            .raft
            .add_member(4, member_address(4))
            .await
            .expect("add 4");
        let removed: NodeId = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader.id)
            .expect("a follower");
        leader.raft.remove_member(removed).await.expect("remove");
        cluster.kill(removed).await;
        let voters = leader.raft.voters();
        assert_eq!(voters.len(), 3);
        assert!(voters.contains(&4) && !voters.contains(&removed));

        // With one of the remaining followers down, removing the other would leave two
        // voters, one of them down: refused, and nothing changes.
        let down = voters
            .iter()
            .copied()
            .find(|id| *id != leader.id)
            .expect("voter");
        let other = voters
            .iter()
            .copied()
            .find(|id| *id != leader.id && *id != down)
            .expect("voter");
        cluster.kill(down).await;
        smol::Timer::after(Duration::from_millis(400)).await;
        let refused = leader.raft.remove_member(other).await;
        assert!(
            matches!(refused, Err(RaftConsensusError::WouldLoseQuorum { .. })),
            "{refused:?}"
        );
        assert_eq!(leader.raft.voters(), voters, "nothing changed");
        cluster.start_member(down).await;

        let done = cluster.wait_finished(root, PATIENCE).await;
        assert_eq!(done.status, ProcedureView::Succeeded, "{done:?}");
        assert_gone_once(&cluster, "member").await;
        cluster.shutdown().await;
    });
}
