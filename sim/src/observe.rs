//! What the checker knows: the durable ConfigNode state (every synced log entry applied to a
//! shadow [`ClusterState`], exactly what a replay yields), every journal record and region
//! store outcome on every DataNode, the violations found so far, the trace and its hash.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_core::datanode::journal::{JournalRecord, MaintainKindCode, OutcomeCode};
use shoal_core::model::{DataNodeId, DatabaseName, ProcedureId, RegionId, TaskId};
use shoal_core::plan::{ConfigPlan, TransitionWithEffect};
use shoal_core::procedure::ProcedureType;
use shoal_core::procedures::{
    CreateRegionGroupsProcedure, DeleteDatabaseProcedure, MigrateRegionProcedure,
    MigrateRegionState, MigrationMode, RemovalScope, RemoveOrphanRegionProcedure,
    RemoveRegionGroupProcedure,
};
use shoal_core::runtime::{Clock, Millis};
use shoal_core::state::{Applied, ClusterState, ProcedureRecord, ProcedureStatus};
use shoal_core::storage::{CreateOutcome, DeleteOutcome, LogEntry, RegionConfig};

use crate::executor::SimClock;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// A replica outside every known footprint and unfinished procedure.
    NoOrphan,
    /// A deletion reported done while a deletion runs or bytes remain.
    NoGhost,
    /// A task id executed twice on one DataNode, or a replica deleted twice.
    Once,
    /// Something that failed was reported as success.
    HonestOutcomes,
    /// A published group torn down by a creation.
    NoTeardownOfPublished,
    /// Metadata lists a serving replica a DataNode lacks (once quiet).
    MetadataMatchesReplicas,
    /// Not terminal, not empty, or not converged within the bound after faults stopped.
    Liveness,
    /// A group under a planned migration served fewer replicas than when it started (at
    /// most its RF).
    MigrationKeepsReplicas,
    /// A migration published a target whose verified bytes differ from its source's.
    MigratedBytesEqual,
    /// The orphan reconciler deleted a replica that was not an orphan (e.g. one whose
    /// create was in flight).
    ReconcilerDeletesOnlyOrphans,
}

impl Invariant {
    /// A short name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Invariant::NoOrphan => "no-orphan",
            Invariant::NoGhost => "no-ghost",
            Invariant::Once => "once",
            Invariant::HonestOutcomes => "honest-outcomes",
            Invariant::NoTeardownOfPublished => "no-teardown-of-published",
            Invariant::MetadataMatchesReplicas => "metadata-matches-replicas",
            Invariant::Liveness => "liveness",
            Invariant::MigrationKeepsReplicas => "migration-keeps-replicas",
            Invariant::MigratedBytesEqual => "migrated-bytes-equal",
            Invariant::ReconcilerDeletesOnlyOrphans => "reconciler-deletes-only-orphans",
        }
    }
}

/// One broken invariant, when and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant.
    pub invariant: Invariant,
    /// Virtual time (ms).
    pub at_ms: Millis,
    /// What was seen.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] at {} ms: {}",
            self.invariant.name(),
            self.at_ms,
            self.detail
        )
    }
}

/// A deletion reported done: from then on nothing of it may remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GhostRule {
    /// A removal of `region` succeeded on `nodes` (`None`: on every DataNode).
    Region {
        /// The procedure that reported it.
        procedure: ProcedureId,
        /// The region.
        region: RegionId,
        /// Where it was deleted.
        nodes: Option<Vec<DataNodeId>>,
    },
    /// Database `name` was reported deleted; no region of it with an id below `bound` may
    /// remain.
    Database {
        /// The procedure that reported it.
        procedure: ProcedureId,
        /// The database.
        name: DatabaseName,
        /// Region ids allocated before the report.
        bound: u32,
    },
}

/// A task as seen in one DataNode's journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSeen {
    /// The region it deletes (or copies into).
    pub region: RegionId,
    /// A migration's copy, not a deletion.
    pub copy: bool,
    /// Ghost rules reported before it was accepted: a task accepted after a deletion was
    /// reported done is a new one (e.g. a DataNode removal's, of a replica already gone),
    /// not that deletion's ghost.
    pub rules_before: usize,
    /// Its terminal outcome once journaled (`true`: success).
    pub outcome: Option<bool>,
}

