//! The crash-harness idea on a Raft world: kill the *leader* of a 3-ConfigNode group at
//! every commit of a reference run of a procedure, and check that the new leader resumes it to
//! the same end state, each replica deleted once.
//!
//! Core's `CrashHarness` drives one `LocalConsensus` on a manual clock; a Raft group runs on
//! the wall clock with its own timers, so this harness is its own: every member's consensus
//! is wrapped in a [`KillSwitch`] that counts the commits the group makes after the harness
//! is armed. One run kills the member that makes commit `k`, either just before it is
//! proposed (it never is) or just after it committed (the executor never acts on it); the
//! other two elect a new leader, whose executor reloads the unfinished procedures and runs
//! them to the end; the killed member is then restarted over its stores and catches up. A run
//! ends once the root procedure finished and the world settled (no unfinished procedure, no
//! queued create, no task running, no replica being removed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_consensus_raft::{NodeId, RaftConfig, RaftConsensus};
use shoal_core::consensus::{Consensus, ConsensusError, LeadershipWatch, StateCell};
use shoal_core::model::{DatabaseName, Epoch, ProcedureId, RegionId, TaskId};
use shoal_core::plan::ConfigPlan;
use shoal_core::procedure::Procedure;
use shoal_core::state::{ApplyResult, ProcedureStatus};
use shoal_core::storage::RegionStore;

use crate::raft_cluster::{RaftCluster, RaftClusterOptions, is_finished};

/// Where in commit `k` the leader dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before the commit is proposed: it never is.
    Before,
    /// After it committed and applied: the executor never learns it.
    After,
}

/// The commit counter and the kill target every member's [`KillSwitch`] shares.
#[derive(Debug)]
pub struct KillPlan {
    armed: AtomicBool,
    commits: AtomicU64,
    target: Mutex<Option<(u64, Phase)>>,
    fired: AtomicBool,
    victims: (
        async_channel::Sender<NodeId>,
        async_channel::Receiver<NodeId>,
    ),
}

impl Default for KillPlan {
    fn default() -> Self {
        Self {
            armed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            target: Mutex::new(None),
            fired: AtomicBool::new(false),
            victims: async_channel::unbounded(),
        }
    }
}

impl KillPlan {
    /// Starts counting commits, killing at `target` (`None`: a reference run).
    pub fn arm(&self, target: Option<(u64, Phase)>) {
        *self.target.lock().unwrap_or_else(|p| p.into_inner()) = target;
        self.commits.store(0, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Commits counted since [`KillPlan::arm`].
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// Whether the kill fired.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    fn hits(&self, n: u64, phase: Phase) -> bool {
        let target = *self.target.lock().unwrap_or_else(|p| p.into_inner());
        target == Some((n, phase)) && !self.fired.swap(true, Ordering::SeqCst)
    }
}

/// A member's consensus that counts its commits and dies at the planned one.
pub struct KillSwitch {
    inner: Arc<RaftConsensus>,
    plan: Arc<KillPlan>,
    id: NodeId,
}

impl KillSwitch {
    /// Wraps member `id`'s consensus.
    pub fn new(id: NodeId, inner: Arc<RaftConsensus>, plan: Arc<KillPlan>) -> Self {
        Self { inner, plan, id }
    }

    /// Hands this member to the harness to be killed, and waits until it is dead: the caller
    /// (the executor) then sees a leadership loss, as on any dead node.
    async fn die(&self, epoch: Epoch) -> ConsensusError {
        let _ = self.plan.victims.0.send(self.id).await;
        self.inner.leadership().wait_lost(epoch).await;
        ConsensusError::NotLeader
    }
}

#[async_trait]
impl Consensus for KillSwitch {
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError> {
        if !self.plan.armed.load(Ordering::SeqCst) {
            return self.inner.propose(epoch, plan).await;
        }
        let n = self.plan.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if self.plan.hits(n, Phase::Before) {
            return Err(self.die(epoch).await);
        }
        let outcome = self.inner.propose(epoch, plan).await;
        if self.plan.hits(n, Phase::After) {
            return Err(self.die(epoch).await);
        }
        outcome
    }

    fn state(&self) -> Arc<StateCell> {
        self.inner.state()
    }

    fn leadership(&self) -> LeadershipWatch {
        self.inner.leadership()
    }

    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError> {
        self.inner.claim_epoch_above(seen).await
    }

    async fn failed(&self) -> ConsensusError {
        self.inner.failed().await
    }
}

/// What must be equal to the reference run's at the end of every run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Databases, partition tables, queued creates and footprints.
    pub metadata: String,
    /// The root procedure's type, status and output.
    pub root: Option<(u32, ProcedureStatus, Option<Vec<u8>>)>,
    /// The replicas each DataNode holds.
    pub replicas: Vec<BTreeSet<RegionId>>,
    /// Deletions each DataNode executed, per region that was deleted anywhere.
    pub deletions: BTreeMap<RegionId, Vec<u64>>,
    /// Task ids some DataNode accepted twice (must stay empty).
    pub accepted_twice: Vec<(usize, Vec<TaskId>)>,
}

