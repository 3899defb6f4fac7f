//! [`CrashHarness`]: runs any procedure to completion while killing, deposing or aborting it
//! at every persist/step, and compares each end state with an uninterrupted run.
//!
//! # Using it for a new procedure
//!
//! ```text
//! let harness = CrashHarness::new(
//!     spawner,                                   // any Spawner (smol in tests)
//!     Arc::new(registry),                        // every type the procedure may spawn
//!     || MyWorld::new(),                         // the external world, fresh per run; it
//!                                                // survives restarts within a run
//!     |world| Box::new(MyProcedure::new(..)),    // the procedure under test
//! )
//! .with_setup(|world| vec![/* plans applied before submission */]);
//! harness.run_with_restart_at_every_step(|state, world| /* comparable end state */).await?;
//! harness.run_with_leader_change_at_every_step(observe).await?;
//! harness.run_with_rollback_at_every_step(observe, |outcome| /* extra check */ Ok(())).await?;
//! ```
//!
//! The environment handed to the executor is `Arc<E>` (steps call `ctx.env::<E>()`). Time is
//! a [`ManualClock`] per run that the harness advances to the next deadline whenever the run
//! stalls, so waits and backoffs pass instantly. `observe` must return what has to be equal
//! to the uninterrupted run: typically metadata from the [`ClusterState`] and the world's
//! externally visible effects, not timestamps or attempt counts. The harness itself checks
//! that the root procedure ends with the same status and output and that no procedure is
//! left unfinished.
//!
//! # An adversarial world
//!
//! A world in which every commit's outcome is known and nothing else runs proves little.
//! - [`CrashHarness::with_unknown_outcomes`] wraps every node's consensus in a
//!   [`FlakyConsensus`](super::FlakyConsensus): some commits are applied but reported
//!   failed, others time out unapplied.
//! - [`CrashHarness::with_companion`] runs a [`Companion`] (the region cleaner, say) on every
//!   node that leads, from its election until it is fenced, killed or the run ends.
//! - [`CrashHarness::with_settle`] keeps a run going after the root finished until the
//!   world has settled (e.g. the cleaner drained its queue), so end states compare.
//! - The world itself (`make_env`) can lose replies, fail operations, hold replicas whose
//!   creates "failed": whatever the procedure must survive.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use event_listener::Event;
use futures_lite::future;

use crate::consensus::{Consensus, LocalConsensus};
use crate::model::{Epoch, ProcedureId};
use crate::plan::ConfigPlan;
use crate::procedure::{
    ExecutorConfig, Procedure, ProcedureExecutor, ProcedureRegistry, RetentionPolicy,
};
use crate::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use crate::state::ClusterState;
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

use super::adversary::{FlakyConsensus, UnknownOutcomes};
use super::script::{Mode, NodeHooks, Script};

/// The request key the harness submits with (a resubmission after a kill dedups on it).
const REQUEST_KEY: &str = "crash-harness-root";

/// A harness run that went wrong: which run, and what differed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{run}: {message}")]
pub struct HarnessError {
    /// The run ("reference", "kill before persist 3", ...).
    pub run: String,
    /// What went wrong.
    pub message: String,
}

/// What a harness method exercised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HarnessReport {
    /// Interrupted runs made.
    pub runs: usize,
    /// Commits attempted by the uninterrupted run.
    pub reference_persists: u64,
    /// Forward steps run by the uninterrupted run.
    pub reference_steps: u64,
}

/// The end of one run.
#[derive(Debug)]
pub struct RunOutcome<E> {
    /// The state replayed from the log after the run.
    pub state: ClusterState,
    /// The world.
    pub env: Arc<E>,
    /// The root procedure's id.
    pub root: ProcedureId,
    /// Commits attempted.
    pub persists: u64,
    /// Forward steps run.
    pub steps: u64,
    /// Executor restarts or leader changes made.
    pub interruptions: usize,
}

