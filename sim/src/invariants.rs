//! The invariants of issue 11, checked against the observed world: safety after every change
//! (a durable log entry, a journal record, a store operation), liveness once quiet.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use shoal_core::model::{DataNodeId, RegionId, RegionKind};
use shoal_core::storage::{RegionConfig, RegionStore};

use crate::observe::{Decoded, GhostRule, Invariant, Seen, decode};
use crate::world::World;

/// Polls a future that never waits (the in-memory stores' reads).
fn ready<T>(future: impl Future<Output = T>) -> Option<T> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(value) => Some(value),
        Poll::Pending => None,
    }
}

/// Who may hold a replica, per the durable state: `(DataNode, region)` pairs.
///
/// Issue 10's replica footprint (every DataNode a create was ever sent to, until a deletion
/// there succeeded) ∪ pending legacy deletions (replicas a v1 cluster was deleting) ∪
/// replicas named by unfinished procedures (planned replicas of creations, targets of
/// removals). Published groups and queued creates are deliberately not added: both must lie
/// in the footprint, and adding them would hide a footprint that missed one.
pub fn known_replicas(seen: &mut Seen) -> BTreeSet<(DataNodeId, RegionId)> {
    let mut known = BTreeSet::new();
    for (region, footprint) in &seen.state.footprints {
        for node in footprint.data_nodes.keys() {
            known.insert((*node, *region));
        }
    }
    for deletion in seen.state.legacy_deletions.values() {
        known.insert((deletion.target, deletion.group.region));
    }
    let unfinished: Vec<_> = seen
        .state
        .unfinished_procedures()
        .map(|r| (r.id, r.version))
        .collect();
    seen.decoded
        .retain(|id, _| unfinished.iter().any(|(u, _)| u == id));
    for (id, version) in unfinished {
        let fresh = seen.decoded.get(&id).is_some_and(|(v, _)| *v == version);
        if !fresh && let Some(record) = seen.state.procedures.get(&id) {
            let decoded = decode(record);
            seen.decoded.insert(id, (version, decoded));
        }
        match seen.decoded.get(&id).map(|(_, d)| d) {
            Some(Decoded::Create(groups)) => {
                for (region, replicas) in groups {
                    for node in replicas {
                        known.insert((*node, *region));
                    }
                }
            }
            Some(Decoded::Remove {
                region, targets, ..
            }) => {
                for node in targets {
                    known.insert((*node, *region));
                }
            }
            _ => {}
        }
    }
    known
}

/// What one DataNode holds now: live replicas and regions whose bytes are being removed.
struct Holdings {
    id: DataNodeId,
    live: Vec<RegionConfig>,
    trash: Vec<RegionId>,
}

impl Holdings {
    fn holds(&self, region: RegionId) -> bool {
        self.live
            .binary_search_by(|c| c.region.cmp(&region))
            .is_ok()
    }
}

fn holdings(world: &World) -> Vec<Holdings> {
    world
        .dns
        .iter()
        .map(|slot| Holdings {
            id: slot.id,
            // `list` is in region order.
            live: ready(slot.store.mem.list())
                .and_then(Result::ok)
                .unwrap_or_default(),
            trash: slot.store.mem.regions_being_deleted(),
        })
        .collect()
}

/// Checks the safety invariants if anything changed since the last check.
pub fn check_safety(world: &World) {
    let observer = &world.observer;
    let dirty = observer.with(|seen| std::mem::take(&mut seen.dirty));
    if !dirty {
        return;
    }
    let held = holdings(world);
    let mut problems: Vec<(Invariant, String)> = Vec::new();
    observer.with(|seen| {
        if seen.known_at != Some(seen.entries) {
            seen.known = known_replicas(seen);
            seen.known_at = Some(seen.entries);
        }
        let known = &seen.known;
        for node in &held {
            for config in &node.live {
                if !known.contains(&(node.id, config.region)) {
                    problems.push((
                        Invariant::NoOrphan,
                        format!(
                            "DataNode {} holds {} of {}, known to no group, queue or unfinished procedure",
                            node.id, config.region, config.database
                        ),
                    ));
                }
            }
        }
        let running: std::collections::BTreeMap<DataNodeId, BTreeSet<RegionId>> = seen
            .nodes
            .iter()
            .map(|(id, s)| (*id, s.running().map(|(_, t)| t.region).collect()))
            .collect();
        for rule in &seen.ghost_rules {
            match rule {
                GhostRule::Region {
                    procedure,
                    region,
                    nodes,
                } => {
                    for node in held
                        .iter()
                        .filter(|h| nodes.as_ref().is_none_or(|n| n.contains(&h.id)))
                    {
                        let live = node.holds(*region);
                        let trash = node.trash.contains(region);
                        let running = running
                            .get(&node.id)
                            .is_some_and(|regions| regions.contains(region));
                        if live || trash || running {
                            problems.push((
                                Invariant::NoGhost,
                                format!(
                                    "removal {procedure} of {region} reported Succeeded, but DataNode {} {}",
                                    node.id,
                                    if running {
                                        "still runs a deletion of it"
                                    } else if trash {
                                        "still holds bytes of it"
                                    } else {
                                        "still holds it"
                                    }
                                ),
                            ));
                        }
                    }
                }
                GhostRule::Database {
                    procedure,
                    name,
                    bound,
                } => {
                    for node in &held {
                        let live = node
                            .live
                            .iter()
                            .filter(|c| c.database == *name && c.region.id < *bound)
                            .map(|c| c.region);
                        let trash = node.trash.iter().copied().filter(|r| {
                            r.id < *bound && seen.region_db.get(r) == Some(name)
                        });
                        for region in live.chain(trash) {
                            problems.push((
                                Invariant::NoGhost,
                                format!(
                                    "deletion {procedure} of database {name} reported Succeeded, but DataNode {} still holds {region}",
                                    node.id
                                ),
                            ));
                        }
                    }
                }
            }
        }
    });
    for (invariant, detail) in problems {
        observer.violate(invariant, detail);
    }
}