/// The end of one run.
#[derive(Debug)]
pub struct RunOutcome {
    /// The end state.
    pub observed: Observed,
    /// Commits counted after arming.
    pub commits: u64,
    /// Whether the planned kill happened.
    pub killed: bool,
}

/// What a run sets up before the procedure is submitted.
#[derive(Debug, Clone)]
pub enum Setup {
    /// The DataNodes are registered; nothing else.
    Registered,
    /// Database `db` with one schema group and `data_groups` data groups (RF 3), each
    /// replica loaded with `bytes` bytes.
    Database {
        /// Data region groups.
        data_groups: u32,
        /// Bytes per replica.
        bytes: usize,
    },
}

/// Makes the root procedure of a run (given the cluster after setup).
pub type MakeProcedure = Arc<dyn Fn(&RaftCluster) -> Box<dyn Procedure> + Send + Sync>;

/// The request key the harness submits with (a resubmission after a kill finds the first).
const ROOT_KEY: &str = "raft-harness-root";

/// How long one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Runs the procedure once on a fresh 3-ConfigNode cluster, killing the member that makes
/// commit `kill` (see the module docs); `None` runs uninterrupted.
pub async fn run_once(
    setup: &Setup,
    make: &MakeProcedure,
    kill: Option<(u64, Phase)>,
) -> RunOutcome {
    let plan = Arc::new(KillPlan::default());
    let wrap_plan = plan.clone();
    let options = RaftClusterOptions {
        wrap: Some(Arc::new(move |id, raft| {
            Arc::new(KillSwitch::new(id, raft, wrap_plan.clone())) as Arc<dyn Consensus>
        })),
        // Short timeouts: every run elects twice, and there are about a hundred runs.
        raft: RaftConfig {
            heartbeat_interval: Duration::from_millis(25),
            election_timeout: (Duration::from_millis(100), Duration::from_millis(200)),
            ..RaftConfig::for_tests()
        },
        ..RaftClusterOptions::default()
    };
    let cluster = Arc::new(RaftCluster::start(options).await);
    if let Setup::Database { data_groups, bytes } = setup {
        let created = cluster.create_database("db", 3, 1, *data_groups).await;
        assert!(
            created.status == shoal_core::procedure::ProcedureView::Succeeded,
            "setup: {created:?}"
        );
        if *bytes > 0 {
            let leader = cluster.leader().await;
            for (_, group) in leader.node.list_region_groups(Some(&db_name())) {
                for node in &group.replicas {
                    cluster.data_nodes[node.0 as usize]
                        .store
                        .append(group.region, &vec![7u8; *bytes])
                        .await
                        .expect("load");
                }
            }
        }
    }
    let restarted = Arc::new(AtomicBool::new(false));
    let killer = {
        let (cluster, plan, restarted) = (cluster.clone(), plan.clone(), restarted.clone());
        smol::spawn(async move {
            while let Ok(victim) = plan.victims.1.recv().await {
                let epoch = cluster
                    .member(victim)
                    .map_or(Epoch(0), |m| m.consensus.leadership().get().epoch);
                cluster.kill(victim).await;
                // The others elect a new leader; the victim then comes back as a follower.
                let _ = cluster.leader_above(epoch).await;
                cluster.start_member(victim).await;
                restarted.store(true, Ordering::SeqCst);
            }
        })
    };
    plan.arm(kill);
    let root = submit(&cluster, make).await;
    let start = Instant::now();
    let observed = loop {
        assert!(
            start.elapsed() < RUN_LIMIT,
            "run {kill:?}: not settled after {RUN_LIMIT:?} ({} commits, killed {}): {}",
            plan.commits(),
            plan.fired(),
            cluster.describe()
        );
        let kill_done = !plan.fired() || restarted.load(Ordering::SeqCst);
        if kill_done && let Some(observed) = settled(&cluster, root).await {
            break observed;
        }
        smol::Timer::after(Duration::from_millis(20)).await;
    };
    let outcome = RunOutcome {
        observed,
        commits: plan.commits(),
        killed: plan.fired(),
    };
    drop(killer.cancel());
    cluster.shutdown().await;
    outcome
}

fn db_name() -> DatabaseName {
    crate::cluster::db("db")
}

