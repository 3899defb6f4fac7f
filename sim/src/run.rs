//! One run: build the world from a [`Scenario`], play its events while the scheduler runs
//! the cluster, stop the faults, and check liveness within the bound.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use shoal_core::api::DataNodeApi as _;
use shoal_core::confignode::ConfigNodeError;
use shoal_core::model::{
    DataNodeId, DatabaseName, DatabaseSchema, ProcedureId, RegionId, RegionKind, RegionReplicaSet,
    ReplicationFactor, TaskId,
};
use shoal_core::mutations::{self, Mutation};
use shoal_core::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, RegisterDataNode, ReserveRegionIds,
};
use shoal_core::procedure::ProcedureType as _;
use shoal_core::procedures::{RemoveDataNodeProcedure, removal_refusal};
use shoal_core::runtime::{BoxFuture, Clock};
use shoal_core::snapshot::{self, ClusterStateV1, RegionMaintainTaskV2, SnapshotV1};
use shoal_core::state::{ClusterState, DataNodeStatus, RegionMaintainKind};
use shoal_core::storage::{RegionConfig, RegionStore};

use crate::disk::{BYTE_UNIT, DiskFaults, Disks};
use crate::executor::{SimClock, SimRng};
use crate::invariants::{check_safety, check_safety_fully, quiet_problems};
use crate::net::{NetFaults, NetPolicy};
use crate::observe::{Invariant, Observer, Violation};
use crate::scenario::{Op, Scenario};
use crate::world::{CLIENT, NodeFailure, World, cn_tag};

/// How to run a scenario.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Keep a readable trace.
    pub trace: bool,
    /// A re-introduced bug (feature `sim-mutations`).
    pub mutation: Option<Mutation>,
    /// Re-check every safety invariant against everything after each change, instead of
    /// only what the change could break (slow; the reference the incremental checks are
    /// tested against).
    pub full_checks: bool,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Every violation, in the order found.
    pub violations: Vec<Violation>,
    /// Hash of everything that happened (equal for equal runs).
    pub trace_hash: u64,
    /// Scenario events played.
    pub events: usize,
    /// Faults injected, by kind (events and per-message/per-operation faults).
    pub faults: BTreeMap<String, u64>,
    /// Procedure states interrupted by crashes and leader changes.
    pub interrupted: BTreeMap<String, u64>,
    /// Task polls.
    pub polls: u64,
    /// Durable log entries.
    pub entries: u64,
    /// Virtual time at the end (ms).
    pub end_ms: u64,
    /// When the cluster was quiet and converged, if it was.
    pub converged_ms: Option<u64>,
    /// The readable trace (with [`RunOptions::trace`]).
    pub trace: Vec<String>,
}

impl Outcome {
    /// Whether any invariant broke.
    pub fn failed(&self) -> bool {
        !self.violations.is_empty()
    }

    /// The invariants broken, once each.
    pub fn broken(&self) -> BTreeSet<Invariant> {
        self.violations.iter().map(|v| v.invariant).collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Event(usize),
    RestartDn(usize),
    RestartCn(usize),
    Heal(usize, usize),
    StopFaults,
    Check,
    AutoSnapshot,
}

/// The leader snapshots once this many entries were applied since its last snapshot (the
/// `shoal confignode` process does the same every 10,000; fewer here keep replays short).
const SNAPSHOT_EVERY: u64 = 50;

/// Planted orphans get region ids from here on: far above any the cluster allocates.
const PLANTED_REGION_IDS: u32 = 1_000_000;

/// Name of database `db` of the pool.
fn db_name(db: u8) -> DatabaseName {
    // Pool names are valid by construction.
    DatabaseName::new(format!("db{db}")).unwrap_or_else(|_| unreachable_name())
}

#[allow(clippy::panic)]
fn unreachable_name() -> DatabaseName {
    panic!("pool database names are valid")
}

fn rf(n: u8) -> ReplicationFactor {
    ReplicationFactor::new(n.clamp(1, 7)).unwrap_or_else(|_| unreachable_rf())
}

#[allow(clippy::panic)]
fn unreachable_rf() -> ReplicationFactor {
    panic!("1..=7 is a valid replication factor")
}

/// Runs `scenario`; a pure function of (scenario, options).
pub fn run(scenario: &Scenario, options: &RunOptions) -> Outcome {
    mutations::set(options.mutation);
    let outcome = Runner::new(scenario, options).play();
    mutations::set(None);
    outcome
}

struct Runner<'a> {
    scenario: &'a Scenario,
    world: World,
    sched: SimRng,
    agenda: BTreeMap<(u64, u64), Action>,
    seq: u64,
    polls: u64,
    events: usize,
    partitions: BTreeSet<(usize, usize)>,
    down_cns: BTreeSet<usize>,
    settling: bool,
    deadline: u64,
    converged: Option<u64>,
    done: bool,
    /// Durable records seen, and when that count last changed.
    last_progress: (u64, u64),
    /// Applied index of the last automatic snapshot.
    snapshotted: u64,
    /// See [`RunOptions::full_checks`].
    full_checks: bool,
    /// Start (ms) of the current [`COMMIT_WINDOW_MS`] and the durable entries before it.
    commit_window: (u64, u64),
    /// DataNodes the workload asked to remove (planned), whether or not the request has
    /// landed yet: a request delayed by a crashed leader still takes the node out of service
    /// once it lands.
    removals_requested: BTreeSet<DataNodeId>,
}

