use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::model::{DataNodeId, Epoch};
use crate::plan::{RegisterDataNode, UpdateDataNodeStatus};
use crate::state::{Applied, DataNodeStatus, Rejection};
use crate::storage::LogEntry;
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

fn register(port: u16) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(RegisterDataNode {
        known_id: None,
        address: format!("127.0.0.1:{port}"),
    })
}

fn node_over(log: &MemLogStore, snaps: &MemSnapshotStore) -> LocalConsensus {
    LocalConsensus::new(Arc::new(log.clone()), Arc::new(snaps.clone()))
}

#[test]
fn propose_resolves_after_apply() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let node = node_over(&log, &snaps);
        let epoch = node.campaign().await.unwrap();
        assert_eq!(epoch, Epoch(1));
        let result = node.propose(epoch, register(1)).await.unwrap();
        assert_eq!(result, Ok(Applied::DataNodeRegistered(DataNodeId(0))));
        assert_eq!(node.state().read(|s| s.data_nodes.len()), 1);
        assert_eq!(log.last_index(), 1);
        // A rejection is a committed, applied outcome too.
        let bad = ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
            only_from: None,
            id: DataNodeId(9),
            status: DataNodeStatus::Unknown,
        });
        let result = node.propose(epoch, bad).await.unwrap();
        assert_eq!(result, Err(Rejection::UnknownDataNode(DataNodeId(9))));
    });
}

#[test]
fn follower_and_wrong_epoch_cannot_propose() {
    smol::block_on(async {
        let node = node_over(&MemLogStore::new(), &MemSnapshotStore::new());
        assert_eq!(
            node.propose(Epoch(1), register(1)).await,
            Err(ConsensusError::NotLeader)
        );
        let epoch = node.campaign().await.unwrap();
        let stale = Epoch(epoch.0 - 1);
        assert!(matches!(
            node.propose(stale, register(1)).await,
            Err(ConsensusError::StaleEpoch { .. })
        ));
        node.step_down();
        assert_eq!(
            node.propose(epoch, register(1)).await,
            Err(ConsensusError::NotLeader)
        );
    });
}

#[test]
fn second_leader_takes_over_the_log_and_fences_the_first() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let a = node_over(&log, &snaps);
        let b = node_over(&log, &snaps);
        let ea = a.campaign().await.unwrap();
        a.propose(ea, register(1)).await.unwrap().unwrap();
        a.propose(ea, register(2)).await.unwrap().unwrap();

        let eb = b.campaign().await.unwrap();
        assert!(eb > ea, "epochs strictly increase");
        assert_eq!(
            b.state().snapshot(),
            a.state().snapshot(),
            "b replayed a's entries"
        );

        let fenced = a.propose(ea, register(3)).await;
        assert!(
            matches!(fenced, Err(ConsensusError::StaleEpoch { .. })),
            "{fenced:?}"
        );
        assert!(
            !a.leadership().get().is_leader,
            "the fenced leader stepped down"
        );
        assert_eq!(
            log.last_index(),
            2,
            "nothing was appended by the deposed leader"
        );

        b.propose(eb, register(3)).await.unwrap().unwrap();
        assert_eq!(b.state().read(|s| s.data_nodes.len()), 3);
        // Leadership can move back; the epoch keeps rising.
        let ea2 = a.campaign().await.unwrap();
        assert!(ea2 > eb);
        assert_eq!(a.state().read(|s| s.data_nodes.len()), 3);
    });
}

#[test]
fn snapshot_truncates_the_log_and_a_new_leader_restores_from_it() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let a = node_over(&log, &snaps);
        let epoch = a.campaign().await.unwrap();
        for port in 0..10 {
            a.propose(epoch, register(port)).await.unwrap().unwrap();
        }
        assert_eq!(a.take_snapshot().await.unwrap(), 10);
        assert_eq!(log.first_index(), 11);
        for port in 10..13 {
            a.propose(epoch, register(port)).await.unwrap().unwrap();
        }
        let b = node_over(&log, &snaps);
        b.campaign().await.unwrap();
        assert_eq!(b.applied_index(), 13);
        assert_eq!(b.state().snapshot(), a.state().snapshot());
    });
}

