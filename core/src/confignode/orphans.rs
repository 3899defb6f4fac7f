//! Orphan reconciliation: replicas DataNodes hold that nothing accounts for.
//!
//! Every heartbeat answer carries the DataNode's region report (ids and bytes). A replica is
//! an orphan *candidate* when its DataNode is not in the group's footprint (every create is
//! recorded there before it leaves, so a create in flight is never a candidate), no
//! unfinished procedure other than an orphan removal holds the group's lock, and no
//! unfinished procedure has reserved its id. The [`OrphanTracker`] (volatile, per leader
//! term: a new leader starts the grace period over) remembers since when each candidate has
//! been seen continuously; one missing from a report, or accounted for again, is forgotten.
//! A candidate seen for longer than [`OrphanPolicy::grace`] is an orphan: the leader submits
//! a [`RemoveOrphanRegionProcedure`] for it (unless [`OrphanPolicy::remove`] is off, for
//! forensic use), logged with DataNode, region and bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::api::{OrphanInfo, RegionReport};
use crate::model::{DataNodeId, Epoch, ProcedureId, RegionId, RegionKind};
use crate::procedure::ProcedureExecutor;
use crate::procedures::{REMOVE_ORPHAN_REGION, RemoveOrphanRegionProcedure};
use crate::runtime::Millis;
use crate::state::{ClusterState, LockResource};

/// How orphans are handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanPolicy {
    /// How long a replica must be seen unaccounted for before it is an orphan.
    pub grace: Duration,
    /// Delete orphans (`false`: only list them, e.g. for forensics).
    pub remove: bool,
}

impl Default for OrphanPolicy {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(10 * 60),
            remove: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Seen {
    since_ms: Millis,
    bytes: u64,
    removal: Option<ProcedureId>,
    logged: bool,
}

/// The leader's view of orphan candidates. See the module docs.
#[derive(Debug, Default)]
pub struct OrphanTracker {
    seen: Mutex<BTreeMap<(DataNodeId, RegionId), Seen>>,
}

/// What accounts for a replica besides the footprint, gathered once per DataNode report:
/// the regions unfinished procedures (other than orphan removals) hold a group lock on, and
/// the id ranges unfinished procedures reserved. A report lists every replica of the node,
/// so checking each against every procedure would cost replicas x procedures.
struct Accounting {
    locked: BTreeSet<RegionId>,
    reserved: Vec<(RegionKind, u32, u32)>,
}

impl Accounting {
    fn of(state: &ClusterState) -> Self {
        let locked = state
            .unfinished_procedures()
            .filter(|p| p.type_code != REMOVE_ORPHAN_REGION)
            .flat_map(|p| p.lock_keys.iter())
            .filter_map(|k| match k.resource {
                LockResource::RegionGroup(region) => Some(region),
                _ => None,
            })
            .collect();
        let reserved = state
            .region_reservations
            .iter()
            .filter(|((owner, _), _)| {
                state
                    .procedures
                    .get(owner)
                    .is_some_and(|p| !p.status.is_finished())
            })
            .map(|((_, kind), (first, count))| (*kind, *first, *count))
            .collect();
        Self { locked, reserved }
    }

    /// Whether `node`'s replica of `region` is accounted for by the footprint or by an
    /// unfinished procedure (which may be creating, moving or deleting it).
    fn covers(&self, state: &ClusterState, node: DataNodeId, region: RegionId) -> bool {
        state.footprint(region).contains(&node)
            || self.locked.contains(&region)
            || self.reserved.iter().any(|(kind, first, count)| {
                *kind == region.kind && region.id >= *first && region.id - *first < *count
            })
    }
}

impl OrphanTracker {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<(DataNodeId, RegionId), Seen>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `node`'s region report at `now`: candidates are remembered (from the first
    /// time seen), everything else the node had is forgotten.
    pub fn observe(
        &self,
        state: &ClusterState,
        node: DataNodeId,
        regions: &[RegionReport],
        now: Millis,
    ) {
        let accounting = Accounting::of(state);
        let mut seen = self.lock();
        let mut current = BTreeMap::new();
        for report in regions {
            if accounting.covers(state, node, report.region) {
                continue;
            }
            let fresh = Seen {
                since_ms: now,
                bytes: report.bytes,
                removal: None,
                logged: false,
            };
            let entry = match seen.remove(&(node, report.region)) {
                // Its removal ended and it is still here: start over.
                Some(old)
                    if old.removal.is_some_and(|id| {
                        state
                            .procedures
                            .get(&id)
                            .is_none_or(|p| p.status.is_finished())
                    }) =>
                {
                    fresh
                }
                Some(old) => old,
                None => fresh,
            };
            current.insert(
                (node, report.region),
                Seen {
                    bytes: report.bytes,
                    ..entry
                },
            );
        }
        seen.retain(|(n, _), _| *n != node);
        seen.extend(current);
    }