/// What keeps the cluster from being quiet and converged; empty once it is.
pub fn quiet_problems(world: &World) -> Vec<(Invariant, String)> {
    let held = holdings(world);
    let running_nodes: Vec<bool> = world.dns.iter().map(|s| s.up).collect();
    let mut problems = Vec::new();
    world.observer.with(|seen| {
        let state = &seen.state;
        for record in state.unfinished_procedures() {
            problems.push((
                Invariant::Liveness,
                format!(
                    "procedure {} {} not finished ({:?} in {}{})",
                    record.id,
                    record.type_name,
                    record.status,
                    record.state_name,
                    record
                        .waiting_for
                        .as_ref()
                        .map(|w| format!(", waiting for {w}"))
                        .unwrap_or_default()
                ),
            ));
        }
        for (id, create) in &state.create_queue {
            problems.push((
                Invariant::Liveness,
                format!(
                    "queued create {id} of {} on DataNode {} never done",
                    create.group.region, create.target
                ),
            ));
        }
        for (id, deletion) in &state.legacy_deletions {
            problems.push((
                Invariant::Liveness,
                format!(
                    "legacy deletion {id} of {} on DataNode {} never adopted",
                    deletion.group.region, deletion.target
                ),
            ));
        }
        for (name, entry) in &state.databases {
            if entry.deleting {
                problems.push((
                    Invariant::Liveness,
                    format!("database {name} is still marked deleting"),
                ));
            }
            let groups = state
                .partition_tables
                .get(name)
                .map(|t| t.groups.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default();
            if groups.is_empty() {
                problems.push((
                    Invariant::Liveness,
                    format!("database {name} exists without any region group"),
                ));
            }
            for group in groups {
                let rf = match group.region.kind {
                    RegionKind::Schema => entry.schema.schema_replication_factor.get(),
                    RegionKind::Data => entry.schema.data_replication_factor.get(),
                };
                if group.replicas.len() != usize::from(rf) {
                    problems.push((
                        Invariant::Liveness,
                        format!(
                            "{} of {name} has {} replicas, RF is {rf}",
                            group.region,
                            group.replicas.len()
                        ),
                    ));
                }
                for node in &group.replicas {
                    let present = held
                        .iter()
                        .find(|h| h.id == *node)
                        .is_some_and(|h| h.live.iter().any(|c| c.region == group.region));
                    if !present {
                        problems.push((
                            Invariant::MetadataMatchesReplicas,
                            format!(
                                "metadata lists {} on DataNode {node}, which lacks it",
                                group.region
                            ),
                        ));
                    }
                }
            }
        }
        for node in &held {
            for region in &node.trash {
                problems.push((
                    Invariant::Liveness,
                    format!("DataNode {} still removes bytes of {region}", node.id),
                ));
            }
            if let Some(s) = seen.nodes.get(&node.id) {
                for (task, t) in s.running() {
                    problems.push((
                        Invariant::Liveness,
                        format!(
                            "DataNode {} still runs {task} (delete {})",
                            node.id, t.region
                        ),
                    ));
                }
            }
        }
        for (j, up) in running_nodes.iter().enumerate() {
            if !up {
                problems.push((Invariant::Liveness, format!("DataNode {j} is down")));
            }
        }
    });
    problems
}