/// Everything observed about one DataNode.
#[derive(Debug, Default, Clone)]
pub struct NodeSeen {
    /// Tasks by id, as accepted and finished in the journal (acked ones stay).
    pub tasks: BTreeMap<TaskId, TaskSeen>,
    /// Regions whose deletion task journaled Success here.
    pub deleted_ok: BTreeSet<RegionId>,
    /// Per region: the outcome of the last store deletion (`true`: no error).
    pub last_delete_ok: BTreeMap<RegionId, bool>,
    /// Per region: store deletions that removed a replica.
    pub deletions: BTreeMap<RegionId, u32>,
}

impl NodeSeen {
    /// Tasks accepted and not yet terminal (they run, or resume after a restart).
    pub fn running(&self) -> impl Iterator<Item = (&TaskId, &TaskSeen)> {
        self.tasks.iter().filter(|(_, t)| t.outcome.is_none())
    }
}

/// What changed since the last incremental safety check: only these can have broken a
/// safety invariant that held at the last check (see [`crate::invariants::check_safety`]).
#[derive(Debug, Default)]
pub struct PendingChecks {
    /// A durable log entry was applied: the replicas the ConfigNode knows of may have shrunk.
    pub known_changed: bool,
    /// A replica was created, or a deletion accepted, on these (DataNode, region) pairs.
    pub touched: BTreeSet<(DataNodeId, RegionId)>,
    /// Ghost rules from this index on were added since.
    pub rules_from: usize,
    /// Targets published by migrations (`AddRegionLocation`): their bytes are compared with
    /// the copy's source.
    pub published: Vec<(RegionId, DataNodeId)>,
}

impl Seen {
    /// Adds a ghost rule (checked in full at the next check, then on every change it names).
    pub fn add_ghost_rule(&mut self, rule: GhostRule) {
        let index = self.ghost_rules.len();
        match &rule {
            GhostRule::Region { region, .. } => {
                self.rules_by_region.entry(*region).or_default().push(index);
            }
            GhostRule::Database { name, .. } => {
                self.rules_by_database
                    .entry(name.clone())
                    .or_default()
                    .push(index);
            }
        }
        self.ghost_rules.push(rule);
    }

    /// A later creation generation may put `node` back into `region`'s group (a migration
    /// back to a DataNode the region left): replicas-scope ghost rules stop judging it there.
    fn footprint_recorded(&mut self, node: DataNodeId, region: RegionId) {
        let indices = self
            .rules_by_region
            .get(&region)
            .cloned()
            .unwrap_or_default();
        for index in indices {
            if let Some(GhostRule::Region {
                nodes: Some(nodes), ..
            }) = self.ghost_rules.get_mut(index)
            {
                nodes.retain(|n| *n != node);
            }
        }
        if let Some(state) = self.nodes.get_mut(&node) {
            // A new replica there may be deleted once more.
            state.deletions.remove(&region);
            state.deleted_ok.remove(&region);
        }
    }

    /// A replica of `region` was created on `node` (or found there at the start).
    pub fn replica_created(&mut self, node: DataNodeId, region: RegionId, database: DatabaseName) {
        self.dirty = true;
        self.region_db.insert(region, database);
        self.held.insert((node, region));
        self.pending.touched.insert((node, region));
    }
}

/// Decoded persistent data of a procedure record, as the checker needs it.
#[derive(Debug, Clone)]
pub enum Decoded {
    /// A creation: its planned groups (region, intended replicas).
    Create(Vec<(RegionId, Vec<DataNodeId>)>),
    /// A removal.
    Remove {
        /// The region.
        region: RegionId,
        /// Group or replicas scope.
        scope: RemovalScope,
        /// DataNodes it deletes on besides the footprint (all of them in replicas scope).
        targets: Vec<DataNodeId>,
        /// DataNodes whose deletion it recorded as succeeded.
        deleted: Vec<DataNodeId>,
    },
    /// A database deletion.
    DeleteDatabase(DatabaseName),
    /// A migration.
    Migrate {
        /// The region.
        region: RegionId,
        /// Planned move (the group must keep its replicas), not a repair.
        planned: bool,
        /// Past `Prepare` and not undoing: it holds the group and is moving a replica.
        moving: bool,
        /// The target once chosen.
        target: Option<DataNodeId>,
        /// The replica the copy reads.
        copy_from: Option<DataNodeId>,
        /// Bytes the target was verified to hold equal to the source.
        verified: Option<u64>,
    },
    /// An orphan removal.
    Orphan {
        /// Where the orphan is.
        node: DataNodeId,
        /// Which.
        region: RegionId,
        /// Its deletion task once chosen.
        task: Option<TaskId>,
    },
    /// Something else (or undecodable).
    Other,
}

