//! The invariants of issue 11, checked against the observed world: safety after every change
//! (a durable log entry, a journal record, a store operation), liveness once quiet.
//!
//! Safety is checked at the end of every instant of virtual time in which something changed,
//! incrementally ([`check_safety`]): a safety invariant that held at the last check can only
//! break through a change it depends on, so only those are re-checked —
//! - *no orphan* (a live replica nobody knows of) breaks when a replica is created (that pair
//!   is checked) or when the known replicas shrink, which only a durable log entry does (then
//!   every replica that may be live is checked);
//! - *no ghost* (something left of a deletion reported done) breaks when the report lands (the
//!   new rule is checked against every DataNode), or when a replica is created or a deletion
//!   accepted afterwards (the rules naming that region or its database are checked). Bytes in
//!   trash only come from a live replica, which was caught as live first.
//!
//! The other safety invariants are checked where their evidence arrives ([`crate::observe`]).
//! [`check_safety_fully`] re-checks everything instead; `RunOptions::full_checks` runs it, and
//! a test compares both on seeds with and without mutations.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use shoal_core::model::{DataNodeId, ProcedureId, RegionId, RegionKind};
use shoal_core::procedure::ProcedureType;
use shoal_core::procedures::MigrateRegionProcedure;
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

/// The DataNodes' stores as they are now, read as a check needs them.
struct Ground<'w> {
    world: &'w World,
    /// Per DataNode, the regions whose bytes are being removed (read once per check).
    trash: Option<Vec<(DataNodeId, Vec<RegionId>)>>,
}

impl<'w> Ground<'w> {
    fn new(world: &'w World) -> Self {
        Self { world, trash: None }
    }

    /// Whether `node`'s store holds a live replica of `region`.
    fn live(&self, node: DataNodeId, region: RegionId) -> bool {
        self.world
            .dns
            .iter()
            .find(|slot| slot.id == node)
            .and_then(|slot| ready(slot.store.mem.size(region)))
            .and_then(Result::ok)
            .flatten()
            .is_some()
    }

    /// Per DataNode, the regions whose bytes it still removes (a running or abandoned
    /// deletion).
    fn trash(&mut self) -> &[(DataNodeId, Vec<RegionId>)] {
        let world = self.world;
        self.trash.get_or_insert_with(|| {
            world
                .dns
                .iter()
                .map(|slot| (slot.id, slot.store.mem.regions_being_deleted()))
                .collect()
        })
    }

    /// The first `len` bytes of `node`'s replica of `region` (fewer if it is shorter;
    /// `None` without a live replica).
    fn bytes(&self, node: DataNodeId, region: RegionId, len: u64) -> Option<Vec<u8>> {
        self.world
            .dns
            .iter()
            .find(|slot| slot.id == node)
            .and_then(|slot| {
                ready(RegionStore::read_at(
                    &slot.store.mem,
                    region,
                    0,
                    usize::try_from(len).unwrap_or(usize::MAX),
                ))
            })
            .and_then(Result::ok)
    }

    /// Whether `node`'s store still removes bytes of `region`.
    fn in_trash(&mut self, node: DataNodeId, region: RegionId) -> bool {
        self.trash()
            .iter()
            .any(|(n, regions)| *n == node && regions.binary_search(&region).is_ok())
    }
}

/// Whether `node` is in `region`'s footprint or a pending legacy deletion of it: what answers
/// almost every [`knows`] question without decoding any procedure.
fn in_footprint(seen: &Seen, node: DataNodeId, region: RegionId) -> bool {
    let state = &seen.state;
    state
        .footprints
        .get(&region)
        .is_some_and(|f| f.data_nodes.contains_key(&node))
        || state
            .legacy_deletions
            .values()
            .any(|d| d.target == node && d.group.region == region)
}

/// Whether `node`'s replica of `region` is exempt from the checks of what the cluster
/// leaves behind: an orphan the workload planted (the reconciler's to find), or a replica on a
/// DataNode lost for good that the cluster recorded as abandoned (its disk is gone).
pub fn excused(seen: &Seen, node: DataNodeId, region: RegionId) -> bool {
    seen.planted.contains(&(node, region))
        || (seen.dead.contains(&node)
            && seen
                .state
                .abandoned_replicas
                .get(&region)
                .is_some_and(|a| a.contains_key(&node)))
}