#[test]
fn undecodable_log_entry_is_reported_never_skipped() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let a = node_over(&log, &snaps);
        let epoch = a.campaign().await.unwrap();
        a.propose(epoch, register(1)).await.unwrap().unwrap();
        log.append(epoch.0, b"garbage").unwrap();
        let b = node_over(&log, &snaps);
        let err = b.campaign().await.unwrap_err();
        assert!(
            matches!(err, ConsensusError::CorruptEntry { index: 2, .. }),
            "{err:?}"
        );
        assert!(!b.leadership().get().is_leader);
    });
}

#[test]
fn concurrent_proposals_apply_in_log_order() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let node = Arc::new(node_over(&log, &snaps));
        let epoch = node.campaign().await.unwrap();
        let tasks: Vec<_> = (0..32u16)
            .map(|port| {
                let node = node.clone();
                smol::spawn(async move { node.propose(epoch, register(port)).await })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        // Replaying the log gives the same state: apply order was log order.
        let replayed = node_over(&log, &snaps);
        replayed.load().await.unwrap();
        assert_eq!(replayed.state().snapshot(), node.state().snapshot());
        assert_eq!(node.applied_index(), 32);
    });
}

/// A log whose next sync fails once (with `poison`: as a poisoned store fails).
struct FlakySync {
    inner: MemLogStore,
    fail_next: AtomicBool,
    poison: bool,
}

#[async_trait]
impl LogStore for FlakySync {
    fn current_term(&self) -> u64 {
        self.inner.current_term()
    }
    async fn claim_term(&self, term: u64) -> Result<(), StorageError> {
        self.inner.claim_term(term).await
    }
    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError> {
        self.inner.append(term, payload)
    }
    async fn sync(&self, index: u64) -> Result<(), StorageError> {
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(if self.poison {
                StorageError::Unavailable("log poisoned by a failed fdatasync".into())
            } else {
                StorageError::Injected("sync".into())
            });
        }
        self.inner.sync(index).await
    }
    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        self.inner.read(from, max)
    }
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    async fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index).await
    }
}

#[test]
fn failed_sync_is_an_error_never_a_silent_success() {
    smol::block_on(async {
        let log = Arc::new(FlakySync {
            inner: MemLogStore::new(),
            fail_next: AtomicBool::new(false),
            poison: false,
        });
        let node = LocalConsensus::new(log.clone(), Arc::new(MemSnapshotStore::new()));
        let epoch = node.campaign().await.unwrap();
        log.fail_next.store(true, Ordering::SeqCst);
        let err = node.propose(epoch, register(1)).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(
            node.state().read(|s| s.data_nodes.len()),
            0,
            "not applied before durable"
        );
        // The retry (same plan, idempotent) converges to one registration.
        let result = node.propose(epoch, register(1)).await.unwrap();
        assert_eq!(result, Ok(Applied::DataNodeRegistered(DataNodeId(0))));
        assert_eq!(node.state().read(|s| s.data_nodes.len()), 1);
    });
}

#[test]
fn a_poisoned_log_steps_the_node_down_for_good() {
    smol::block_on(async {
        let log = Arc::new(FlakySync {
            inner: MemLogStore::new(),
            fail_next: AtomicBool::new(false),
            poison: true,
        });
        let node = LocalConsensus::new(log.clone(), Arc::new(MemSnapshotStore::new()));
        let epoch = node.campaign().await.unwrap();
        log.fail_next.store(true, Ordering::SeqCst);
        let err = node.propose(epoch, register(1)).await.unwrap_err();
        assert!(err.is_fatal() && !err.is_retryable(), "{err:?}");
        assert!(!node.leadership().get().is_leader, "stepped down");
        let failure = futures_lite::future::block_on(node.failed());
        assert_eq!(failure, err);
        // It never leads again in this process: a restart (a new instance) must recover.
        assert_eq!(node.campaign().await, Err(err));
    });
}

#[test]
fn claiming_an_epoch_above_a_datanode_fence_raises_this_leaders_epoch() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let node = node_over(&log, &snaps);
        let epoch = node.campaign().await.unwrap();
        node.propose(epoch, register(1)).await.unwrap().unwrap();
        let raised = node.claim_epoch_above(Epoch(1_000_000)).await.unwrap();
        assert_eq!(raised, Epoch(1_000_001));
        assert_eq!(node.leadership().get().epoch, raised);
        assert!(node.leadership().get().is_leader);
        // The state survived the self-election, and the old epoch is fenced.
        assert_eq!(node.state().read(|s| s.data_nodes.len()), 1);
        assert!(node.propose(epoch, register(2)).await.is_err());
        node.propose(raised, register(2)).await.unwrap().unwrap();
        // Already above: nothing changes.
        assert_eq!(node.claim_epoch_above(Epoch(5)).await, Ok(raised));
    });
}