/// A settle phase without any durable change for this long is stuck (ms). Longer than every
/// backoff and poll interval of the configuration.
const STALL_MS: u64 = 30_000;

/// Polls within one instant of virtual time beyond which the cluster is spinning (a run of
/// the default scenario peaks at about 450). Every commit ends a poll (see
/// [`crate::disk::SimConsensus`]), so a loop of commits cannot hide inside one poll.
const RUNAWAY_POLLS: u64 = 20_000;

/// Durable log entries within [`COMMIT_WINDOW_MS`] of virtual time beyond which the cluster
/// is spinning through time (commits that make no progress, e.g. a step refused forever
/// and retried without backoff). A run of the default scenario peaks at about 220 in one
/// second.
const RUNAWAY_COMMITS: u64 = 5_000;

/// See [`RUNAWAY_COMMITS`].
const COMMIT_WINDOW_MS: u64 = 10_000;

impl<'a> Runner<'a> {
    fn new(scenario: &'a Scenario, options: &RunOptions) -> Self {
        let clock = SimClock::new();
        let (initial, v1) = if scenario.legacy {
            let v1 = legacy_snapshot(scenario.data_nodes);
            let state = v1.clone().upgrade().upgrade().state;
            (state, Some(v1))
        } else {
            (ClusterState::default(), None)
        };
        let observer = Observer::new(clock.clone(), initial, options.trace);
        let disks = Disks::new(
            SimRng::new(scenario.seed, 3),
            DiskFaults::default(),
            clock.clone(),
            observer.clone(),
        );
        let policy = NetPolicy::new(
            SimRng::new(scenario.seed, 4),
            NetFaults::default(),
            observer.clone(),
        );
        let first_index = v1.as_ref().map_or(1, |v| v.last_index + 1);
        let world = World::new(scenario, first_index, observer, clock, disks, policy);
        let mut runner = Runner {
            scenario,
            world,
            sched: SimRng::new(scenario.seed, 5),
            agenda: BTreeMap::new(),
            seq: 0,
            polls: 0,
            events: 0,
            partitions: BTreeSet::new(),
            down_cns: BTreeSet::new(),
            settling: false,
            deadline: u64::MAX,
            converged: None,
            done: false,
            last_progress: (0, 0),
            snapshotted: 0,
            full_checks: options.full_checks,
            commit_window: (0, 0),
            removals_requested: BTreeSet::new(),
        };
        if let Some(v1) = v1 {
            runner.seed_legacy(&v1);
        }
        runner
    }

    fn schedule(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.agenda.insert((at, self.seq), action);
    }

    /// Runs every runnable task, then checks safety if anything changed. Checked once per
    /// instant of virtual time: every disk and network operation takes time, so a state
    /// that lasts no time at all is one nobody could observe either.
    fn drain(&mut self) {
        let mut polls = 0u64;
        while let Some(key) = self.world.exec.step(&mut self.sched) {
            self.polls += 1;
            polls += 1;
            self.world.observer.hash_u64(key);
            // Right after the poll that made the aimed entry durable.
            self.crash_aimed();
            if polls > RUNAWAY_POLLS {
                self.world.observer.violate(
                    Invariant::Liveness,
                    format!("livelock: {polls} polls without virtual time passing"),
                );
                self.done = true;
                self.deadline = 0;
                break;
            }
        }
        if self.full_checks {
            check_safety_fully(&self.world);
        } else {
            check_safety(&self.world);
        }
        self.check_commit_rate();
    }

