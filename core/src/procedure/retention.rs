//! Retention: finished root procedures (with their descendants) are deleted through the log
//! once beyond the count or age bound of [`super::RetentionPolicy`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;

use crate::model::ProcedureId;
use crate::plan::{ConfigPlan, DeleteProcedures};
use crate::runtime::Millis;
use crate::state::ClusterState;

use super::session::SessionCore;

impl SessionCore {
    pub(super) async fn retention_ticker(self: Arc<Self>, every: Duration) {
        loop {
            let tick = self.shared.runtime.clock.sleep(every);
            let go = future::or(
                async {
                    tick.await;
                    true
                },
                async {
                    self.wait_stopped().await;
                    false
                },
            )
            .await;
            if !go {
                return;
            }
            self.prune().await;
        }
    }

    /// Deletes finished root procedures (and their descendants) beyond the retention bounds.
    pub async fn prune(self: &Arc<Self>) {
        let policy = self.shared.config.retention.clone();
        let now = self.now();
        let roots: Vec<ProcedureId> = {
            let mut inner = self.lock();
            if inner.pruning {
                return;
            }
            let mut by_age: Vec<(Millis, ProcedureId)> = inner
                .finished_roots
                .iter()
                .map(|(id, at)| (*at, *id))
                .collect();
            by_age.sort();
            let excess = by_age.len().saturating_sub(policy.max_finished);
            let max_age = policy.max_age.as_millis() as u64;
            let roots: Vec<ProcedureId> = by_age
                .iter()
                .enumerate()
                .filter(|(i, (at, _))| *i < excess || now.saturating_sub(*at) >= max_age)
                .map(|(_, (_, id))| *id)
                .collect();
            if roots.is_empty() {
                return;
            }
            inner.pruning = true;
            roots
        };
        let registry = self.shared.registry.clone();
        let ids = self.shared.consensus.state().read(|s| {
            let mut ids = BTreeSet::new();
            for root in &roots {
                let family = family_of(s, *root);
                // Never delete a record this build cannot read, nor an unfinished one.
                let deletable = family.iter().all(|id| {
                    s.procedures
                        .get(id)
                        .is_none_or(|r| r.status.is_finished() && registry.contains(r.type_code))
                });
                if deletable {
                    ids.extend(family);
                }
            }
            ids
        });
        let result = if ids.is_empty() {
            Ok(Ok(crate::state::Applied::Unchanged))
        } else {
            self.commit(
                ConfigPlan::DeleteProcedures(DeleteProcedures {
                    ids: ids.into_iter().collect(),
                }),
                None,
            )
            .await
        };
        let mut inner = self.lock();
        inner.pruning = false;
        match result {
            Ok(Ok(_)) => {
                for root in &roots {
                    // Roots kept for being unreadable are forgotten too: never retried.
                    inner.finished_roots.remove(root);
                }
            }
            Ok(Err(rejection)) => {
                tracing::warn!(error = %rejection, "retention prune refused")
            }
            Err(e) => tracing::warn!(error = %e, "retention prune failed; retried later"),
        }
    }
}

/// `root` and all its descendants.
fn family_of(state: &ClusterState, root: ProcedureId) -> Vec<ProcedureId> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        out.push(id);
        if let Some(record) = state.procedures.get(&id) {
            stack.extend(record.children.iter().copied());
        }
    }
    out
}