/// Decodes a procedure record's data.
pub fn decode(record: &ProcedureRecord) -> Decoded {
    match record.type_code {
        CreateRegionGroupsProcedure::TYPE_CODE => {
            match CreateRegionGroupsProcedure::decode(&record.data) {
                Ok(p) => Decoded::Create(
                    p.data()
                        .groups
                        .iter()
                        .map(|g| (g.region, g.replicas.clone()))
                        .collect(),
                ),
                Err(_) => Decoded::Other,
            }
        }
        RemoveRegionGroupProcedure::TYPE_CODE => {
            match RemoveRegionGroupProcedure::decode(&record.data) {
                Ok(p) => {
                    let d = p.data();
                    Decoded::Remove {
                        region: d.region,
                        scope: d.scope,
                        targets: d.targets.clone(),
                        deleted: d.deleted.iter().copied().collect(),
                    }
                }
                Err(_) => Decoded::Other,
            }
        }
        DeleteDatabaseProcedure::TYPE_CODE => match DeleteDatabaseProcedure::decode(&record.data) {
            Ok(p) => Decoded::DeleteDatabase(p.data().name.clone()),
            Err(_) => Decoded::Other,
        },
        MigrateRegionProcedure::TYPE_CODE => match MigrateRegionProcedure::decode(&record.data) {
            Ok(p) => {
                let d = p.data();
                Decoded::Migrate {
                    region: d.region,
                    planned: d.mode == MigrationMode::Move,
                    moving: !matches!(
                        d.state,
                        MigrateRegionState::Prepare | MigrateRegionState::Undo
                    ),
                    target: d.target,
                    copy_from: d.copy_from,
                    verified: d.copied.as_ref().map(|c| c.len),
                }
            }
            Err(_) => Decoded::Other,
        },
        RemoveOrphanRegionProcedure::TYPE_CODE => {
            match RemoveOrphanRegionProcedure::decode(&record.data) {
                Ok(p) => {
                    let d = p.data();
                    Decoded::Orphan {
                        node: d.node,
                        region: d.region,
                        task: d.task,
                    }
                }
                Err(_) => Decoded::Other,
            }
        }
        _ => Decoded::Other,
    }
}

/// The observed world; see the module docs.
#[derive(Default)]
pub struct Seen {
    /// The durable ConfigNode state.
    pub state: ClusterState,
    /// Regions ever published.
    pub published: BTreeSet<RegionId>,
    /// The database of every region ever created on a DataNode.
    pub region_db: BTreeMap<RegionId, DatabaseName>,
    /// Per DataNode.
    pub nodes: BTreeMap<DataNodeId, NodeSeen>,
    /// Deletions reported done.
    pub ghost_rules: Vec<GhostRule>,
    /// Decoded data of unfinished procedures, by (id, version).
    pub decoded: BTreeMap<ProcedureId, (u64, Decoded)>,
    /// Violations so far (each detail once).
    pub violations: Vec<Violation>,
    reported: BTreeSet<String>,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Procedure states interrupted by a ConfigNode crash or leader change.
    pub interrupted: BTreeMap<String, u64>,
    /// [`crate::invariants::known_replicas`] as of `known_at` durable entries.
    pub known: BTreeSet<(DataNodeId, RegionId)>,
    /// How many durable entries `known` reflects.
    pub known_at: Option<u64>,
    /// Something changed since the last safety check (for the full checks).
    pub dirty: bool,
    /// What changed since the last incremental safety check.
    pub pending: PendingChecks,
    /// Every (DataNode, region) that may hold a live replica: each replica ever created,
    /// until a check finds it gone. The incremental checks look up the stores only here.
    pub held: BTreeSet<(DataNodeId, RegionId)>,
    /// Indices into `ghost_rules` by region (region rules) and database (database rules).
    pub rules_by_region: BTreeMap<RegionId, Vec<usize>>,
    /// See `rules_by_region`.
    pub rules_by_database: BTreeMap<DatabaseName, Vec<usize>>,
    /// Durable log entries seen.
    pub entries: u64,
    /// Journal records seen.
    pub journal_records: u64,
    /// DataNodes lost for good: their disks are judged only for replicas recorded as
    /// abandoned.
    pub dead: BTreeSet<DataNodeId>,
    /// Orphans the workload planted, where.
    pub planted: BTreeSet<(DataNodeId, RegionId)>,
    /// Deletion tasks of orphan removals, with what each deletes.
    pub orphan_tasks: BTreeMap<TaskId, (DataNodeId, RegionId)>,
    /// Per unfinished planned migration: the fewest replicas its group may serve (its
    /// serving replicas when first seen, at most its RF).
    pub migration_floor: BTreeMap<ProcedureId, usize>,
    /// Unfinished migrations as of the last durable entry (`None`: not listed yet).
    pub migrating: Option<Vec<ProcedureId>>,
    /// Shapes of log entries decoded and compared with their proposed plan (see
    /// [`Observer::log_entry_durable`]).
    codec_checked: BTreeSet<(u16, u32, u32, u8, bool)>,
    trace: Option<Vec<String>>,
    hash: u64,
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01B3;

/// Folds `value` into hash `h` (one multiply-xorshift round).
fn mix(h: u64, value: u64) -> u64 {
    let x = (h ^ value).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29)
}