    /// Reports a livelock if the cluster commits far more than any workload needs.
    fn check_commit_rate(&mut self) {
        let now = self.world.clock.now_ms();
        let entries = self.world.observer.with(|seen| seen.entries);
        if now >= self.commit_window.0 + COMMIT_WINDOW_MS {
            self.commit_window = (now, entries);
        }
        let commits = entries - self.commit_window.1;
        if commits > RUNAWAY_COMMITS && !self.done {
            self.world.observer.violate(
                Invariant::Liveness,
                format!(
                    "livelock: {commits} commits within {} s of virtual time",
                    COMMIT_WINDOW_MS / 1_000
                ),
            );
            self.done = true;
            self.deadline = 0;
        }
    }

    /// Runs until `until` holds or virtual time passes `limit_ms`.
    fn run_until(&mut self, limit_ms: u64, until: impl Fn(&Self) -> bool) -> bool {
        loop {
            self.drain();
            if until(self) {
                return true;
            }
            match self.world.clock.next_deadline() {
                Some(d) if d <= limit_ms => self.world.clock.advance_to(d),
                _ => return until(self),
            }
        }
    }

    fn play(mut self) -> Outcome {
        for j in 0..self.scenario.data_nodes {
            self.world.start_dn(j);
        }
        self.world.start_cn(0, true);
        if !self.scenario.legacy {
            self.register_data_nodes();
        }
        let base = self.world.clock.now_ms();
        self.world.disks.set_faults(self.scenario.disk.clone());
        self.world.policy.set_faults(self.scenario.net.clone());
        for (index, event) in self.scenario.events.iter().enumerate() {
            self.schedule(base + event.at_ms, Action::Event(index));
        }
        self.schedule(base + self.scenario.faults_end_ms, Action::StopFaults);
        self.schedule(base + 2_000, Action::AutoSnapshot);
        while !self.done {
            self.drain();
            self.supervise();
            let timer = self.world.clock.next_deadline();
            let agenda = self.agenda.keys().next().map(|(t, _)| *t);
            let now = self.world.clock.now_ms();
            match (agenda, timer) {
                (Some(a), t) if t.is_none_or(|t| a <= t) => {
                    self.world.clock.advance_to(a.max(now));
                    if let Some((_, action)) = self.agenda.pop_first() {
                        self.perform(action);
                    }
                }
                (_, Some(t)) => self.world.clock.advance_to(t),
                _ => break,
            }
            if self.world.clock.now_ms() > self.deadline.saturating_add(1_000) {
                break;
            }
        }
        let observer = self.world.observer.clone();
        let end_ms = self.world.clock.now_ms();
        let (violations, mut faults, interrupted, entries) = observer.with(|seen| {
            (
                seen.violations.clone(),
                seen.faults
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), *v))
                    .collect::<BTreeMap<_, _>>(),
                seen.interrupted.clone(),
                seen.entries,
            )
        });
        for event in &self.scenario.events {
            if Scenario::is_fault(&event.op) {
                let name = match event.op {
                    Op::CrashDataNode { .. } => "crash DataNode",
                    Op::CrashConfigNode { after: None, .. } => "crash ConfigNode",
                    Op::CrashConfigNode { after: Some(_), .. } => {
                        "crash ConfigNode after a commit (armed)"
                    }
                    Op::FailCommit { .. } => "failed commit (armed)",
                    Op::Campaign { .. } => "leader change",
                    Op::KillDataNode { .. } => "DataNode lost for good",
                    _ => "partition",
                };
                *faults.entry(name.to_string()).or_default() += 1;
            }
        }
        // Drop every task before the world goes, so nothing outlives the run.
        for tag in [0, 1, 10, 11] {
            self.world.exec.cancel(tag);
        }
        for j in 0..self.scenario.data_nodes {
            self.world.exec.cancel(crate::world::dn_tag(j));
        }
        Outcome {
            seed: self.scenario.seed,
            violations,
            trace_hash: observer.trace_hash(),
            events: self.events,
            faults,
            interrupted,
            polls: self.polls,
            entries,
            end_ms,
            converged_ms: self.converged,
            trace: observer.take_trace(),
        }
    }

    fn register_data_nodes(&mut self) {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = self.world.admin();
        let addresses: Vec<String> = self.world.dns.iter().map(|d| d.address.clone()).collect();
        let clock = self.world.clock.clone();
        let flag = done.clone();
        self.world.exec.spawn(
            CLIENT,
            Box::pin(async move {
                for address in addresses {
                    loop {
                        let address = address.clone();
                        let answer = admin
                            .call(move |node| {
                                Box::pin(
                                    async move { node.register_data_node(None, address).await },
                                )
                            })
                            .await;
                        if matches!(answer, Some(Ok(_))) {
                            break;
                        }
                        clock.sleep(Duration::from_millis(100)).await;
                    }
                }
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let limit = self.world.clock.now_ms() + 60_000;
        let registered = self.run_until(limit, |_| done.load(std::sync::atomic::Ordering::SeqCst));
        if !registered {
            self.world.observer.violate(
                Invariant::Liveness,
                "DataNodes could not register with a fault-free cluster".into(),
            );
            self.done = true;
        }
    }

    fn seed_legacy(&mut self, v1: &SnapshotV1) {
        let bytes = match snapshot::encode_v1(v1) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.world
                    .observer
                    .violate(Invariant::Liveness, format!("v1 snapshot: {e}"));
                return;
            }
        };
        let world = &self.world;
        let save = world.save_snapshot(v1.last_index, bytes);
        futures_lite::future::block_on(save);
        // The replicas the v1 metadata names, with some bytes each.
        let mut replicas: Vec<(DataNodeId, RegionConfig)> = Vec::new();
        for (db, table) in &v1.state.partition_tables {
            for group in table.groups.values() {
                for node in &group.replicas {
                    replicas.push((*node, config(group, db)));
                }
            }
        }
        for task in v1.state.region_maintain_queue.values() {
            if task.kind == RegionMaintainKind::LegacyDelete {
                replicas.push((task.target.id, config(&task.region, &task.database)));
            }
        }
        for (node, config) in replicas {
            if let Some(slot) = world.dns.get(node.0 as usize) {
                let mem = &slot.store.mem;
                let _ = futures_lite::future::block_on(mem.create(&config));
                let _ = futures_lite::future::block_on(
                    mem.append(config.region, &[7; 4096 / BYTE_UNIT as usize]),
                );
                world.observer.with(|seen| {
                    seen.replica_created(node, config.region, config.database.clone());
                });
            }
        }
    }

    fn perform(&mut self, action: Action) {
        let now = self.world.clock.now_ms();
        self.world.observer.hash_u64(now);
        self.world
            .observer
            .hash_bytes(format!("{action:?}").as_bytes());
        match action {
            Action::Event(index) => {
                if let Some(event) = self.scenario.events.get(index) {
                    self.events += 1;
                    let op = event.op.clone();
                    self.world
                        .observer
                        .trace(|| format!("EVENT {index}: {op:?}"));
                    self.play_op(index, op);
                }
            }
            Action::RestartDn(j) => self.world.start_dn(j),
            Action::AutoSnapshot => {
                if !self.done {
                    self.schedule(now + 2_000, Action::AutoSnapshot);
                }
                if let Some(slot) = self.world.real_leader()
                    && let Some(live) = self.world.cns_live(slot)
                    && live.consensus.applied_index() >= self.snapshotted + SNAPSHOT_EVERY
                {
                    self.snapshotted = live.consensus.applied_index();
                    self.snapshot_on(slot, live);
                }
            }
            Action::RestartCn(i) => {
                if self.down_cns.remove(&i) {
                    let campaign = self.world.real_leader().is_none();
                    self.world.start_cn(i, campaign);
                }
            }
            Action::Heal(cn, dn) => {
                if self.partitions.remove(&(cn, dn)) {
                    self.heal(cn, dn);
                }
            }
            Action::StopFaults => {
                self.world.observer.trace(|| "faults stop".into());
                self.world.disks.set_faults(DiskFaults::default());
                self.world.disks.disarm();
                self.world.policy.set_faults(NetFaults::default());
                for (cn, dn) in std::mem::take(&mut self.partitions) {
                    self.heal(cn, dn);
                }
                for j in 0..self.world.dns.len() {
                    self.world.start_dn(j);
                }
                for i in std::mem::take(&mut self.down_cns) {
                    self.world.start_cn(i, false);
                }
                if self.world.real_leader().is_none() {
                    let slot = usize::from(!self.world.cn_up(0));
                    self.world.start_cn(slot, true);
                }
                self.settling = true;
                self.deadline = now + self.scenario.settle_ms;
                self.schedule(now + 1_000, Action::Check);
            }
            Action::Check => {
                let problems = quiet_problems(&self.world);
                if problems.is_empty() {
                    self.converged = Some(now);
                    self.world.observer.trace(|| "quiet and converged".into());
                    self.done = true;
                } else if now >= self.deadline || self.stalled(now) {
                    for (invariant, detail) in problems {
                        self.world.observer.violate(
                            invariant,
                            format!(
                                "{} s after the faults stopped: {detail}",
                                (now - (self.deadline - self.scenario.settle_ms)) / 1_000
                            ),
                        );
                    }
                    self.done = true;
                } else {
                    self.force_removals_again(now);
                    // The leader may have been lost to a deposed campaign; keep one.
                    if self.world.real_leader().is_none() && !self.world.cn_up(0) {
                        self.world.start_cn(0, true);
                    }
                    self.schedule(now + 1_000, Action::Check);
                }
            }
        }
    }

    /// While settling, every 10 s: a DataNode lost for good that is still registered and that
    /// no unfinished procedure removes is removed with `--force` again (the client may have
    /// given up, or the removal failed), as an operator would.
    fn force_removals_again(&mut self, now: u64) {
        if now % 10_000 >= 1_000 {
            return;
        }
        let lost: Vec<DataNodeId> = self.world.observer.with(|seen| {
            let removing: BTreeSet<DataNodeId> = seen
                .state
                .unfinished_procedures()
                .filter(|r| r.type_code == RemoveDataNodeProcedure::TYPE_CODE)
                .filter_map(|r| RemoveDataNodeProcedure::decode(&r.data).ok())
                .map(|p| p.data().node)
                .collect();
            seen.dead
                .iter()
                .filter(|n| seen.state.data_nodes.contains_key(n) && !removing.contains(n))
                .copied()
                .collect()
        });
        for id in lost {
            self.force_remove(id, None);
        }
    }

    /// Restarts nodes that failed for good, as a process supervisor would (after 500 ms).
    fn supervise(&mut self) {
        let now = self.world.clock.now_ms();
        while let Ok(failure) = self.world.failed.try_recv() {
            match failure {
                NodeFailure::DataNode(j) => {
                    self.world.crash_dn(j);
                    self.schedule(now + 500, Action::RestartDn(j));
                }
                NodeFailure::ConfigNode(i) => {
                    if self.world.cn_up(i) {
                        self.world.crash_cn(i);
                        self.down_cns.insert(i);
                        self.schedule(now + 500, Action::RestartCn(i));
                    }
                }
            }
        }
    }

    /// Whether nothing durable happened for a long stretch of the settle phase: the cluster
    /// is stuck, and waiting out the whole bound would show nothing new.
    fn stalled(&mut self, now: u64) -> bool {
        let progress = self
            .world
            .observer
            .with(|seen| seen.entries + seen.journal_records);
        if progress != self.last_progress.0 {
            self.last_progress = (progress, now);
            return false;
        }
        now.saturating_sub(self.last_progress.1) >= STALL_MS
    }

    fn heal(&self, cn: usize, dn: usize) {
        if let Some(slot) = self.world.dns.get(dn) {
            self.world.network.heal(&format!("cn{cn}"), &slot.address);
            self.world
                .observer
                .trace(|| format!("heal cn{cn} <-> DataNode {dn}"));
        }
    }

    fn play_op(&mut self, index: usize, op: Op) {
        let now = self.world.clock.now_ms();
        match op {
            Op::CreateDatabase {
                db,
                schema_groups,
                data_groups,
                rf: factor,
                keyed,
            } => {
                let schema = DatabaseSchema {
                    name: db_name(db),
                    schema_replication_factor: rf(factor),
                    data_replication_factor: rf(factor),
                };
                let key = keyed.then(|| format!("request-{index}"));
                let what = format!(
                    "create {} ({schema_groups}+{data_groups} groups, RF {factor})",
                    schema.name
                );
                let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
                    let schema = schema.clone();
                    let key = key.clone();
                    Box::pin(async move {
                        node.create_database(schema, schema_groups, data_groups, key)
                            .await
                    })
                };
                self.client(what, if keyed { 6 } else { 2 }, call);
            }
            Op::DeleteDatabase { db, keyed } => {
                let name = db_name(db);
                let key = keyed.then(|| format!("request-{index}"));
                let what = format!("delete {name}");
                let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
                    let name = name.clone();
                    let key = key.clone();
                    Box::pin(async move { node.delete_database(name, key).await })
                };
                self.client(what, if keyed { 6 } else { 2 }, call);
            }
            Op::CreateRegionGroups {
                db,
                schema_groups,
                data_groups,
            } => {
                let name = db_name(db);
                let what = format!("add {schema_groups}+{data_groups} groups to {name}");
                let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
                    let name = name.clone();
                    Box::pin(async move {
                        node.create_region_groups(name, schema_groups, data_groups)
                            .await
                    })
                };
                self.client(what, 2, call);
            }
            // Each load writes its own byte, so a copy that lost or reordered bytes shows.
            Op::Load { db, bytes } => self.load(db, bytes, (index % 251) as u8 + 1),
            Op::MigrateRegion { group, replica, to } => self.migrate(index, group, replica, to),
            Op::RemoveDataNode { dn } => {
                let Some(id) = self.world.dns.get(dn).map(|d| d.id) else {
                    return;
                };
                let key = Some(format!("request-{index}"));
                self.removals_requested.insert(id);
                let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
                    let key = key.clone();
                    Box::pin(async move { node.remove_data_node(id, false, key).await })
                };
                self.client(format!("remove DataNode {id}"), 6, call);
            }
            Op::KillDataNode { dn } => self.kill(dn),
            Op::PlantOrphan { dn, bytes } => self.plant(index, dn, bytes),
            Op::CrashDataNode { dn, down_ms } => {
                if self.world.dns.get(dn).is_some_and(|d| d.up) {
                    self.world.crash_dn(dn);
                    self.schedule(now + down_ms, Action::RestartDn(dn));
                }
            }
            Op::CrashConfigNode {
                cn,
                down_ms,
                after: None,
            } => self.crash_cn(cn, down_ms),
            Op::CrashConfigNode {
                down_ms,
                after: Some(kind),
                ..
            } => self.world.disks.crash_after_commit(kind, down_ms),
            Op::FailCommit { kind } => self.world.disks.fail_next_commit(kind),
            Op::Campaign { cn } => {
                self.down_cns.remove(&cn);
                self.world.start_cn(cn, true);
            }
            Op::Partition { cn, dn, heal_ms } => {
                if let Some(slot) = self.world.dns.get(dn) {
                    self.world
                        .network
                        .partition(&format!("cn{cn}"), &slot.address);
                    self.partitions.insert((cn, dn));
                    self.schedule(now + heal_ms, Action::Heal(cn, dn));
                }
            }
            Op::Snapshot => {
                if let Some(slot) = self.world.real_leader()
                    && let Some(live) = self.world.cns_live(slot)
                {
                    self.snapshot_on(slot, live);
                }
            }
        }
    }

    /// Migrates replica `replica` of published group `group` (both modulo what the durable
    /// state has) to DataNode `to` (`None`, or a DataNode already in the group: placement
    /// chooses).
    fn migrate(&mut self, index: usize, group: u32, replica: u32, to: Option<usize>) {
        let groups: Vec<(RegionId, Vec<DataNodeId>)> = self.world.observer.with(|seen| {
            seen.state
                .region_groups()
                .map(|(_, g)| (g.region, g.replicas.clone()))
                .collect()
        });
        let Some((region, replicas)) = groups.get(group as usize % groups.len().max(1)).cloned()
        else {
            return;
        };
        let Some(from) = replicas
            .get(replica as usize % replicas.len().max(1))
            .copied()
        else {
            return;
        };
        let to = to
            .and_then(|j| self.world.dns.get(j))
            .map(|d| d.id)
            .filter(|id| !replicas.contains(id));
        let key = Some(format!("request-{index}"));
        let what = format!("migrate {region} from {from} to {to:?}");
        let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
            let key = key.clone();
            Box::pin(async move { node.migrate_region(region, from, to, key).await })
        };
        self.client(what, 6, call);
    }

    /// DataNode `dn` is lost for good and removed with `--force` — if at least three other
    /// DataNodes remain to re-replicate onto (RF is at most 3), it is not being removed
    /// already, and the removal would be admitted (no group has its last replica there),
    /// judged on the durable state.
    fn kill(&mut self, dn: usize) {
        let Some(id) = self.world.dns.get(dn).filter(|d| !d.dead).map(|d| d.id) else {
            return;
        };
        let dead = &self.world.dns;
        // A removal asked for counts as under way even before its request lands.
        let leaving = &self.removals_requested;
        let admitted = !leaving.contains(&id)
            && self.world.observer.with(|seen| {
                let state = &seen.state;
                let others = state
                    .data_nodes
                    .iter()
                    .filter(|(n, info)| {
                        **n != id
                            && info.status != DataNodeStatus::Removing
                            && !leaving.contains(n)
                            && !dead.iter().any(|d| d.dead && d.id == **n)
                    })
                    .count();
                // Not a node under a planned removal: a forced removal waits for the planned one
                // (one lock per DataNode), whose migrations wait for the lost node. Not while a
                // creation is unfinished: a creation step re-run after a crash records its planned
                // replicas in the footprint again, the lost node included, after it was
                // abandoned. Both are known limitations (docs/ARCHITECTURE.md, simulator), not
                // exercised here.
                let creating = state
                    .unfinished_procedures()
                    .any(|p| p.type_code == shoal_core::procedures::CREATE_REGION_GROUPS);
                !creating
                    && state
                        .data_nodes
                        .get(&id)
                        .is_some_and(|n| n.status != DataNodeStatus::Removing)
                    && others >= 3
                    && removal_refusal(state, id, true).is_none()
            });
        if !admitted {
            self.world
                .observer
                .trace(|| format!("DataNode {id} is not lost: the cluster could not repair it"));
            return;
        }
        self.world.kill_dn(dn);
        self.force_remove(id, Some(format!("force-{dn}")));
    }

    /// Sends a forced removal of DataNode `id`.
    fn force_remove(&self, id: DataNodeId, key: Option<String>) {
        let call = move |node: Arc<shoal_core::confignode::ConfigNode>| -> BoxFuture<Result<ProcedureId, ConfigNodeError>> {
            let key = key.clone();
            Box::pin(async move { node.remove_data_node(id, true, key).await })
        };
        self.client(format!("remove DataNode {id} --force"), 20, call);
    }

    /// Writes a region directory with `bytes` straight into DataNode `dn`'s store, under an
    /// id no allocation reaches: an orphan.
    fn plant(&mut self, index: usize, dn: usize, bytes: u32) {
        let Some(slot) = self.world.dns.get(dn).filter(|d| !d.dead) else {
            return;
        };
        let registered = self
            .world
            .observer
            .with(|seen| seen.state.data_nodes.contains_key(&slot.id));
        if !registered {
            return;
        }
        let region = RegionId::new(RegionKind::Data, PLANTED_REGION_IDS + index as u32);
        let config = RegionConfig {
            region,
            database: DatabaseName::new("planted").unwrap_or_else(|_| unreachable_name()),
            peers: vec![slot.id],
        };
        let mem = &slot.store.mem;
        let created = futures_lite::future::block_on(mem.create(&config)).is_ok();
        let _ = futures_lite::future::block_on(mem.append(
            region,
            &vec![0x5A; u64::from(bytes).div_ceil(BYTE_UNIT) as usize],
        ));
        if created {
            let node = slot.id;
            self.world.observer.with(|seen| {
                seen.planted.insert((node, region));
            });
            self.world
                .observer
                .trace(|| format!("planted orphan {region} on DataNode {node}"));
        }
    }

    /// Crashes ConfigNode slot `cn` (if up); it restarts after `down_ms`.
    fn crash_cn(&mut self, cn: usize, down_ms: u64) {
        if self.world.cn_up(cn) {
            self.world.crash_cn(cn);
            self.down_cns.insert(cn);
            let now = self.world.clock.now_ms();
            self.schedule(now + down_ms, Action::RestartCn(cn));
        }
    }

    /// Crashes the ConfigNode an aimed crash hit (the one leading at `term`), if any.
    fn crash_aimed(&mut self) {
        let Some((term, down_ms)) = self.world.disks.take_crash_due() else {
            return;
        };
        if let Some(cn) = self.world.leader_at(term) {
            self.world
                .observer
                .trace(|| format!("aimed crash of ConfigNode {cn} (term {term})"));
            self.world
                .observer
                .count_fault("crash ConfigNode after a commit");
            self.crash_cn(cn, down_ms);
        }
    }

    fn snapshot_on(&self, slot: usize, live: crate::world::CnLive) {
        let observer = self.world.observer.clone();
        self.world.exec.spawn(
            cn_tag(slot),
            Box::pin(async move {
                let result = live.consensus.take_snapshot().await;
                observer.trace(|| format!("snapshot: {result:?}"));
            }),
        );
    }

    /// Sends an admin request, retrying retryable failures and missing answers up to
    /// `attempts` times (with the same request key, if any).
    fn client<F>(&self, what: String, attempts: u32, call: F)
    where
        F: Fn(
                Arc<shoal_core::confignode::ConfigNode>,
            ) -> BoxFuture<Result<ProcedureId, ConfigNodeError>>
            + Clone
            + Send
            + Sync
            + 'static,
    {
        let admin = self.world.admin();
        let observer = self.world.observer.clone();
        let clock = self.world.clock.clone();
        self.world.exec.spawn(
            CLIENT,
            Box::pin(async move {
                for attempt in 1..=attempts {
                    match admin.call(call.clone()).await {
                        Some(Ok(id)) => {
                            observer.trace(|| format!("client: {what} -> procedure {id}"));
                            return;
                        }
                        Some(Err(e)) if !e.is_retryable() => {
                            observer.trace(|| format!("client: {what} refused: {e}"));
                            return;
                        }
                        answer => {
                            observer
                                .trace(|| format!("client: {what} attempt {attempt}: {answer:?}"));
                            clock.sleep(Duration::from_millis(700)).await;
                        }
                    }
                }
            }),
        );
    }

    /// Writes `bytes` (each `fill`) to every replica of every published data group of
    /// `db<db>`.
    fn load(&self, db: u8, bytes: u32, fill: u8) {
        let admin = self.world.admin();
        let network = self.world.network.clone();
        let observer = self.world.observer.clone();
        let name = db_name(db);
        self.world.exec.spawn(
            CLIENT,
            Box::pin(async move {
                let targets = admin
                    .call(move |node| {
                        Box::pin(async move {
                            let nodes: BTreeMap<DataNodeId, String> = node
                                .list_data_nodes()
                                .into_iter()
                                .map(|n| (n.location.id, n.location.address))
                                .collect();
                            node.list_region_groups(Some(&name))
                                .into_iter()
                                .filter(|(_, g)| g.region.kind == RegionKind::Data)
                                .flat_map(|(_, g)| {
                                    g.replicas
                                        .iter()
                                        .filter_map(|n| nodes.get(n).cloned())
                                        .map(|a| (g.region, a))
                                        .collect::<Vec<_>>()
                                })
                                .collect::<Vec<(RegionId, String)>>()
                        })
                    })
                    .await
                    .unwrap_or_default();
                for (region, address) in targets {
                    let client = network.client("client", &address);
                    let result = client
                        .write_region(
                            region,
                            vec![fill; u64::from(bytes).div_ceil(BYTE_UNIT) as usize],
                        )
                        .await;
                    observer.trace(|| {
                        format!("client: load {bytes} B into {region} at {address}: {result:?}")
                    });
                }
            }),
        );
    }
}