#[test]
fn a_deposed_leader_never_claims_an_epoch_back() {
    smol::block_on(async {
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        let old = node_over(&log, &snaps);
        old.campaign().await.unwrap();
        let new = node_over(&log, &snaps);
        let current = new.campaign().await.unwrap();
        let err = old.claim_epoch_above(Epoch(100)).await.unwrap_err();
        assert!(err.is_leadership_loss(), "{err:?}");
        assert!(!old.leadership().get().is_leader);
        assert_eq!(
            log.current_term(),
            current.0,
            "the new leader keeps its term"
        );
    });
}

/// The state a log produces by the book: each entry decoded by ciborium alone (no fast
/// path), applied in index order after the snapshot's state.
fn plain_replay(mut state: ClusterState, entries: &[LogEntry]) -> ClusterState {
    for entry in entries {
        let code = crate::plan::PlanCode::from_u16(u16::from_be_bytes([
            entry.payload[0],
            entry.payload[1],
        ]))
        .unwrap();
        let plan =
            ConfigPlan::decode_body_ciborium(code, &entry.payload[crate::plan::PLAN_HEADER_LEN..])
                .unwrap();
        let _ = state.apply(&plan);
    }
    state
}

#[test]
fn replay_yields_the_state_of_plain_in_order_replay_over_adversarial_logs() {
    use crate::consensus::adversarial_history;
    // Which kinds of refusal the histories produced (discriminants are only `Eq`).
    let mut refusals = Vec::new();
    for seed in 0..6u64 {
        let plans = adversarial_history(seed, 2_000);
        let (log, snaps) = (MemLogStore::new(), MemSnapshotStore::new());
        // Half the seeds start from a snapshot taken part-way (recovery's usual shape).
        let snapshot_at = if seed % 2 == 0 { 0 } else { plans.len() / 3 };
        let mut snapshot_state = ClusterState::default();
        for (i, plan) in plans.iter().enumerate() {
            if i < snapshot_at {
                if let Err(refusal) = snapshot_state.apply(plan) {
                    refusals.push(std::mem::discriminant(&refusal));
                }
            }
            log.append(1, &plan.encode().unwrap()).unwrap();
        }
        smol::block_on(async {
            if snapshot_at > 0 {
                let bytes = snapshot::encode(&Snapshot {
                    last_index: snapshot_at as u64,
                    last_term: 1,
                    state: snapshot_state.clone(),
                })
                .unwrap();
                snaps.save(snapshot_at as u64, bytes).await.unwrap();
                log.compact(snapshot_at as u64).await.unwrap();
            }
            let entries = log.read(snapshot_at as u64 + 1, usize::MAX).unwrap();
            assert_eq!(entries.len(), plans.len() - snapshot_at);
            let expected = plain_replay(snapshot_state.clone(), &entries);
            let mut check = snapshot_state;
            for plan in &plans[snapshot_at..] {
                if let Err(refusal) = check.apply(plan) {
                    refusals.push(std::mem::discriminant(&refusal));
                }
            }
            assert_eq!(check, expected);

            let node = node_over(&log, &snaps);
            node.campaign().await.unwrap();
            assert_eq!(node.applied_index(), plans.len() as u64);
            assert!(node.state().read(|s| *s == expected), "seed {seed}");
        });
    }
    // The logs were adversarial: finished records updated, stale versions retried, unknown
    // procedures, refused effects and refused deletions all occur.
    for refusal in [
        Rejection::ProcedureFinished(crate::model::ProcedureId(0)),
        Rejection::ProcedureVersionMismatch {
            id: crate::model::ProcedureId(0),
            expected: 0,
            current: 0,
        },
        Rejection::UnknownProcedure(crate::model::ProcedureId(0)),
        Rejection::ProcedureNotFinished(crate::model::ProcedureId(0)),
        Rejection::DatabaseExists(crate::model::DatabaseName::new("x").unwrap()),
    ] {
        assert!(
            refusals.contains(&std::mem::discriminant(&refusal)),
            "no {refusal:?} in the histories"
        );
    }
}
