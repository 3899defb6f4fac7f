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

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use event_listener::Event;
use futures_lite::future;

use crate::consensus::{Consensus, LocalConsensus};
use crate::model::ProcedureId;
use crate::plan::{ConfigPlan, PlanCode};
use crate::procedure::{
    ExecutorConfig, Procedure, ProcedureError, ProcedureExecutor, ProcedureRegistry,
    RetentionPolicy,
};
use crate::runtime::{ManualClock, Runtime, SeededRng, Spawner};
use crate::state::ClusterState;
use crate::storage::LogStore;
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

use super::{ExecutorHooks, HookAction, PersistPoint};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A trigger kills the executor; the harness starts a fresh one on a fresh consensus.
    Restart,
    /// A trigger pauses the commit while the other node takes leadership, then lets it go on.
    LeaderChange,
}

/// What to interrupt in one run, and the counters shared by every executor of the run.
#[derive(Debug)]
struct Script {
    mode: Mode,
    attempted: AtomicU64,
    committed: AtomicU64,
    /// Committed procedure-record plans (submissions and transitions).
    transitions: AtomicU64,
    steps: AtomicU64,
    kill_before: Mutex<BTreeSet<u64>>,
    kill_after: Mutex<BTreeSet<u64>>,
    abort_at_step: Option<u64>,
    /// After the abort fired: interrupt around every commit.
    interrupt_after_abort: bool,
    aborted: AtomicBool,
    /// The procedure whose step was aborted.
    aborted_procedure: Mutex<Option<ProcedureId>>,
    /// The abort is durable (the procedure's next commit landed): interruptions may start.
    abort_recorded: AtomicBool,
    last_before_kill: AtomicU64,
    /// The node whose hook fired and has not been handled yet.
    triggered: Mutex<Option<usize>>,
    /// Bumped at every trigger, so handling one never clears a newer one.
    trigger_seq: AtomicU64,
    resume_generation: AtomicU64,
    /// Set at the end of a run: hooks no longer fire or hold commits.
    released: AtomicBool,
    changed: Event,
}

impl Script {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            attempted: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            transitions: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            kill_before: Mutex::new(BTreeSet::new()),
            kill_after: Mutex::new(BTreeSet::new()),
            abort_at_step: None,
            interrupt_after_abort: false,
            aborted: AtomicBool::new(false),
            aborted_procedure: Mutex::new(None),
            abort_recorded: AtomicBool::new(false),
            last_before_kill: AtomicU64::new(u64::MAX),
            triggered: Mutex::new(None),
            trigger_seq: AtomicU64::new(0),
            resume_generation: AtomicU64::new(0),
            released: AtomicBool::new(false),
            changed: Event::new(),
        }
    }

    fn triggered(&self) -> Option<usize> {
        *self.triggered.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fire(&self, node: usize) -> HookAction {
        if self.released.load(Ordering::SeqCst) {
            return HookAction::Proceed;
        }
        let generation = self.resume_generation.load(Ordering::SeqCst);
        self.set_triggered(node);
        self.changed.notify(usize::MAX);
        match self.mode {
            Mode::Restart => HookAction::Kill,
            Mode::LeaderChange => {
                // Hold the commit until the other node has taken leadership.
                loop {
                    let listener = self.changed.listen();
                    if self.resume_generation.load(Ordering::SeqCst) != generation
                        || self.released.load(Ordering::SeqCst)
                    {
                        return HookAction::Proceed;
                    }
                    listener.await;
                }
            }
        }
    }

    fn release_all(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.resume();
    }

    fn set_triggered(&self, node: usize) {
        let mut triggered = self.triggered.lock().unwrap_or_else(|p| p.into_inner());
        *triggered = Some(node);
        self.trigger_seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The current trigger and its sequence number.
    fn trigger(&self) -> Option<(usize, u64)> {
        let triggered = self.triggered.lock().unwrap_or_else(|p| p.into_inner());
        triggered.map(|node| (node, self.trigger_seq.load(Ordering::SeqCst)))
    }

    fn resume(&self) {
        *self.triggered.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.resume_generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    /// Resumes after handling trigger `seq`; a trigger fired since (by the new leader's
    /// first commits) stays pending.
    fn resume_handled(&self, seq: u64) {
        {
            let mut triggered = self.triggered.lock().unwrap_or_else(|p| p.into_inner());
            if self.trigger_seq.load(Ordering::SeqCst) == seq {
                *triggered = None;
            }
        }
        self.resume_generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }
}

/// Whether a commit records a procedure (rather than metadata a step proposed).
fn is_transition(plan: PlanCode) -> bool {
    matches!(plan, PlanCode::SubmitProcedure | PlanCode::UpdateProcedure)
}

struct NodeHooks {
    script: Arc<Script>,
    node: usize,
}

#[async_trait]
impl ExecutorHooks for NodeHooks {
    async fn before_persist(&self, point: &PersistPoint) -> HookAction {
        let s = &self.script;
        let n = s.attempted.fetch_add(1, Ordering::SeqCst) + 1;
        let planned = s
            .kill_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&n);
        // After an abort: kill once before each durable procedure transition (then let it
        // through). Counted in transitions, not commits: a step's metadata commits re-run
        // after every kill and must not make the same transition look new.
        let transitions = s.transitions.load(Ordering::SeqCst);
        let around = s.interrupt_after_abort
            && s.abort_recorded.load(Ordering::SeqCst)
            && is_transition(point.plan)
            && s.last_before_kill.swap(transitions, Ordering::SeqCst) != transitions;
        if planned || around {
            return s.fire(self.node).await;
        }
        HookAction::Proceed
    }

    async fn after_persist(&self, point: &PersistPoint) -> HookAction {
        let s = &self.script;
        let n = s.committed.load(Ordering::SeqCst) + 1;
        // An abort counts once its procedure's next commit (rollback or failure) is durable;
        // a kill before that would only make the aborted step run again.
        if s.aborted.load(Ordering::SeqCst)
            && point.procedure.is_some()
            && *s
                .aborted_procedure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                == point.procedure
        {
            s.abort_recorded.store(true, Ordering::SeqCst);
        }
        let planned = s
            .kill_after
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&n);
        // Around every commit, kill only after procedure-record commits: a step that commits
        // a metadata plan before its own transition would otherwise be killed after that plan
        // on every re-run and never progress. Metadata commits are still each interrupted by
        // the one-point runs.
        if is_transition(point.plan) {
            s.transitions.fetch_add(1, Ordering::SeqCst);
        }
        let around = s.interrupt_after_abort
            && s.abort_recorded.load(Ordering::SeqCst)
            && is_transition(point.plan);
        if (planned || around) && !s.released.load(Ordering::SeqCst) {
            // Mark the trigger before the commit counts as done, so the harness never sees
            // a finished procedure without the pending interruption.
            s.set_triggered(self.node);
            s.committed.store(n, Ordering::SeqCst);
            return s.fire(self.node).await;
        }
        s.committed.store(n, Ordering::SeqCst);
        HookAction::Proceed
    }

    fn after_step(&self, id: ProcedureId) -> Option<ProcedureError> {
        let s = &self.script;
        let n = s.steps.fetch_add(1, Ordering::SeqCst) + 1;
        if s.abort_at_step == Some(n) {
            *s.aborted_procedure
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(id);
            s.aborted.store(true, Ordering::SeqCst);
            return Some(ProcedureError::Abort(format!("injected abort at step {n}")));
        }
        None
    }
}

