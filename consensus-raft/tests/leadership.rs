//! Proposals, leader failure and epochs on 3-node in-process groups.

mod support;

use shoal_core::consensus::{Consensus, ConsensusError};
use shoal_core::model::Epoch;
use support::{Group, addr, register, wait_for};

#[test]
fn proposal_commits_on_all_three_and_a_follower_is_refused_with_a_leader_hint() {
    smol::block_on(async {
        let group = Group::memory(&[1, 2, 3]).await;
        let (leader, epoch) = group.leader().await;
        for i in 0..5 {
            let applied = group
                .node(leader)
                .propose(epoch, register(&format!("dn{i}:7000")))
                .await
                .expect("leader commits");
            assert!(applied.is_ok(), "{applied:?}");
            // Applied locally before the answer.
            assert_eq!(group.data_nodes(leader), i + 1);
        }
        wait_for("followers to apply", || {
            [1, 2, 3].iter().all(|id| group.data_nodes(*id) == 5)
        })
        .await;
        group.converged_on(leader).await;

        let follower = [1, 2, 3]
            .into_iter()
            .find(|id| *id != leader)
            .expect("follower");
        let refused = group
            .node(follower)
            .propose(epoch, register("dnx:7000"))
            .await;
        assert_eq!(refused, Err(ConsensusError::NotLeader));
        let hint = group.node(follower).leader_hint().expect("hint");
        assert_eq!((hint.id, hint.addr), (leader, addr(leader)));
        assert_eq!(
            group.data_nodes(leader),
            5,
            "a refused proposal changes nothing"
        );
    });
}

#[test]
fn killed_leader_is_replaced_at_a_higher_epoch_and_cannot_commit_after_restart() {
    smol::block_on(async {
        let mut group = Group::memory(&[1, 2, 3]).await;
        let (old, old_epoch) = group.leader().await;
        for i in 0..3 {
            let r = group
                .node(old)
                .propose(old_epoch, register(&format!("dn{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        group.stop(old).await;

        let (new, new_epoch) = group.new_leader(old, old_epoch).await;
        assert!(new_epoch > old_epoch);
        assert_eq!(
            group.data_nodes(new),
            3,
            "the new leader has every committed plan"
        );
        let r = group
            .node(new)
            .propose(new_epoch, register("dn3:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");

        group.start(old).await;
        let refused = group
            .node(old)
            .propose(old_epoch, register("stale:7000"))
            .await;
        assert!(
            refused
                .as_ref()
                .is_err_and(ConsensusError::is_leadership_loss),
            "{refused:?}"
        );
        wait_for("the restarted node to follow", || {
            group.data_nodes(old) == 4
        })
        .await;
        assert!(!group.node(old).leadership().get().is_leader);
        group.converged_on(new).await;
        assert!(
            group
                .state(new)
                .data_nodes
                .values()
                .all(|n| n.location.address != "stale:7000")
        );
    });
}

#[test]
fn claimed_epoch_exceeds_a_datanode_fence_and_survives_a_leader_change() {
    smol::block_on(async {
        let mut group = Group::memory(&[1, 2, 3]).await;
        let (leader, epoch) = group.leader().await;
        let claimed = group
            .node(leader)
            .claim_epoch_above(Epoch(1_000_000))
            .await
            .expect("claim");
        assert!(claimed > Epoch(1_000_000), "{claimed}");
        assert_eq!(group.node(leader).leadership().get().epoch, claimed);
        // The old epoch is fenced; the new one commits.
        let stale = group
            .node(leader)
            .propose(epoch, register("old:7000"))
            .await;
        assert!(
            matches!(stale, Err(ConsensusError::StaleEpoch { .. })),
            "{stale:?}"
        );
        let r = group
            .node(leader)
            .propose(claimed, register("new:7000"))
            .await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        // A claim below the current epoch changes nothing.
        assert_eq!(
            group.node(leader).claim_epoch_above(Epoch(5)).await,
            Ok(claimed)
        );

        group.stop(leader).await;
        let (_, next) = group.new_leader(leader, claimed).await;
        assert!(
            next > claimed,
            "the next leader's epoch {next} must exceed {claimed}"
        );
    });
}