/// Submits the root procedure to whoever leads, retrying across kills and leader changes
/// (the request key makes every retry find the first submission).
async fn submit(cluster: &RaftCluster, make: &MakeProcedure) -> ProcedureId {
    let start = Instant::now();
    loop {
        let leader = cluster.leader().await;
        match leader
            .node
            .executor()
            .submit(make(cluster), Some(ROOT_KEY.into()))
            .await
        {
            Ok(id) => return id,
            Err(e) => {
                assert!(
                    start.elapsed() < RUN_LIMIT,
                    "root never submitted: last error {e}"
                );
                smol::Timer::after(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The end state, once the world settled: the root and every procedure finished on the
/// leader, nothing queued, running or being removed on any DataNode.
async fn settled(cluster: &RaftCluster, root: ProcedureId) -> Option<Observed> {
    let leader = cluster
        .members()
        .into_iter()
        .find(|m| m.consensus.leadership().get().is_leader && m.node.executor().is_running())?;
    if !leader.node.list_procedures().iter().all(is_finished)
        || !leader
            .node
            .get_procedure(root)
            .is_some_and(|p| is_finished(&p))
    {
        return None;
    }
    let state = leader.consensus.state().snapshot();
    let deleting = cluster
        .data_nodes
        .iter()
        .any(|s| !s.mem.regions_being_deleted().is_empty());
    if !state.create_queue.is_empty() || cluster.running_tasks() > 0 || deleting {
        return None;
    }
    let mut replicas = Vec::new();
    for slot in &cluster.data_nodes {
        let held = slot.mem.list().await.expect("list");
        replicas.push(held.iter().map(|c| c.region).collect::<BTreeSet<_>>());
    }
    let regions: BTreeSet<RegionId> = (0..state.next_region_id)
        .flat_map(|id| {
            [
                RegionId::new(shoal_core::model::RegionKind::Schema, id),
                RegionId::new(shoal_core::model::RegionKind::Data, id),
            ]
        })
        .collect();
    let deletions = regions
        .into_iter()
        .map(|r| (r, cluster.deletions(r)))
        .filter(|(_, d)| d.iter().any(|n| *n > 0))
        .collect();
    Some(Observed {
        metadata: format!(
            "{:?} {:?} {:?} {:?}",
            state.databases, state.partition_tables, state.create_queue, state.footprints
        ),
        root: state
            .procedures
            .get(&root)
            .map(|r| (r.type_code, r.status, r.output.as_ref().map(|b| b.to_vec()))),
        replicas,
        deletions,
        accepted_twice: cluster.task_ids_accepted_twice().await,
    })
}

/// What [`kill_leader_at_every_commit`] exercised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Commits of the reference run.
    pub reference_commits: u64,
    /// Runs in which the planned kill happened.
    pub kills: usize,
    /// Runs made (some commit counts are not reached when a run commits less).
    pub runs: usize,
}

/// The reference run, then one run per commit `k` of it and phase, killing the leader there;
/// every run must end as the reference did, each replica deleted at most once (the reference
/// decides how many were deleted) and no task id accepted twice. Returns what was exercised.
pub async fn kill_leader_at_every_commit(setup: Setup, make: MakeProcedure) -> Report {
    let reference = run_once(&setup, &make, None).await;
    assert!(
        reference.observed.accepted_twice.is_empty(),
        "reference: {:?}",
        reference.observed
    );
    assert!(
        reference
            .observed
            .deletions
            .values()
            .flatten()
            .all(|n| *n <= 1),
        "reference deleted a replica twice: {:?}",
        reference.observed.deletions
    );
    let mut report = Report {
        reference_commits: reference.commits,
        kills: 0,
        runs: 0,
    };
    let points: Vec<(u64, Phase)> = (1..=reference.commits)
        .flat_map(|k| [(k, Phase::Before), (k, Phase::After)])
        .collect();
    // Runs are independent clusters that mostly wait on timers: a few at a time.
    for batch in points.chunks(CONCURRENT_RUNS) {
        let runs: Vec<((u64, Phase), RunOutcome)> = join_all(
            batch
                .iter()
                .map(|point| {
                    let (setup, make) = (&setup, &make);
                    Box::pin(async move { (*point, run_once(setup, make, Some(*point)).await) })
                        as std::pin::Pin<
                            Box<dyn std::future::Future<Output = ((u64, Phase), RunOutcome)> + '_>,
                        >
                })
                .collect(),
        )
        .await;
        for ((k, phase), run) in runs {
            report.runs += 1;
            if run.killed {
                report.kills += 1;
            }
            assert_eq!(
                run.observed, reference.observed,
                "leader killed {phase:?} commit {k} of {}: end state differs from the uninterrupted run",
                reference.commits
            );
        }
    }
    report
}

/// Interrupted runs in flight at once.
const CONCURRENT_RUNS: usize = 6;

/// Polls every future until all are done; their outputs in order.
async fn join_all<T>(
    mut futures: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T> + '_>>>,
) -> Vec<T> {
    let mut outputs: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