/// Shared handle on [`Seen`]; clones share it.
#[derive(Clone)]
pub struct Observer {
    seen: Arc<Mutex<Seen>>,
    clock: SimClock,
}

impl Observer {
    /// An observer starting from durable state `state`; `trace` keeps a readable trace.
    pub fn new(clock: SimClock, state: ClusterState, trace: bool) -> Self {
        let seen = Seen {
            state,
            trace: trace.then(Vec::new),
            hash: 0xCBF2_9CE4_8422_2325,
            pending: PendingChecks {
                known_changed: true,
                ..Default::default()
            },
            ..Default::default()
        };
        Self {
            seen: Arc::new(Mutex::new(seen)),
            clock,
        }
    }

    /// Runs `f` on what was seen.
    pub fn with<R>(&self, f: impl FnOnce(&mut Seen) -> R) -> R {
        f(&mut lock(&self.seen))
    }

    /// Now, in virtual ms.
    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// Feeds `bytes` into the trace hash.
    pub fn hash_bytes(&self, bytes: &[u8]) {
        let mut seen = lock(&self.seen);
        let mut h = seen.hash;
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        seen.hash = h;
    }

    /// Feeds one number into the trace hash.
    pub fn hash_u64(&self, value: u64) {
        let mut seen = lock(&self.seen);
        seen.hash = mix(seen.hash, value);
    }

    /// Feeds an encoded log entry or journal record into the trace hash: its length and its
    /// header, which holds its kind and a checksum of its body (so equal hashes still mean
    /// equal records, without hashing every byte).
    fn hash_record(&self, bytes: &[u8]) {
        let mut header = [0u8; 8];
        let n = bytes.len().min(6);
        header[..n].copy_from_slice(&bytes[..n]);
        let mut seen = lock(&self.seen);
        seen.hash = mix(
            mix(seen.hash, bytes.len() as u64),
            u64::from_le_bytes(header),
        );
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        lock(&self.seen).hash
    }

    /// Whether a readable trace is kept.
    pub fn tracing(&self) -> bool {
        lock(&self.seen).trace.is_some()
    }

    /// Adds a line to the trace (built only when tracing). The hash never takes trace text,
    /// so it is the same with and without a readable trace.
    pub fn trace(&self, line: impl FnOnce() -> String) {
        let now = self.now();
        let mut seen = lock(&self.seen);
        if let Some(trace) = seen.trace.as_mut() {
            trace.push(format!("{now:>8} ms  {}", line()));
        }
    }

    /// The readable trace.
    pub fn take_trace(&self) -> Vec<String> {
        lock(&self.seen).trace.take().unwrap_or_default()
    }

    /// Records a violation (each distinct detail once).
    pub fn violate(&self, invariant: Invariant, detail: String) {
        let at_ms = self.now();
        let mut seen = lock(&self.seen);
        let key = format!("{}:{detail}", invariant.name());
        if !seen.reported.insert(key) {
            return;
        }
        let violation = Violation {
            invariant,
            at_ms,
            detail,
        };
        if let Some(trace) = seen.trace.as_mut() {
            trace.push(format!("{at_ms:>8} ms  VIOLATION {violation}"));
        }
        seen.violations.push(violation);
    }