    /// Forgets everything (a new leadership term starts the grace period over).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Every candidate, with how long it has been seen.
    pub fn list(&self, now: Millis) -> Vec<OrphanInfo> {
        self.lock()
            .iter()
            .map(|((node, region), seen)| OrphanInfo {
                data_node: *node,
                region: *region,
                bytes: seen.bytes,
                orphan_for_ms: now.saturating_sub(seen.since_ms),
                removal: seen.removal,
            })
            .collect()
    }

    /// Submits a removal for every candidate past the grace period that has none (or logs
    /// it once, when removal is off). Request keys name the leader's epoch and the first
    /// sighting, so a retried submit finds the same procedure.
    pub async fn reconcile(
        &self,
        executor: &Arc<ProcedureExecutor>,
        policy: &OrphanPolicy,
        epoch: Epoch,
        now: Millis,
    ) {
        let grace = policy.grace.as_millis() as Millis;
        let due: Vec<((DataNodeId, RegionId), Seen)> = self
            .lock()
            .iter()
            .filter(|(_, s)| s.removal.is_none() && now.saturating_sub(s.since_ms) >= grace)
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        for ((node, region), seen) in due {
            if !policy.remove {
                if !seen.logged {
                    tracing::warn!(data_node = %node, %region, bytes = seen.bytes,
                        "orphan replica kept (orphan removal is off)");
                    if let Some(entry) = self.lock().get_mut(&(node, region)) {
                        entry.logged = true;
                    }
                }
                continue;
            }
            let key = format!("orphan-{}-{region}-e{}-{}", node.0, epoch.0, seen.since_ms);
            let procedure = RemoveOrphanRegionProcedure::new(node, region, seen.bytes);
            match executor.submit(Box::new(procedure), Some(key)).await {
                Ok(id) => {
                    tracing::warn!(data_node = %node, %region, bytes = seen.bytes,
                        procedure = %id, "orphan replica found; deleting it");
                    if let Some(entry) = self.lock().get_mut(&(node, region)) {
                        entry.removal = Some(id);
                    }
                }
                Err(e) => tracing::warn!(data_node = %node, %region,
                    "orphan removal not submitted yet: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DatabaseName, RegionKind, RegionReplicaSet};
    use crate::plan::{ConfigPlan, CreateDatabase, RecordReplicaFootprints, RegisterDataNode};

    fn report(region: RegionId) -> RegionReport {
        RegionReport { region, bytes: 10 }
    }

    fn state_with_footprint(region: RegionId) -> ClusterState {
        let mut state = ClusterState::default();
        for port in [1, 2] {
            state
                .apply(&ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id: None,
                    address: format!("127.0.0.1:{port}"),
                }))
                .expect("register");
        }
        let name = DatabaseName::new("db").expect("name");
        state
            .apply(&ConfigPlan::CreateDatabase(CreateDatabase {
                schema: crate::model::DatabaseSchema {
                    name: name.clone(),
                    schema_replication_factor: crate::model::ReplicationFactor::new(1).expect("rf"),
                    data_replication_factor: crate::model::ReplicationFactor::new(1).expect("rf"),
                },
                created_by: None,
            }))
            .expect("db");
        state.next_region_id = region.id + 1;
        state
            .apply(&ConfigPlan::RecordReplicaFootprints(
                RecordReplicaFootprints {
                    database: name,
                    groups: vec![RegionReplicaSet::new(region, vec![DataNodeId(0)])],
                },
            ))
            .expect("footprint");
        state
    }

    #[test]
    fn a_replica_in_the_footprint_is_never_a_candidate_and_others_are_timed_from_first_sight() {
        let ours = RegionId::new(RegionKind::Data, 1);
        let planted = RegionId::new(RegionKind::Data, 50);
        let state = state_with_footprint(ours);
        let tracker = OrphanTracker::default();
        tracker.observe(
            &state,
            DataNodeId(0),
            &[report(ours), report(planted)],
            1_000,
        );
        tracker.observe(
            &state,
            DataNodeId(0),
            &[report(ours), report(planted)],
            5_000,
        );
        let listed = tracker.list(6_000);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0].region, listed[0].orphan_for_ms),
            (planted, 5_000)
        );
        // Gone from a report: forgotten (a later sighting starts the grace period over).
        tracker.observe(&state, DataNodeId(0), &[report(ours)], 7_000);
        assert!(tracker.list(8_000).is_empty());
        // On another node, the same region is an orphan: it is not in the footprint there.
        tracker.observe(&state, DataNodeId(1), &[report(ours)], 9_000);
        assert_eq!(tracker.list(9_000).len(), 1);
    }
}