/// Whether the durable state knows that `node` may hold `region` (see [`known_replicas`]).
fn knows(seen: &mut Seen, node: DataNodeId, region: RegionId) -> bool {
    if in_footprint(seen, node, region) || excused(seen, node, region) {
        return true;
    }
    if seen.known_at != Some(seen.entries) {
        seen.known = known_replicas(seen);
        seen.known_at = Some(seen.entries);
    }
    seen.known.contains(&(node, region))
}

/// The decoded data of unfinished procedure `id`, cached by version.
fn decoded(seen: &mut Seen, id: ProcedureId) -> Option<Decoded> {
    let record = seen.state.procedures.get(&id)?;
    let version = record.version;
    if let Some((v, d)) = seen.decoded.get(&id)
        && *v == version
    {
        return Some(d.clone());
    }
    let d = decode(record);
    seen.decoded.insert(id, (version, d.clone()));
    Some(d)
}

/// Checks what migrations promise, while they run: a group under a planned migration never
/// serves fewer replicas (listed in metadata and live on their DataNode) than when it
/// started, at most its RF; a published target's verified bytes equal its source's.
fn check_migrations(world: &World, problems: &mut Vec<(Invariant, String)>) {
    let ground = Ground::new(world);
    world.observer.with(|seen| {
        if seen.pending.known_changed || seen.migrating.is_none() {
            let ids: Vec<ProcedureId> = seen
                .state
                .unfinished_procedures()
                .filter(|r| r.type_code == MigrateRegionProcedure::TYPE_CODE)
                .map(|r| r.id)
                .collect();
            seen.migration_floor.retain(|id, _| ids.contains(id));
            seen.migrating = Some(ids);
        }
        let published = std::mem::take(&mut seen.pending.published);
        let migrating = seen.migrating.clone().unwrap_or_default();
        for id in migrating {
            let Some(Decoded::Migrate {
                region,
                planned,
                moving,
                target,
                copy_from,
                verified,
            }) = decoded(seen, id)
            else {
                continue;
            };
            let state = &seen.state;
            // A replica abandoned with its DataNode leaves the group whatever runs.
            if planned
                && moving
                && !state.abandoned_replicas.contains_key(&region)
                && let Some(group) = state.region_group(region)
                && let Some(entry) = state.database_of(region).and_then(|d| state.databases.get(d))
            {
                let rf = usize::from(match region.kind {
                    RegionKind::Schema => entry.schema.schema_replication_factor.get(),
                    RegionKind::Data => entry.schema.data_replication_factor.get(),
                });
                let serving = group
                    .replicas
                    .iter()
                    .filter(|n| ground.live(**n, region))
                    .count();
                let floor = *seen
                    .migration_floor
                    .entry(id)
                    .or_insert_with(|| rf.min(serving));
                if serving < floor {
                    problems.push((
                        Invariant::MigrationKeepsReplicas,
                        format!(
                            "{region} serves {serving} replicas during migration {id}, fewer than {floor} (RF {rf})"
                        ),
                    ));
                }
            }
            for (published_region, node) in &published {
                // A migration still in Prepare did not publish it (the cleaner did).
                if *published_region != region || target != Some(*node) || !moving {
                    continue;
                }
                let (Some(len), Some(source)) = (verified, copy_from) else {
                    problems.push((
                        Invariant::MigratedBytesEqual,
                        format!("migration {id} published {region} on {node} before verifying it"),
                    ));
                    continue;
                };
                let copied = ground.bytes(*node, region, len);
                let original = ground.bytes(source, region, len);
                if let (Some(copied), Some(original)) = (copied, original)
                    && (copied.len() as u64 != len || copied != original)
                {
                    problems.push((
                        Invariant::MigratedBytesEqual,
                        format!(
                            "migration {id} published {region} on {node}: its first {len} bytes differ from {source}'s ({} vs {} bytes)",
                            copied.len(),
                            original.len()
                        ),
                    ));
                }
            }
        }
    });
}

