//! [`EpochHealer`]: heals a DataNode's epoch fence that sits above this leader's epoch.
//!
//! A DataNode refuses every request whose epoch is below the highest it has seen. If it has
//! seen an epoch above this leader's — a deposed leader's successor, or one stray call with
//! a huge epoch — this leader is either deposed (it must step down) or it must claim an epoch
//! above the fence; otherwise that DataNode stays fenced out for good. Every part of the
//! ConfigNode that calls DataNodes reports `StaleLeader` answers here; the leader loop runs
//! [`EpochHealer::run`], which claims above the highest reported fence.

use std::sync::Mutex;

use event_listener::Event;

use crate::consensus::Consensus;
use crate::model::{DataNodeId, Epoch};

/// Collects `StaleLeader` answers and claims an epoch above them. See the module docs.
#[derive(Default)]
pub struct EpochHealer {
    /// The highest fence reported and not yet handled: (DataNode, request epoch, seen).
    pending: Mutex<Option<(DataNodeId, Epoch, Epoch)>>,
    reported: Event,
}

impl std::fmt::Debug for EpochHealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EpochHealer")
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl EpochHealer {
    /// A healer with nothing reported.
    pub fn new() -> Self {
        Self::default()
    }

    /// The highest fence reported and not handled yet: (DataNode, request epoch, seen).
    pub fn pending(&self) -> Option<(DataNodeId, Epoch, Epoch)> {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node` refused a request of epoch `request`, having seen `seen`.
    pub fn report(&self, node: DataNodeId, request: Epoch, seen: Epoch) {
        if seen <= request {
            return;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.is_none_or(|(_, _, highest)| highest < seen) {
                *pending = Some((node, request, seen));
            }
        }
        self.reported.notify(usize::MAX);
    }

    async fn next_report(&self) -> (DataNodeId, Epoch, Epoch) {
        loop {
            let listener = self.reported.listen();
            if let Some(report) = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
            {
                return report;
            }
            listener.await;
        }
    }

    /// While this node leads at `epoch`: claims, through `consensus`, an epoch above each
    /// reported fence that is above `epoch`. Returns once leadership at `epoch` ends (a
    /// successful claim ends it too: the node leads on at the new epoch, and the leader loop
    /// starts over).
    pub async fn run(&self, consensus: &dyn Consensus, epoch: Epoch) {
        let watch = consensus.leadership();
        let heal = async {
            loop {
                let (node, request, seen) = self.next_report().await;
                if seen <= epoch {
                    // A request of an older epoch of ours was refused: nothing to heal.
                    continue;
                }
                tracing::warn!(
                    data_node = %node, seen = %seen, epoch = %epoch, request = %request,
                    "DataNode has seen an epoch above this leader's; claiming a higher epoch"
                );
                match consensus.claim_epoch_above(seen).await {
                    Ok(claimed) => {
                        tracing::warn!(data_node = %node, %claimed, "leader epoch raised above the DataNode's fence");
                        return;
                    }
                    Err(e) if e.is_leadership_loss() => {
                        tracing::warn!(data_node = %node, "a newer leader exists; this node steps down: {e}");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(data_node = %node, "could not raise the epoch yet: {e}")
                    }
                }
            }
        };
        futures_lite::future::or(heal, watch.wait_lost(epoch)).await;
    }
}
