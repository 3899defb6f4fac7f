//! Publishing this node's leadership (see [`crate::consensus`] for the rules).

use std::sync::Arc;

use openraft::Instant as _;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use shoal_core::consensus::Leadership;
use shoal_core::model::Epoch;

use crate::node::{Node, fatal_error};
use crate::types::{RaftRequest, epoch_of};

/// Follows openraft's metrics (and the failure cell, and time for the lease) and publishes
/// this node's leadership under the rules in [`crate::consensus`]'s docs.
pub(crate) async fn publish_leadership(node: Arc<Node>, stale_term: Option<u64>) {
    let mut metrics = node.raft.metrics();
    // Epochs this node must not publish (again): `(term, None)` is every epoch of `term` (a
    // term this node may have led before a restart), `(term, Some(e))` every epoch up to `e`
    // (an epoch whose leadership was withdrawn). Leading at such an epoch first raises the
    // floor above it, so one epoch never names two leadership sessions.
    let mut stale: Option<(u64, Option<u64>)> = stale_term.map(|term| (term, None));
    let mut raising = false;
    let (raised_tx, raised_rx) = async_channel::unbounded::<()>();
    loop {
        let m = metrics.borrow_watched().clone();
        let stopped = m.running_state.is_err() || node.failure.get().is_some();
        if let Err(fatal) = &m.running_state
            && !node.stopping.load(std::sync::atomic::Ordering::SeqCst)
        {
            node.failure.record(fatal_error(fatal));
        }
        let term = m.current_term;
        let lease = node.config.election_timeout.1;
        let lease_held = m
            .last_quorum_acked
            .as_ref()
            .is_some_and(|t| crate::rt::now().saturating_duration_since(**t) <= lease)
            // A single voter is its own quorum.
            || m.membership_config.membership().voter_ids().count() == 1;
        let leading = !stopped
            && m.state == ServerState::Leader
            && m.current_leader == Some(node.id)
            && m.vote.committed
            && m.last_applied.is_some_and(|id| id.leader_id.term == term)
            && lease_held;
        let epoch = epoch_of(term, node.sm.floor());
        let is_stale = match stale {
            Some((t, None)) => t == term,
            Some((t, Some(e))) => t == term && epoch <= e,
            None => false,
        };
        let prev = node.watch.get();
        if leading && is_stale {
            if !raising {
                raising = true;
                stale = Some((term, Some(epoch)));
                let raft = node.raft.clone();
                let done = raised_tx.clone();
                crate::rt::spawn_detached(async move {
                    let _ = raft
                        .client_write(RaftRequest::RaiseEpochFloor {
                            epoch,
                            above: epoch,
                        })
                        .await;
                    let _ = done.send(()).await;
                });
            }
        } else if leading {
            node.watch.set(Leadership {
                is_leader: true,
                epoch: Epoch(epoch),
            });
        } else {
            if prev.is_leader {
                stale = Some((term, Some(prev.epoch.0.max(epoch))));
                tracing::info!(epoch = %prev.epoch, "raft leadership withdrawn");
            }
            node.watch.set(Leadership {
                is_leader: false,
                epoch: prev.epoch,
            });
        }
        if stopped {
            return;
        }
        // Wake on a metrics change, a failure, a finished floor raise, or a heartbeat period
        // (the lease can lapse without any metrics change).
        let changed = futures_lite::future::or(
            async { metrics.changed().await.is_ok() },
            futures_lite::future::or(
                async {
                    node.failure.wait().await;
                    true
                },
                futures_lite::future::or(
                    async {
                        let _ = raised_rx.recv().await;
                        raising = false;
                        true
                    },
                    async {
                        crate::rt::sleep(node.config.heartbeat_interval).await;
                        true
                    },
                ),
            ),
        )
        .await;
        if !changed {
            let prev = node.watch.get();
            node.watch.set(Leadership {
                is_leader: false,
                epoch: prev.epoch,
            });
            return;
        }
    }
}