type MakeEnv<E> = Arc<dyn Fn() -> E + Send + Sync>;
type MakeProcedure<E> = Arc<dyn Fn(&E) -> Box<dyn Procedure> + Send + Sync>;
type Setup<E> = Arc<dyn Fn(&E) -> Vec<ConfigPlan> + Send + Sync>;
type Settle<E> = Arc<dyn Fn(&ClusterState, &E) -> bool + Send + Sync>;

/// Work that runs beside the executor on a leading node (e.g. the region cleaner): given the
/// node's consensus, the run's runtime, the world and the epoch it leads in, the future it
/// returns runs until it ends by itself, the node is killed, or the run ends.
pub type Companion<E> =
    Arc<dyn Fn(Arc<dyn Consensus>, Runtime, Arc<E>, Epoch) -> BoxFuture<()> + Send + Sync>;

/// Runs one procedure under every interruption; see the module docs.
pub struct CrashHarness<E> {
    spawner: Arc<dyn Spawner>,
    registry: Arc<ProcedureRegistry>,
    make_env: MakeEnv<E>,
    make_procedure: MakeProcedure<E>,
    setup: Setup<E>,
    companion: Option<Companion<E>>,
    settle: Option<Settle<E>>,
    unknown_outcomes: UnknownOutcomes,
    config: ExecutorConfig,
    seed: u64,
    max_idle_rounds: usize,
}

/// One ConfigNode incarnation of a run.
struct Node {
    local: Arc<LocalConsensus>,
    /// What the executor and the companion commit through (maybe flaky).
    consensus: Arc<dyn Consensus>,
    executor: Arc<ProcedureExecutor>,
    /// Set when this incarnation dies: its companion stops.
    dead: Arc<Flag>,
}

/// A one-way flag that can be awaited.
#[derive(Default)]
struct Flag {
    set: AtomicBool,
    event: Event,
}

