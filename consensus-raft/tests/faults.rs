//! Partitions, lagging followers and membership changes on in-process groups.

mod support;

use std::time::Duration;

use shoal_consensus_raft::{RaftConsensusError, RaftStores};
use shoal_core::consensus::{Consensus, ConsensusError};
use shoal_core::plan::ConfigPlan;
use support::{Group, addr, register, wait_for};

#[test]
fn partitioned_leader_fails_its_proposals_steps_down_and_converges_after_healing() {
    smol::block_on(async {
        let group = Group::memory(&[1, 2, 3]).await;
        let (old, old_epoch) = group.leader().await;
        for i in 0..2 {
            let r = group
                .node(old)
                .propose(old_epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        group.converged_on(old).await;

        group.net.isolate(old, [1, 2, 3]);
        let minority = group.node(old).clone();
        let in_minority =
            smol::spawn(
                async move { minority.propose(old_epoch, register("minority:7000")).await },
            );
        wait_for("the isolated leader to step down", || {
            !group.node(old).leadership().get().is_leader
        })
        .await;
        let (new, new_epoch) = group.new_leader(old, old_epoch).await;
        for i in 2..4 {
            let r = group
                .node(new)
                .propose(new_epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        let late = group
            .node(old)
            .propose(old_epoch, register("late:7000"))
            .await;
        assert!(late.is_err(), "a stepped-down leader refuses: {late:?}");

        group.net.heal();
        let outcome = in_minority.await;
        assert!(
            matches!(
                outcome,
                Err(ConsensusError::OutcomeUnknown(_) | ConsensusError::NotLeader)
            ),
            "a minority proposal is never reported applied: {outcome:?}"
        );
        group.converged_on(new).await;
        let state = group.state(old);
        assert_eq!(state.data_nodes.len(), 4);
        assert!(
            state
                .data_nodes
                .values()
                .all(|n| !n.location.address.starts_with("minority")
                    && !n.location.address.starts_with("late")),
            "nothing proposed in the minority was applied"
        );
        assert!(!group.node(old).leadership().get().is_leader);
    });
}

#[test]
fn follower_down_for_a_while_catches_up_from_a_snapshot() {
    smol::block_on(async {
        let mut group = Group::memory(&[1, 2, 3]).await;
        let (leader, _) = group.leader().await;
        let lagging = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        group.stop(lagging).await;
        for i in 0..20 {
            commit_on_whoever_leads(&group, register(&format!("dn{i}:7000"))).await;
        }
        let others: Vec<u64> = group.nodes.keys().copied().collect();
        for id in &others {
            wait_for("the follower to apply", || group.data_nodes(*id) == 20).await;
            let at = group.node(*id).take_snapshot().await.expect("snapshot");
            assert!(at >= 20, "snapshot at {at}");
            group.node(*id).purge_log().await.expect("purge");
        }

        group.start(lagging).await;
        wait_for("the lagging follower to catch up", || {
            group.data_nodes(lagging) == 20
        })
        .await;
        // It caught up through a snapshot: the log it missed is gone everywhere.
        wait_for("the installed snapshot in the follower's metrics", || {
            group
                .node(lagging)
                .metrics()
                .snapshot
                .is_some_and(|s| s.index >= 20)
        })
        .await;
        let leader = commit_on_whoever_leads(&group, register("after:7000")).await;
        group.converged_on(leader).await;
    });
}

/// Commits `plan` through whichever member leads, following a leader change (a loaded
/// machine can delay heartbeats into an election); registrations are idempotent, so a retry
/// after an unknown outcome registers nothing twice. Returns the member that committed it.
async fn commit_on_whoever_leads(group: &Group, plan: ConfigPlan) -> u64 {
    loop {
        let (leader, epoch) = group.leader().await;
        match group.node(leader).propose(epoch, plan.clone()).await {
            Ok(Ok(_)) => return leader,
            Err(e) if e.is_leadership_loss() => continue,
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn membership_changes_while_proposals_run_and_a_quorum_losing_change_is_refused() {
    smol::block_on(async {
        let stores = (1..=4).map(|id| (id, RaftStores::memory())).collect();
        let mut group = Group::new(stores).await;
        group.bootstrap(&[1, 2, 3]).await;
        let (leader, epoch) = group.leader().await;

        let proposer = group.node(leader).clone();
        let proposals = smol::spawn(async move {
            let mut results = Vec::new();
            for i in 0..40 {
                results.push(
                    proposer
                        .propose(epoch, register(&format!("dn{i}:7000")))
                        .await,
                );
                smol::Timer::after(Duration::from_millis(2)).await;
            }
            results
        });
        group
            .node(leader)
            .add_member(4, addr(4))
            .await
            .expect("add 4");
        let removed = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        group
            .node(leader)
            .remove_member(removed)
            .await
            .expect("remove a follower");
        let results = proposals.await;
        assert!(
            results.iter().all(|r| matches!(r, Ok(Ok(_)))),
            "every proposal commits across the changes: {results:?}"
        );
        let voters = group.node(leader).voters();
        assert_eq!(voters.len(), 3);
        assert!(voters.contains(&4) && !voters.contains(&removed));
        wait_for("the new member to apply everything", || {
            group.data_nodes(4) == 40
        })
        .await;
        group.stop(removed).await;

        // Stop one voter: removing the other would leave two voters, one of them down.
        let down = voters
            .iter()
            .copied()
            .find(|id| *id != leader)
            .expect("voter");
        let other = voters
            .iter()
            .copied()
            .find(|id| *id != leader && *id != down)
            .expect("voter");
        group.stop(down).await;
        smol::Timer::after(Duration::from_millis(600)).await;
        let refused = group.node(leader).remove_member(other).await;
        assert!(
            matches!(
                refused,
                Err(RaftConsensusError::WouldLoseQuorum {
                    voters: 2,
                    reachable: 1,
                    needed: 2
                })
            ),
            "{refused:?}"
        );
        assert_eq!(group.node(leader).voters(), voters, "nothing changed");
        let r = group
            .node(leader)
            .propose(epoch, register("still:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "the group still commits: {r:?}");
    });
}

#[test]
fn lost_replies_and_slow_links_still_commit_each_plan_once() {
    smol::block_on(async {
        let group = Group::memory(&[1, 2, 3]).await;
        let (leader, epoch) = group.leader().await;
        group.net.set_delay(Duration::from_millis(3));
        for follower in [1, 2, 3].into_iter().filter(|id| *id != leader) {
            group.net.drop_replies(leader, follower, 5);
        }
        for i in 0..10 {
            let r = group
                .node(leader)
                .propose(epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        group.net.set_delay(Duration::ZERO);
        group.converged_on(leader).await;
        assert_eq!(
            group.data_nodes(leader),
            10,
            "each plan applied exactly once"
        );
        assert!(group.node(leader).leadership().get().is_leader);
    });
}