type MakeEnv<E> = Arc<dyn Fn() -> E + Send + Sync>;
type MakeProcedure<E> = Arc<dyn Fn(&E) -> Box<dyn Procedure> + Send + Sync>;
type Setup<E> = Arc<dyn Fn(&E) -> Vec<ConfigPlan> + Send + Sync>;

/// Runs one procedure under every interruption; see the module docs.
pub struct CrashHarness<E> {
    spawner: Arc<dyn Spawner>,
    registry: Arc<ProcedureRegistry>,
    make_env: MakeEnv<E>,
    make_procedure: MakeProcedure<E>,
    setup: Setup<E>,
    config: ExecutorConfig,
    seed: u64,
    max_idle_rounds: usize,
}

struct Node {
    consensus: Arc<LocalConsensus>,
    executor: Arc<ProcedureExecutor>,
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
                if outcome.interruptions == 0 {
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

    fn node(
        &self,
        log: &MemLogStore,
        snapshots: &MemSnapshotStore,
        runtime: &Runtime,
        env: &Arc<E>,
        script: &Arc<Script>,
        index: usize,
    ) -> Node {
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(log.clone()),
            Arc::new(snapshots.clone()),
        ));
        let executor = ProcedureExecutor::with_hooks(
            consensus.clone(),
            self.registry.clone(),
            runtime.clone(),
            env.clone(),
            self.config.clone(),
            Arc::new(NodeHooks {
                script: script.clone(),
                node: index,
            }),
        );
        executor.start();
        Node {
            consensus,
            executor,
        }
    }

    async fn run(&self, name: &str, script: Arc<Script>) -> Result<RunOutcome<E>, HarnessError> {
        let fail = |m: String| Self::error(name, m);
        let env = Arc::new((self.make_env)());
        let clock = ManualClock::new();
        let runtime = Runtime {
            clock: Arc::new(clock.clone()),
            spawner: self.spawner.clone(),
            rng: Arc::new(SeededRng::new(self.seed)),
        };
        let log = MemLogStore::new();
        let snapshots = MemSnapshotStore::new();
        {
            let setup = LocalConsensus::new(Arc::new(log.clone()), Arc::new(snapshots.clone()));
            let epoch = setup.campaign().await.map_err(|e| fail(e.to_string()))?;
            for plan in (self.setup)(&env) {
                match setup.propose(epoch, plan).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(r)) => return Err(fail(format!("setup plan rejected: {r}"))),
                    Err(e) => return Err(fail(format!("setup plan failed: {e}"))),
                }
            }
            setup.step_down();
        }
        // Every later entry is a hooked commit: the count tells when all have been seen.
        let setup_entries = log.last_index();
        let node_count = if script.mode == Mode::LeaderChange {
            2
        } else {
            1
        };
        let mut nodes: Vec<Node> = (0..node_count)
            .map(|i| self.node(&log, &snapshots, &runtime, &env, &script, i))
            .collect();
        let mut leader = 0;
        nodes[leader]
            .consensus
            .campaign()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut root: Option<ProcedureId> = None;
        let mut interruptions = 0;
        let mut idle = 0;
        let mut progress = 0;
        loop {
            if let Some((node, seq)) = script.trigger() {
                interruptions += 1;
                match script.mode {
                    Mode::Restart => {
                        nodes[leader].executor.shutdown().await;
                        nodes[leader] = self.node(&log, &snapshots, &runtime, &env, &script, 0);
                    }
                    Mode::LeaderChange => leader = 1 - node,
                }
                nodes[leader]
                    .consensus
                    .campaign()
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                script.resume_handled(seq);
                if root.is_none() {
                    // The submission may have committed before the interruption: the request
                    // key tells (as it would tell a client asking again).
                    root = nodes[leader]
                        .consensus
                        .state()
                        .read(|s| s.procedure_request_keys.get(REQUEST_KEY).copied());
                }
                continue;
            }
            let executor = nodes[leader].executor.clone();
            if root.is_none() {
                if !executor.is_running() {
                    future::or(executor.wait_running(), async {
                        for _ in 0..64 {
                            future::yield_now().await;
                        }
                    })
                    .await;
                    idle += 1;
                } else {
                    let submit = async {
                        let procedure = (self.make_procedure)(&env);
                        Some(executor.submit(procedure, Some(REQUEST_KEY.into())).await)
                    };
                    let triggered = async {
                        loop {
                            let listener = script.changed.listen();
                            if script.triggered().is_some() {
                                return None;
                            }
                            listener.await;
                        }
                    };
                    match future::or(submit, triggered).await {
                        Some(Ok(id)) => root = Some(id),
                        Some(Err(e)) if e.is_stop() => idle += 1,
                        Some(Err(e)) => return Err(fail(format!("submit failed: {e}"))),
                        None => {}
                    }
                }
            } else if let Some(id) = root {
                let finished = nodes[leader].consensus.state().read(|s| {
                    s.procedures
                        .get(&id)
                        .is_some_and(|r| r.status.is_finished())
                });
                // A commit still between its persist and its after-persist hook may yet
                // trigger an interruption: wait for it before calling the run finished.
                let settled =
                    log.last_index() - setup_entries == script.committed.load(Ordering::SeqCst);
                if finished && settled && script.triggered().is_none() {
                    break;
                }
                for _ in 0..16 {
                    future::yield_now().await;
                }
                if script.triggered().is_none() {
                    clock.advance_to_next_deadline();
                }
                idle += 1;
            }
            // Progress happens on the spawner's threads; count only rounds in which none was
            // made, and give those threads real time (a loaded machine may starve them).
            let now_progress = script.attempted.load(Ordering::SeqCst)
                + script.committed.load(Ordering::SeqCst)
                + script.steps.load(Ordering::SeqCst);
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
                let stuck: Vec<String> = nodes[leader]
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
                return Err(fail(format!(
                    "did not finish (root {root:?}, leader {leader}, {} commits, running {}, triggered {:?}, {:?}, {:?}): {stuck:?}",
                    script.committed.load(Ordering::SeqCst),
                    nodes[leader].executor.is_running(),
                    script.triggered(),
                    nodes[leader].consensus.leadership().get(),
                    nodes[leader].executor,
                )));
            }
        }
        // Paused commits must not hold a shutdown forever.
        script.release_all();
        for node in &nodes {
            node.executor.shutdown().await;
        }
        let replay = LocalConsensus::new(Arc::new(log.clone()), Arc::new(snapshots.clone()));
        replay.load().await.map_err(|e| fail(e.to_string()))?;
        let state = replay.state().snapshot();
        let root = root.ok_or_else(|| fail("never submitted".into()))?;
        if let Some(stuck) = state.procedures.values().find(|r| !r.status.is_finished()) {
            return Err(fail(format!(
                "procedure {} left unfinished in state {}",
                stuck.id, stuck.state_name
            )));
        }
        Ok(RunOutcome {
            state,
            env,
            root,
            persists: script.committed.load(Ordering::SeqCst),
            steps: script.steps.load(Ordering::SeqCst),
            interruptions,
        })
    }
}