    /// Counts one injected fault.
    pub fn count_fault(&self, what: &'static str) {
        *lock(&self.seen).faults.entry(what).or_default() += 1;
        self.trace(|| format!("fault: {what}"));
    }

    /// Records the procedure states an interruption (crash, leader change) hit.
    pub fn interrupted_now(&self) {
        let mut seen = lock(&self.seen);
        let states: Vec<String> = seen
            .state
            .unfinished_procedures()
            .map(|r| format!("{}/{}", r.type_name, r.state_name))
            .collect();
        for state in states {
            *seen.interrupted.entry(state).or_default() += 1;
        }
    }

    /// A log entry became durable: apply it to the durable state and check what it reports.
    ///
    /// `proposed` is the plan its proposer encoded into it (see [`crate::disk::SimConsensus`]);
    /// applying it saves decoding every entry. What a replay yields is what decodes from the
    /// bytes, so the first entry of every shape (plan code; procedure type, state and status)
    /// in a run is decoded anyway and must equal the proposed plan.
    pub fn log_entry_durable(&self, entry: &LogEntry, proposed: Option<ConfigPlan>) {
        self.hash_u64(entry.index);
        self.hash_record(&entry.payload);
        let plan = match proposed {
            Some(plan) if !self.first_of_its_shape(&plan) => plan,
            proposed => match ConfigPlan::decode(&entry.payload) {
                Ok(plan) => {
                    if proposed.as_ref().is_some_and(|p| *p != plan) {
                        self.violate(
                            Invariant::HonestOutcomes,
                            format!(
                                "log entry {} decodes to another plan than was proposed: {}",
                                entry.index,
                                describe_plan(&plan)
                            ),
                        );
                    }
                    plan
                }
                Err(e) => {
                    self.violate(
                        Invariant::HonestOutcomes,
                        format!("log entry {} does not decode: {e}", entry.index),
                    );
                    return;
                }
            },
        };
        let (result, finished, spawned) = {
            let mut seen = lock(&self.seen);
            seen.entries += 1;
            seen.dirty = true;
            seen.pending.known_changed = true;
            let result = seen.state.apply(&plan);
            let mut finished = None;
            let mut spawned = Vec::new();
            match (&plan, &result) {
                (ConfigPlan::CreateRegionGroups(p), Ok(_)) => {
                    for group in &p.groups {
                        seen.published.insert(group.region);
                    }
                }
                (ConfigPlan::AddRegionLocation(p), Ok(_)) => {
                    seen.published.insert(p.region);
                    seen.pending.published.push((p.region, p.data_node));
                }
                (ConfigPlan::RecordReplicaFootprints(p), Ok(_)) => {
                    for group in &p.groups {
                        for node in &group.replicas {
                            seen.footprint_recorded(*node, group.region);
                        }
                    }
                }
                (
                    ConfigPlan::UpdateProcedure(p)
                    | ConfigPlan::TransitionWithEffect(TransitionWithEffect { update: p, .. }),
                    Ok(Applied::ProcedureUpdated { children }),
                ) => {
                    if p.record.status == ProcedureStatus::Succeeded {
                        finished = seen.state.procedures.get(&p.record.id).cloned();
                    }
                    if p.record.type_code == RemoveOrphanRegionProcedure::TYPE_CODE
                        && let Decoded::Orphan {
                            node,
                            region,
                            task: Some(task),
                        } = decode(&p.record)
                    {
                        seen.orphan_tasks.insert(task, (node, region));
                    }
                    spawned = children
                        .iter()
                        .filter_map(|c| seen.state.procedures.get(c).cloned())
                        .collect();
                }
                _ => {}
            }
            (result, finished, spawned)
        };
        if self.tracing() {
            let text = describe_plan(&plan);
            let verdict = match &result {
                Ok(_) => String::new(),
                Err(r) => format!("  -> rejected: {r}"),
            };
            self.trace(|| {
                format!(
                    "commit #{} term {}: {text}{verdict}",
                    entry.index, entry.term
                )
            });
        }
        for child in spawned {
            self.child_spawned(&child);
        }
        if let Some(record) = finished {
            self.procedure_succeeded(&record);
        }
    }

    /// Whether no entry of `plan`'s shape was seen yet in this run (and records it).
    fn first_of_its_shape(&self, plan: &ConfigPlan) -> bool {
        let code = plan.code() as u16;
        let shape = match plan {
            ConfigPlan::UpdateProcedure(p) => (
                code,
                p.record.type_code,
                p.record.state_code,
                p.record.status.code(),
                !p.spawn.is_empty(),
            ),
            _ => (code, 0, 0, 0, false),
        };
        lock(&self.seen).codec_checked.insert(shape)
    }