/// Checks the safety invariants that what changed since the last check could have broken
/// (see the module docs).
pub fn check_safety(world: &World) {
    let observer = &world.observer;
    let mut migration_problems = Vec::new();
    check_migrations(world, &mut migration_problems);
    for (invariant, detail) in migration_problems {
        observer.violate(invariant, detail);
    }
    let mut ground = Ground::new(world);
    let mut problems: Vec<(Invariant, String)> = Vec::new();
    observer.with(|seen| {
        let pending = std::mem::take(&mut seen.pending);
        seen.pending.rules_from = seen.ghost_rules.len();
        if !pending.known_changed
            && pending.touched.is_empty()
            && pending.rules_from == seen.ghost_rules.len()
        {
            return;
        }
        // No orphan.
        let pairs: Vec<(DataNodeId, RegionId)> = if pending.known_changed {
            seen.held.iter().copied().collect()
        } else {
            pending.touched.iter().copied().collect()
        };
        for (node, region) in pairs {
            if in_footprint(seen, node, region) {
                continue;
            }
            if !ground.live(node, region) {
                // Gone (region ids are never reused; a new create adds it back).
                seen.held.remove(&(node, region));
                continue;
            }
            if !knows(seen, node, region) {
                let database = seen
                    .region_db
                    .get(&region)
                    .map_or_else(|| "?".to_string(), ToString::to_string);
                problems.push((
                    Invariant::NoOrphan,
                    format!(
                        "DataNode {node} holds {region} of {database}, known to no group, queue or unfinished procedure"
                    ),
                ));
            }
        }
        // No ghost: new rules against every DataNode.
        for index in pending.rules_from..seen.ghost_rules.len() {
            let pairs: Vec<(DataNodeId, RegionId)> = match &seen.ghost_rules[index] {
                GhostRule::Region { region, .. } => world
                    .dns
                    .iter()
                    .map(|slot| (slot.id, *region))
                    .collect(),
                // Every replica that may be live, and every region in trash.
                GhostRule::Database { .. } => seen
                    .held
                    .iter()
                    .copied()
                    .chain(
                        ground
                            .trash()
                            .iter()
                            .flat_map(|(n, regions)| regions.iter().map(|r| (*n, *r))),
                    )
                    .collect(),
            };
            for (node, region) in pairs {
                ghost_region(&mut ground, seen, index, node, region, &mut problems);
                ghost_database(&mut ground, seen, index, node, region, &mut problems);
            }
        }
        // No ghost: old rules against what changed.
        for (node, region) in pending.touched {
            let by_region = seen.rules_by_region.get(&region).cloned().unwrap_or_default();
            for index in by_region.into_iter().filter(|i| *i < pending.rules_from) {
                ghost_region(&mut ground, seen, index, node, region, &mut problems);
            }
            let by_database = seen
                .region_db
                .get(&region)
                .and_then(|db| seen.rules_by_database.get(db))
                .cloned()
                .unwrap_or_default();
            for index in by_database.into_iter().filter(|i| *i < pending.rules_from) {
                ghost_database(&mut ground, seen, index, node, region, &mut problems);
            }
        }
    });
    for (invariant, detail) in problems {
        observer.violate(invariant, detail);
    }
}

/// Region rule `index` on (`node`, `region`): nothing of the replica may remain there.
fn ghost_region(
    ground: &mut Ground<'_>,
    seen: &Seen,
    index: usize,
    node: DataNodeId,
    region: RegionId,
    problems: &mut Vec<(Invariant, String)>,
) {
    let Some(GhostRule::Region {
        procedure,
        region: ruled,
        nodes,
    }) = seen.ghost_rules.get(index)
    else {
        return;
    };
    if *ruled != region
        || nodes.as_ref().is_some_and(|n| !n.contains(&node))
        || excused(seen, node, region)
    {
        return;
    }
    let running = seen.nodes.get(&node).is_some_and(|s| {
        s.running()
            .any(|(_, t)| t.region == region && t.rules_before <= index)
    });
    let what = if running {
        "still runs a task on it"
    } else if ground.live(node, region) {
        "still holds it"
    } else if ground.in_trash(node, region) {
        "still holds bytes of it"
    } else {
        return;
    };
    problems.push((
        Invariant::NoGhost,
        format!("removal {procedure} of {region} reported Succeeded, but DataNode {node} {what}"),
    ));
}

