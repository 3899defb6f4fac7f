//! The leader's heartbeat monitor: marks DataNodes running or unknown.
//!
//! Placement only uses running DataNodes. A node is marked unknown after
//! `misses_before_unknown` consecutive failed heartbeats, and running again on the first
//! success. Status changes go through the log; unchanged statuses are not re-proposed. A
//! `StaleLeader` answer (the DataNode has seen a higher epoch) is reported to the
//! [`EpochHealer`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::consensus::Consensus;
use crate::model::{DataNodeId, Epoch};
use crate::plan::{ConfigPlan, UpdateDataNodeStatus};
use crate::runtime::Runtime;
use crate::state::DataNodeStatus;

use super::clients::DataNodeClients;
use super::fence::EpochHealer;

/// Heartbeats every registered DataNode while this node leads.
pub struct HeartbeatMonitor {
    consensus: Arc<dyn Consensus>,
    clients: Arc<dyn DataNodeClients>,
    runtime: Runtime,
    healer: Arc<EpochHealer>,
    misses_before_unknown: u32,
    misses: Mutex<BTreeMap<DataNodeId, u32>>,
    /// Where region reports go (orphan reconciliation), once set.
    reports: std::sync::OnceLock<Arc<super::orphans::OrphanTracker>>,
}

impl HeartbeatMonitor {
    /// A monitor that marks a node unknown after `misses_before_unknown` failures in a row.
    pub fn new(
        consensus: Arc<dyn Consensus>,
        clients: Arc<dyn DataNodeClients>,
        runtime: Runtime,
        healer: Arc<EpochHealer>,
        misses_before_unknown: u32,
    ) -> Self {
        Self {
            consensus,
            clients,
            runtime,
            healer,
            misses_before_unknown: misses_before_unknown.max(1),
            misses: Mutex::new(BTreeMap::new()),
            reports: std::sync::OnceLock::new(),
        }
    }

    /// Hands every answered heartbeat's region report to `tracker` from now on.
    pub fn report_regions_to(&self, tracker: Arc<super::orphans::OrphanTracker>) {
        let _ = self.reports.set(tracker);
    }

    /// Runs rounds every `interval` until leadership at `epoch` is lost.
    pub async fn run(&self, epoch: Epoch, interval: Duration) {
        let watch = self.consensus.leadership();
        super::every_while_leading(&watch, epoch, &self.runtime, interval, || async {
            self.run_once(epoch).await;
        })
        .await;
    }

    /// One heartbeat to every registered DataNode; returns the nodes that answered.
    pub async fn run_once(&self, epoch: Epoch) -> Vec<DataNodeId> {
        let nodes: Vec<_> = self.consensus.state().read(|s| {
            s.data_nodes
                .values()
                .map(|n| (n.location.clone(), n.status))
                .collect()
        });
        let mut alive = Vec::new();
        for (location, status) in nodes {
            let answer = self.clients.client(&location).heartbeat(epoch).await;
            if let Err(crate::api::ApiError::StaleLeader { request, seen }) = &answer {
                // Fenced by an epoch above ours: heal it (or learn that we are deposed).
                self.healer.report(location.id, *request, *seen);
            }
            if let (Ok(report), Some(tracker)) = (&answer, self.reports.get()) {
                let now = self.runtime.clock.now_ms();
                self.consensus
                    .state()
                    .read(|s| tracker.observe(s, location.id, &report.regions, now));
            }
            let ok = answer.is_ok();
            let target = {
                let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
                let count = misses.entry(location.id).or_default();
                *count = if ok { 0 } else { count.saturating_add(1) };
                if ok {
                    DataNodeStatus::Running
                } else if *count >= self.misses_before_unknown {
                    DataNodeStatus::Unknown
                } else {
                    status
                }
            };
            if ok {
                alive.push(location.id);
            }
            // Removing is set by an operator and is never overridden by heartbeats.
            if target != status && status != DataNodeStatus::Removing {
                tracing::info!(data_node = %location.id, from = %status, to = %target, "DataNode status");
                // Only from the status read before this round: a removal may have marked
                // the node `Removing` since, and that must stand.
                let plan = ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
                    id: location.id,
                    status: target,
                    only_from: Some(status),
                });
                if let Err(e) = self.consensus.propose(epoch, plan).await {
                    tracing::warn!(data_node = %location.id, "status update not committed: {e}");
                }
            }
        }
        alive
    }
}