    fn child_spawned(&self, child: &ProcedureRecord) {
        let parent_type = {
            let seen = lock(&self.seen);
            child
                .parent
                .and_then(|p| seen.state.procedures.get(&p))
                .map(|p| p.type_code)
        };
        if parent_type != Some(CreateRegionGroupsProcedure::TYPE_CODE) {
            return;
        }
        if let Decoded::Remove { region, .. } = decode(child) {
            if lock(&self.seen).published.contains(&region) {
                self.violate(
                    Invariant::NoTeardownOfPublished,
                    format!(
                        "creation {} tears down {region}, which was published",
                        child.parent.map_or(0, |p| p.0)
                    ),
                );
            }
        }
    }

    fn procedure_succeeded(&self, record: &ProcedureRecord) {
        match decode(record) {
            Decoded::Remove {
                region,
                scope,
                targets,
                deleted,
            } => {
                let nodes = (scope == RemovalScope::Replicas).then(|| targets.clone());
                let missing: Vec<DataNodeId> = {
                    let seen = lock(&self.seen);
                    deleted
                        .iter()
                        .filter(|n| {
                            !seen
                                .nodes
                                .get(n)
                                .is_some_and(|s| s.deleted_ok.contains(&region))
                        })
                        .copied()
                        .collect()
                };
                let abandoned: Vec<DataNodeId> = {
                    let seen = lock(&self.seen);
                    deleted
                        .iter()
                        .filter(|n| {
                            seen.state
                                .abandoned_replicas
                                .get(&region)
                                .and_then(|a| a.get(n))
                                .is_some_and(|a| a.deletions.contains(&record.id))
                        })
                        .copied()
                        .collect()
                };
                if !abandoned.is_empty() {
                    self.violate(
                        Invariant::HonestOutcomes,
                        format!(
                            "removal {} of {region} recorded deletions on {abandoned:?}, where its deletion was abandoned",
                            record.id
                        ),
                    );
                }
                if !missing.is_empty() {
                    self.violate(
                        Invariant::HonestOutcomes,
                        format!(
                            "removal {} of {region} succeeded, but no deletion reached Success on {missing:?}",
                            record.id
                        ),
                    );
                }
                lock(&self.seen).add_ghost_rule(GhostRule::Region {
                    procedure: record.id,
                    region,
                    nodes,
                });
            }
            Decoded::DeleteDatabase(name) => {
                let mut seen = lock(&self.seen);
                let bound = seen.state.next_region_id;
                seen.add_ghost_rule(GhostRule::Database {
                    procedure: record.id,
                    name,
                    bound,
                });
            }
            _ => {}
        }
    }

    /// A DataNode journaled `bytes`.
    pub fn journal_append(&self, node: DataNodeId, bytes: &[u8]) {
        self.hash_u64(u64::from(node.0));
        self.hash_record(bytes);
        let Ok(record) = JournalRecord::decode(bytes) else {
            self.violate(
                Invariant::HonestOutcomes,
                format!("DataNode {node} journaled an undecodable record"),
            );
            return;
        };
        let mut problems = Vec::new();
        {
            let mut guard = lock(&self.seen);
            let seen = &mut *guard;
            seen.dirty = true;
            seen.journal_records += 1;
            let mut rules_before = seen.ghost_rules.len();
            let state = seen.nodes.entry(node).or_default();
            match &record {
                JournalRecord::TaskAccepted { task_id, kind } => {
                    let region = kind.region;
                    if let Some(prior) = state.tasks.get(task_id) {
                        // The same task again: it is as old as its first acceptance.
                        rules_before = rules_before.min(prior.rules_before);
                        if prior.outcome.is_some() {
                            problems.push((
                                Invariant::Once,
                                format!("DataNode {node} accepted {task_id} again after it finished: it runs twice"),
                            ));
                        }
                    }
                    state.tasks.insert(
                        *task_id,
                        TaskSeen {
                            region,
                            copy: kind.code == MaintainKindCode::CopyRegion,
                            rules_before,
                            outcome: None,
                        },
                    );
                    seen.pending.touched.insert((node, kind.region));
                }
                JournalRecord::TaskFinished {
                    task_id, outcome, ..
                } => {
                    let success = *outcome == OutcomeCode::Success;
                    match state.tasks.get_mut(task_id) {
                        Some(task) => {
                            if task.outcome.is_some() {
                                problems.push((
                                    Invariant::Once,
                                    format!("DataNode {node} finished {task_id} twice"),
                                ));
                            }
                            task.outcome = Some(success);
                            let region = task.region;
                            if success && !task.copy {
                                if state.last_delete_ok.get(&region) != Some(&true) {
                                    problems.push((
                                        Invariant::HonestOutcomes,
                                        format!("DataNode {node} reported {task_id} (delete {region}) Success, but its last deletion of {region} failed"),
                                    ));
                                }
                                state.deleted_ok.insert(region);
                            }
                        }
                        None => problems.push((
                            Invariant::HonestOutcomes,
                            format!("DataNode {node} finished {task_id}, never accepted"),
                        )),
                    }
                }
                JournalRecord::TaskForgotten { .. }
                | JournalRecord::EpochSeen { .. }
                | JournalRecord::RegionFenced { .. } => {}
            }
        }
        for (invariant, detail) in problems {
            self.violate(invariant, detail);
        }
        self.trace(|| format!("journal {node}: {record:?}"));
    }