fn config(group: &RegionReplicaSet, db: &DatabaseName) -> RegionConfig {
    RegionConfig {
        region: group.region,
        database: db.clone(),
        peers: group.replicas.clone(),
    }
}

/// A v1 snapshot of a cluster upgraded from before procedures: `data_nodes` DataNodes, a
/// database `legacy` with published groups, and two legacy deletions of a dropped database's
/// group still queued (as a v1 ConfigNode left them).
pub fn legacy_snapshot(data_nodes: usize) -> SnapshotV1 {
    let mut state = ClusterState::default();
    let mut plans: Vec<ConfigPlan> = (0..data_nodes)
        .map(|j| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: format!("dn{j}:6000"),
            })
        })
        .collect();
    let name = DatabaseName::new("legacy").unwrap_or_else(|_| unreachable_name());
    let factor = rf(data_nodes.min(3) as u8);
    plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
        schema: DatabaseSchema {
            name: name.clone(),
            schema_replication_factor: factor,
            data_replication_factor: factor,
        },
        created_by: None,
    }));
    plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count: 4,
        for_procedure: None,
    }));
    let n = factor.get() as u32;
    let group = |id: u32, kind| {
        RegionReplicaSet::new(
            RegionId::new(kind, id),
            (0..n)
                .map(|k| DataNodeId((id + k) % data_nodes as u32))
                .collect(),
        )
    };
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: name,
        groups: vec![
            group(0, RegionKind::Schema),
            group(1, RegionKind::Data),
            group(2, RegionKind::Data),
        ],
    }));
    for plan in &plans {
        let _ = state.apply(plan);
    }
    let mut queue: BTreeMap<TaskId, RegionMaintainTaskV2> = BTreeMap::new();
    let doomed = group(3, RegionKind::Data);
    let dropped = DatabaseName::new("dropped").unwrap_or_else(|_| unreachable_name());
    let mut next_task = state.next_queue_id;
    for node in doomed.replicas.iter().take(2) {
        next_task += 1;
        let Some(info) = state.data_nodes.get(node) else {
            continue;
        };
        queue.insert(
            TaskId(next_task),
            RegionMaintainTaskV2 {
                kind: RegionMaintainKind::LegacyDelete,
                database: dropped.clone(),
                region: doomed.clone(),
                target: info.location.clone(),
            },
        );
    }
    SnapshotV1 {
        last_index: 10,
        last_term: 1,
        state: ClusterStateV1 {
            next_data_node_id: state.next_data_node_id,
            next_region_id: state.next_region_id,
            next_procedure_id: state.next_procedure_id,
            next_task_id: next_task,
            data_nodes: state.data_nodes,
            databases: state.databases,
            partition_tables: state.partition_tables,
            region_maintain_queue: queue,
            procedures: state.procedures,
            procedure_request_keys: state.procedure_request_keys,
        },
    }
}
