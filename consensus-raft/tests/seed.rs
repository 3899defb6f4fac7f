//! A group seeded with a single-node ConfigNode's state (the upgrade path).

mod support;

use std::collections::BTreeMap;

use shoal_consensus_raft::{ConfigNodeGroupApi, RaftConsensusError, RaftStores, seed_group};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::model::Epoch;
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use std::sync::Arc;
use support::{Group, addr, register, wait_for};

#[test]
fn a_seeded_group_holds_the_old_state_and_leads_above_the_old_epoch() {
    smol::block_on(async {
        // A single node that campaigned a few times (epoch 4) and registered two DataNodes.
        let local = LocalConsensus::new(
            Arc::new(MemLogStore::new()),
            Arc::new(MemSnapshotStore::new()),
        );
        let mut epoch = Epoch(0);
        for _ in 0..4 {
            epoch = local.campaign().await.expect("campaign");
        }
        for i in 0..2 {
            let r = local
                .propose(epoch, register(&format!("old{i}:7000")))
                .await;
            assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        }
        let old = local.state().snapshot();

        let stores: BTreeMap<u64, RaftStores> =
            (1..=3).map(|id| (id, RaftStores::memory())).collect();
        let members: BTreeMap<u64, String> = (1..=3).map(|id| (id, addr(id))).collect();
        seed_group(&stores[&1], &members, &old, epoch.0)
            .await
            .expect("seed");
        assert_eq!(
            seed_group(&stores[&1], &members, &old, epoch.0).await,
            Err(RaftConsensusError::AlreadyInitialized),
            "seeding twice is refused"
        );

        // Nodes 2 and 3 start empty and are never bootstrapped: node 1 leads them.
        let group = Group::new(stores).await;
        let (leader, new_epoch) = group.leader().await;
        assert_eq!(leader, 1, "only the seeded node can campaign");
        assert!(new_epoch > epoch, "{new_epoch} above the old {epoch}");
        assert_eq!(group.state(1), old, "the old state, untouched");
        let r = group.node(1).propose(new_epoch, register("new:7000")).await;
        assert!(matches!(r, Ok(Ok(_))), "{r:?}");
        wait_for(
            "every member to hold the old state and the new plan",
            || (1..=3).all(|id| group.data_nodes(id) == 3),
        )
        .await;
        group.converged_on(1).await;
        let status = ConfigNodeGroupApi::status(group.node(2).as_ref())
            .await
            .expect("status");
        assert_eq!(status.members.len(), 3);
        assert!(status.members.iter().all(|m| m.voter));
        assert_eq!(status.leader, Some(1));
    });
}