    /// DataNode `node` created (or found) a replica.
    pub fn region_created(&self, node: DataNodeId, config: &RegionConfig, outcome: CreateOutcome) {
        lock(&self.seen).replica_created(node, config.region, config.database.clone());
        self.trace(|| format!("store {node}: create {} -> {outcome:?}", config.region));
    }

    /// DataNode `node`'s store finished a deletion of `region` (`None`: it failed).
    pub fn region_delete_result(
        &self,
        node: DataNodeId,
        region: RegionId,
        outcome: Option<DeleteOutcome>,
    ) {
        let spared = {
            let seen = lock(&self.seen);
            let by_reconciler = seen.nodes.get(&node).is_some_and(|s| {
                let mut orphan = false;
                let mut other = false;
                for (task, _) in s.running().filter(|(_, t)| t.region == region) {
                    if seen.orphan_tasks.contains_key(task) {
                        orphan = true;
                    } else {
                        other = true;
                    }
                }
                orphan && !other
            });
            !by_reconciler || seen.planted.contains(&(node, region))
        };
        if !spared && matches!(outcome, Some(DeleteOutcome::Deleted { .. })) {
            self.violate(
                Invariant::ReconcilerDeletesOnlyOrphans,
                format!(
                    "the orphan reconciler deleted {region} on DataNode {node}, which was no orphan"
                ),
            );
        }
        let twice = {
            let mut seen = lock(&self.seen);
            seen.dirty = true;
            let state = seen.nodes.entry(node).or_default();
            state.last_delete_ok.insert(region, outcome.is_some());
            if matches!(outcome, Some(DeleteOutcome::Deleted { .. })) {
                let count = state.deletions.entry(region).or_default();
                *count += 1;
                *count > 1
            } else {
                false
            }
        };
        if twice {
            self.violate(
                Invariant::Once,
                format!("a replica of {region} on DataNode {node} was deleted a second time"),
            );
        }
        self.trace(|| format!("store {node}: delete {region} -> {outcome:?}"));
    }
}

/// A one-line description of a plan for the trace.
pub fn describe_plan(plan: &ConfigPlan) -> String {
    let mut out = String::new();
    match plan {
        ConfigPlan::UpdateProcedure(p) => {
            let _ = write!(
                out,
                "UpdateProcedure {} {} -> {:?}/{}",
                p.record.id, p.record.type_name, p.record.status, p.record.state_name
            );
            if !p.spawn.is_empty() {
                let _ = write!(out, " spawning {}", p.spawn.len());
            }
        }
        ConfigPlan::TransitionWithEffect(p) => {
            let u = &p.update;
            let _ = write!(
                out,
                "TransitionWithEffect {} {} -> {:?}/{} with {}",
                u.record.id,
                u.record.type_name,
                u.record.status,
                u.record.state_name,
                describe_plan(&p.effect)
            );
        }
        ConfigPlan::SubmitProcedure(p) => {
            let _ = write!(
                out,
                "SubmitProcedure {} key {:?}",
                p.procedure.type_name, p.request_key
            );
        }
        other => {
            let _ = write!(out, "{other:?}");
        }
    }
    out
}