impl Flag {
    fn raise(&self) {
        self.set.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    async fn wait(&self) {
        loop {
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            let listener = self.event.listen();
            if self.set.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

/// What every node of one run shares.
struct RunWorld<E> {
    log: MemLogStore,
    snapshots: MemSnapshotStore,
    runtime: Runtime,
    clock: ManualClock,
    env: Arc<E>,
    script: Arc<Script>,
    /// Proposals made through any node's consensus (progress, and the fault schedule).
    proposals: Arc<AtomicU64>,
    /// Raised when the run ends: every companion stops.
    ended: Arc<Flag>,
}

impl<E: Send + Sync + 'static> CrashHarness<E> {
    /// A harness for the procedure `make_procedure` builds, in a world `make_env` builds.
    /// Defaults: one worker (deterministic step order), no periodic retention, seed 7.
    pub fn new(
        spawner: Arc<dyn Spawner>,
        registry: Arc<ProcedureRegistry>,
        make_env: impl Fn() -> E + Send + Sync + 'static,
        make_procedure: impl Fn(&E) -> Box<dyn Procedure> + Send + Sync + 'static,
    ) -> Self {
        Self {
            spawner,
            registry,
            make_env: Arc::new(make_env),
            make_procedure: Arc::new(make_procedure),
            setup: Arc::new(|_| Vec::new()),
            companion: None,
            settle: None,
            unknown_outcomes: UnknownOutcomes::default(),
            config: ExecutorConfig {
                workers: 1,
                retention: RetentionPolicy {
                    check_every: None,
                    ..RetentionPolicy::default()
                },
                ..ExecutorConfig::default()
            },
            seed: 7,
            max_idle_rounds: 10_000,
        }
    }

    /// Plans committed before the procedure is submitted (cluster setup).
    pub fn with_setup(
        mut self,
        setup: impl Fn(&E) -> Vec<ConfigPlan> + Send + Sync + 'static,
    ) -> Self {
        self.setup = Arc::new(setup);
        self
    }

    /// Replaces the executor configuration.
    pub fn with_config(mut self, config: ExecutorConfig) -> Self {
        self.config = config;
        self
    }

    /// Runs `companion` on every node while it leads (see [`Companion`]).
    pub fn with_companion(
        mut self,
        companion: impl Fn(Arc<dyn Consensus>, Runtime, Arc<E>, Epoch) -> BoxFuture<()>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.companion = Some(Arc::new(companion));
        self
    }

    /// After the root procedure finished, keeps the run (and its companions) going until
    /// `settled` holds for the committed state and the world.
    pub fn with_settle(
        mut self,
        settled: impl Fn(&ClusterState, &E) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settle = Some(Arc::new(settled));
        self
    }

    /// Gives commits unknown outcomes on the schedule `faults` (see [`UnknownOutcomes`]).
    pub fn with_unknown_outcomes(mut self, faults: UnknownOutcomes) -> Self {
        self.unknown_outcomes = faults;
        self
    }

    fn error(run: &str, message: impl Into<String>) -> HarnessError {
        HarnessError {
            run: run.to_string(),
            message: message.into(),
        }
    }

    /// Runs once without interruption.
    pub async fn run_uninterrupted(&self) -> Result<RunOutcome<E>, HarnessError> {
        self.run("reference", Arc::new(Script::new(Mode::Restart)))
            .await
    }

    /// Kills the executor just before, then just after, each commit of the uninterrupted run
    /// (one kill per run), restarting a fresh executor on a fresh consensus replayed from the
    /// log; then once more killing around every commit in one run. Every end state must equal
    /// the uninterrupted one.
    pub async fn run_with_restart_at_every_step<T: PartialEq + Debug>(
        &self,
        observe: impl Fn(&ClusterState, &E) -> T,
    ) -> Result<HarnessReport, HarnessError> {
        self.interrupt_each(Mode::Restart, &observe).await
    }

    /// Like [`CrashHarness::run_with_restart_at_every_step`], but at each point the other of
    /// two ConfigNodes over the same log takes leadership while the commit is held, so the
    /// deposed executor carries on until it is fenced.
    pub async fn run_with_leader_change_at_every_step<T: PartialEq + Debug>(
        &self,
        observe: impl Fn(&ClusterState, &E) -> T,
    ) -> Result<HarnessReport, HarnessError> {
        self.interrupt_each(Mode::LeaderChange, &observe).await
    }

    /// For every forward step k of the uninterrupted run: replaces step k's outcome with a
    /// non-retryable error, runs to the end (rollback, or failure), and then repeats that
    /// run killing the executor just before and just after every commit following the abort.
    /// Both must end in the same state; `check` is applied to every aborted run.
    pub async fn run_with_rollback_at_every_step<T: PartialEq + Debug>(
        &self,
        observe: impl Fn(&ClusterState, &E) -> T,
        check: impl Fn(&RunOutcome<E>) -> Result<(), String>,
    ) -> Result<HarnessReport, HarnessError> {
        let reference = self.run_uninterrupted().await?;
        let mut runs = 0;
        for k in 1..=reference.steps {
            let name = format!("abort at step {k}");
            let mut script = Script::new(Mode::Restart);
            script.abort_at_step = Some(k);
            let clean = self.run(&name, Arc::new(script)).await?;
            check(&clean).map_err(|m| Self::error(&name, m))?;
            let name = format!("abort at step {k}, interrupted rollback");
            let mut script = Script::new(Mode::Restart);
            script.abort_at_step = Some(k);
            script.interrupt_after_abort = true;
            let interrupted = self.run(&name, Arc::new(script)).await?;
            check(&interrupted).map_err(|m| Self::error(&name, m))?;
            Self::compare(&name, &clean, &interrupted, &observe)?;
            runs += 2;
        }
        Ok(HarnessReport {
            runs,
            reference_persists: reference.persists,
            reference_steps: reference.steps,
        })
    }

    async fn interrupt_each<T: PartialEq + Debug>(
        &self,
        mode: Mode,
        observe: &impl Fn(&ClusterState, &E) -> T,
    ) -> Result<HarnessReport, HarnessError> {
        let reference = self.run_uninterrupted().await?;
        let committed = reference.persists;
        let mut runs = 0;
        for k in 1..=committed {
            for before in [true, false] {
                let name = format!(
                    "{mode:?} {} persist {k}",
                    if before { "before" } else { "after" }
                );
                let script = Script::new(mode);
                if before {
                    script
                        .kill_before
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k);
                } else {
                    script
                        .kill_after
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(k);
                }
                let outcome = self.run(&name, Arc::new(script)).await?;
                // With a companion or unknown outcomes a run may commit less than the
                // reference did (fewer retries): a point it never reached cannot be hit.
                if outcome.interruptions == 0 && outcome.persists >= k {
                    return Err(Self::error(&name, "the interruption never happened"));
                }
                Self::compare(&name, &reference, &outcome, observe)?;
                runs += 1;
            }
        }
        if mode == Mode::Restart {
            // Around every commit in one run: no abort, so arm the interruptions directly.
            let name = "restart around every persist";
            let mut script = Script::new(mode);
            script.interrupt_after_abort = true;
            script.abort_recorded.store(true, Ordering::SeqCst);
            let outcome = self.run(name, Arc::new(script)).await?;
            Self::compare(name, &reference, &outcome, observe)?;
            runs += 1;
        }
        Ok(HarnessReport {
            runs,
            reference_persists: reference.persists,
            reference_steps: reference.steps,
        })
    }

    fn compare<T: PartialEq + Debug>(
        run: &str,
        reference: &RunOutcome<E>,
        outcome: &RunOutcome<E>,
        observe: &impl Fn(&ClusterState, &E) -> T,
    ) -> Result<(), HarnessError> {
        let root_of = |o: &RunOutcome<E>| {
            o.state
                .procedures
                .get(&o.root)
                .map(|r| (r.type_code, r.status, r.output.clone()))
        };
        if root_of(reference) != root_of(outcome) {
            return Err(Self::error(
                run,
                format!(
                    "root ended {:?}, uninterrupted run ended {:?}",
                    root_of(outcome),
                    root_of(reference)
                ),
            ));
        }
        let expected = observe(&reference.state, &reference.env);
        let got = observe(&outcome.state, &outcome.env);
        if expected != got {
            return Err(Self::error(
                run,
                format!("end state {got:?}\n differs from uninterrupted {expected:?}"),
            ));
        }
        Ok(())
    }

    /// A new ConfigNode incarnation over the run's log (not leading yet).
    fn node(&self, world: &RunWorld<E>, index: usize) -> Node {
        let local = Arc::new(LocalConsensus::new(
            Arc::new(world.log.clone()),
            Arc::new(world.snapshots.clone()),
        ));
        let consensus: Arc<dyn Consensus> = Arc::new(FlakyConsensus::new(
            local.clone(),
            self.unknown_outcomes,
            world.proposals.clone(),
        ));
        let executor = ProcedureExecutor::with_hooks(
            consensus.clone(),
            self.registry.clone(),
            world.runtime.clone(),
            world.env.clone(),
            self.config.clone(),
            Arc::new(NodeHooks {
                script: world.script.clone(),
                node: index,
            }),
        );
        executor.start();
        Node {
            local,
            consensus,
            executor,
            dead: Arc::new(Flag::default()),
        }
    }

    /// Makes `node` lead (a higher epoch), then starts its companion.
    async fn lead(&self, world: &RunWorld<E>, node: &Node) -> Result<(), String> {
        let epoch = node.local.campaign().await.map_err(|e| e.to_string())?;
        let Some(companion) = &self.companion else {
            return Ok(());
        };
        let work = companion(
            node.consensus.clone(),
            world.runtime.clone(),
            world.env.clone(),
            epoch,
        );
        let (dead, ended) = (node.dead.clone(), world.ended.clone());
        world.runtime.spawner.spawn(
            "harness-companion",
            Box::pin(async move {
                future::or(work, future::or(dead.wait(), ended.wait())).await;
            }),
        );
        Ok(())
    }

    /// A fresh world for one run, with the setup plans committed.
    async fn world(&self, script: Arc<Script>) -> Result<RunWorld<E>, String> {
        let env = Arc::new((self.make_env)());
        let clock = ManualClock::new();
        let runtime = Runtime {
            clock: Arc::new(clock.clone()),
            spawner: self.spawner.clone(),
            rng: Arc::new(SeededRng::new(self.seed)),
        };
        let log = MemLogStore::new();
        let snapshots = MemSnapshotStore::new();
        let setup = LocalConsensus::new(Arc::new(log.clone()), Arc::new(snapshots.clone()));
        let epoch = setup.campaign().await.map_err(|e| e.to_string())?;
        for plan in (self.setup)(&env) {
            match setup.propose(epoch, plan).await {
                Ok(Ok(_)) => {}
                Ok(Err(r)) => return Err(format!("setup plan rejected: {r}")),
                Err(e) => return Err(format!("setup plan failed: {e}")),
            }
        }
        setup.step_down();
        Ok(RunWorld {
            log,
            snapshots,
            runtime,
            clock,
            env,
            script,
            proposals: Arc::new(AtomicU64::new(0)),
            ended: Arc::new(Flag::default()),
        })
    }

    /// Submits the root procedure on `executor`, retrying what a retry may fix (an unknown
    /// commit outcome: the request key finds the first submission). `None`: interrupted.
    async fn submit(
        &self,
        world: &RunWorld<E>,
        executor: &ProcedureExecutor,
    ) -> Result<Option<ProcedureId>, String> {
        let script = &world.script;
        let submit = async {
            loop {
                let procedure = (self.make_procedure)(&world.env);
                match executor.submit(procedure, Some(REQUEST_KEY.into())).await {
                    Ok(id) => return Ok(Some(id)),
                    Err(e) if e.is_stop() => return Ok(None),
                    Err(e) if e.is_retryable() => future::yield_now().await,
                    Err(e) => return Err(format!("submit failed: {e}")),
                }
            }
        };
        let triggered = async {
            loop {
                let listener = script.changed.listen();
                if script.triggered().is_some() {
                    return Ok(None);
                }
                listener.await;
            }
        };
        future::or(submit, triggered).await
    }

    /// Whether the run is over: the root finished, no commit may still trigger an
    /// interruption, nothing is pending, and the world has settled.
    fn finished(&self, world: &RunWorld<E>, node: &Node, root: ProcedureId) -> bool {
        let state = node.local.state();
        let done = state.read(|s| {
            s.procedures
                .get(&root)
                .is_some_and(|r| r.status.is_finished())
                && self
                    .settle
                    .as_ref()
                    .is_none_or(|settle| settle(s, &world.env))
        });
        // A commit still between its persist and its after-persist hook may yet trigger an
        // interruption: wait for it before calling the run finished.
        done && world.script.in_flight.load(Ordering::SeqCst) == 0
            && world.script.triggered().is_none()
    }

    async fn run(&self, name: &str, script: Arc<Script>) -> Result<RunOutcome<E>, HarnessError> {
        let fail = |m: String| Self::error(name, m);
        let world = self.world(script.clone()).await.map_err(fail)?;
        let node_count = if script.mode == Mode::LeaderChange {
            2
        } else {
            1
        };
        let mut nodes: Vec<Node> = (0..node_count).map(|i| self.node(&world, i)).collect();
        let mut leader = 0;
        self.lead(&world, &nodes[leader]).await.map_err(fail)?;
        let mut root: Option<ProcedureId> = None;
        let mut interruptions = 0;
        let mut idle = 0;
        let mut progress = 0;
        loop {
            if let Some((node, seq)) = script.trigger() {
                interruptions += 1;
                leader = self
                    .interrupt(&world, &mut nodes, leader, node)
                    .await
                    .map_err(fail)?;
                script.resume_handled(seq);
                if root.is_none() {
                    // The submission may have committed before the interruption: the request
                    // key tells (as it would tell a client asking again).
                    root = nodes[leader]
                        .local
                        .state()
                        .read(|s| s.procedure_request_keys.get(REQUEST_KEY).copied());
                }
                continue;
            }
            let executor = nodes[leader].executor.clone();
            match root {
                None if !executor.is_running() => {
                    future::or(executor.wait_running(), async {
                        for _ in 0..64 {
                            future::yield_now().await;
                        }
                    })
                    .await;
                    idle += 1;
                }
                None => match self.submit(&world, &executor).await.map_err(fail)? {
                    Some(id) => root = Some(id),
                    None => idle += 1,
                },
                Some(id) => {
                    if self.finished(&world, &nodes[leader], id) {
                        break;
                    }
                    for _ in 0..16 {
                        future::yield_now().await;
                    }
                    if script.triggered().is_none() {
                        world.clock.advance_to_next_deadline();
                    }
                    idle += 1;
                }
            }
            // Progress happens on the spawner's threads; count only rounds in which none was
            // made, and give those threads real time (a loaded machine may starve them).
            let now_progress = script.attempted.load(Ordering::SeqCst)
                + script.committed.load(Ordering::SeqCst)
                + script.steps.load(Ordering::SeqCst)
                + world.proposals.load(Ordering::SeqCst);
            if now_progress != progress {
                progress = now_progress;
                idle = 0;
            } else if idle > 0 {
                // The harness is test support driving a test's own (threaded) spawner; it
                // yields real time to those threads, not to any logic under test.
                #[allow(
                    clippy::disallowed_methods,
                    reason = "yields to the test's spawner threads"
                )]
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            if idle > self.max_idle_rounds {
                return Err(fail(self.stuck(&nodes[leader], root, leader, &script)));
            }
        }
        let root = root.ok_or_else(|| fail("never submitted".into()))?;
        self.end(world, &nodes, root, interruptions)
            .await
            .map_err(fail)
    }

    /// Handles an interruption fired on `fired`: a restart replaces the leader with a fresh
    /// incarnation; a leader change hands leadership to the other node. Returns the leader.
    async fn interrupt(
        &self,
        world: &RunWorld<E>,
        nodes: &mut [Node],
        leader: usize,
        fired: usize,
    ) -> Result<usize, String> {
        let leader = match world.script.mode {
            Mode::Restart => {
                nodes[leader].dead.raise();
                nodes[leader].executor.shutdown().await;
                nodes[leader] = self.node(world, 0);
                leader
            }
            Mode::LeaderChange => 1 - fired,
        };
        self.lead(world, &nodes[leader]).await?;
        Ok(leader)
    }

    /// Stops every node and reads the end of the run back from the log.
    async fn end(
        &self,
        world: RunWorld<E>,
        nodes: &[Node],
        root: ProcedureId,
        interruptions: usize,
    ) -> Result<RunOutcome<E>, String> {
        // Paused commits must not hold a shutdown forever.
        world.script.release_all();
        world.ended.raise();
        for node in nodes {
            node.executor.shutdown().await;
        }
        let replay = LocalConsensus::new(
            Arc::new(world.log.clone()),
            Arc::new(world.snapshots.clone()),
        );
        replay.load().await.map_err(|e| e.to_string())?;
        let state = replay.state().snapshot();
        if let Some(stuck) = state.procedures.values().find(|r| !r.status.is_finished()) {
            return Err(format!(
                "procedure {} left unfinished in state {}",
                stuck.id, stuck.state_name
            ));
        }
        Ok(RunOutcome {
            state,
            env: world.env,
            root,
            persists: world.script.committed.load(Ordering::SeqCst),
            steps: world.script.steps.load(Ordering::SeqCst),
            interruptions,
        })
    }

    /// Why a run that stopped making progress is stuck, in words.
    fn stuck(
        &self,
        node: &Node,
        root: Option<ProcedureId>,
        leader: usize,
        script: &Script,
    ) -> String {
        let stuck: Vec<String> = node
            .executor
            .list()
            .iter()
            .filter(|p| !p.status.code().eq(&10))
            .map(|p| {
                format!(
                    "{} {} {} waiting={:?} error={:?}",
                    p.id, p.state_name, p.status, p.waiting_for, p.last_error
                )
            })
            .collect();
        format!(
            "did not finish (root {root:?}, leader {leader}, {} commits, {} in flight, running {}, triggered {:?}, {:?}): {stuck:?}",
            script.committed.load(Ordering::SeqCst),
            script.in_flight.load(Ordering::SeqCst),
            node.executor.is_running(),
            script.triggered(),
            node.local.leadership().get(),
        )
    }
}