/// Database rule `index` on (`node`, `region`): no replica or byte of a region of the
/// deleted database allocated before the report may remain.
fn ghost_database(
    ground: &mut Ground<'_>,
    seen: &Seen,
    index: usize,
    node: DataNodeId,
    region: RegionId,
    problems: &mut Vec<(Invariant, String)>,
) {
    let Some(GhostRule::Database {
        procedure,
        name,
        bound,
    }) = seen.ghost_rules.get(index)
    else {
        return;
    };
    if region.id >= *bound
        || seen.region_db.get(&region) != Some(name)
        || excused(seen, node, region)
    {
        return;
    }
    if ground.live(node, region) || ground.in_trash(node, region) {
        problems.push((
            Invariant::NoGhost,
            format!(
                "deletion {procedure} of database {name} reported Succeeded, but DataNode {node} still holds {region}"
            ),
        ));
    }
}

/// Checks every safety invariant against everything, if anything changed since the last
/// check: the reference [`check_safety`] is compared with.
pub fn check_safety_fully(world: &World) {
    let observer = &world.observer;
    let mut migration_problems = Vec::new();
    check_migrations(world, &mut migration_problems);
    for (invariant, detail) in migration_problems {
        observer.violate(invariant, detail);
    }
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
                if !known.contains(&(node.id, config.region))
                    && !excused(seen, node.id, config.region)
                {
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
        // Per DataNode and region, how many ghost rules existed when the oldest running task
        // on it was accepted.
        let mut running: std::collections::BTreeMap<(DataNodeId, RegionId), usize> =
            std::collections::BTreeMap::new();
        for (id, s) in &seen.nodes {
            for (_, t) in s.running() {
                let oldest = running.entry((*id, t.region)).or_insert(t.rules_before);
                *oldest = (*oldest).min(t.rules_before);
            }
        }
        for (index, rule) in seen.ghost_rules.iter().enumerate() {
            match rule {
                GhostRule::Region {
                    procedure,
                    region,
                    nodes,
                } => {
                    for node in held.iter().filter(|h| {
                        nodes.as_ref().is_none_or(|n| n.contains(&h.id))
                            && !excused(seen, h.id, *region)
                    }) {
                        let live = node.holds(*region);
                        let trash = node.trash.contains(region);
                        let running = running
                            .get(&(node.id, *region))
                            .is_some_and(|before| *before <= index);
                        if live || trash || running {
                            problems.push((
                                Invariant::NoGhost,
                                format!(
                                    "removal {procedure} of {region} reported Succeeded, but DataNode {} {}",
                                    node.id,
                                    if running {
                                        "still runs a task on it"
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
                            .map(|c| c.region)
                            .filter(|r| !excused(seen, node.id, *r));
                        let trash = node.trash.iter().copied().filter(|r| {
                            r.id < *bound
                                && seen.region_db.get(r) == Some(name)
                                && !excused(seen, node.id, *r)
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
            let registered = state.data_nodes.contains_key(&node.id);
            if seen.dead.contains(&node.id) {
                // Lost for good: nothing is judged on its disk but that what it held is
                // recorded as abandoned once it is removed.
                if registered {
                    problems.push((
                        Invariant::Liveness,
                        format!("DataNode {} was lost for good but is still registered", node.id),
                    ));
                    continue;
                }
                let regions = node.live.iter().map(|c| c.region).chain(node.trash.iter().copied());
                for region in regions {
                    if !excused(seen, node.id, region) {
                        problems.push((
                            Invariant::NoOrphan,
                            format!(
                                "DataNode {} was removed for good holding {region}, which no record shows abandoned",
                                node.id
                            ),
                        ));
                    }
                }
                continue;
            }
            for config in &node.live {
                let planted = seen.planted.contains(&(node.id, config.region));
                if planted && registered {
                    problems.push((
                        Invariant::Liveness,
                        format!(
                            "the orphan planted as {} on DataNode {} is still there",
                            config.region, node.id
                        ),
                    ));
                } else if !planted && !registered {
                    problems.push((
                        Invariant::NoOrphan,
                        format!(
                            "DataNode {} was removed but still holds {}",
                            node.id, config.region
                        ),
                    ));
                }
            }
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
                            "DataNode {} still runs {task} ({} {})",
                            node.id,
                            if t.copy { "copy into" } else { "delete" },
                            t.region
                        ),
                    ));
                }
            }
        }
        for (j, up) in running_nodes.iter().enumerate() {
            if !up && !world.dns.get(j).is_some_and(|d| d.dead) {
                problems.push((Invariant::Liveness, format!("DataNode {j} is down")));
            }
        }
    });
    problems
}
