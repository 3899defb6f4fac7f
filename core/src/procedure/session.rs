//! One leadership term of the executor: the procedures it runs, their locks, its workers.
//!
//! A session exists from "became leader at epoch E" to "stopped". Every commit goes through
//! [`SessionCore::commit`], which holds the read side of `gate`; stopping takes the write
//! side, so once [`SessionCore::stop`] returns no commit is in flight and none will start.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use event_listener::Event;
use futures_lite::future;

use crate::consensus::Consensus;
use crate::model::{Epoch, ProcedureId};
use crate::plan::ConfigPlan;
use crate::runtime::{Millis, Runtime};
use crate::state::{ApplyResult, ClusterState, ProcedureStatus};

use super::config::ExecutorConfig;
use super::context::{ChildOutcome, Environment, ProcedureContext, WorkerSlot};
use super::locks::LockTable;
use super::{Procedure, ProcedureError, ProcedureRegistry, normalize_lock_keys};

/// What every session of one executor shares.
pub(crate) struct Shared {
    pub consensus: Arc<dyn Consensus>,
    pub registry: Arc<ProcedureRegistry>,
    pub runtime: Runtime,
    pub env: Environment,
    pub config: ExecutorConfig,
    /// Notified whenever a procedure finishes and whenever a session stops.
    pub changed: Event,
    #[cfg(any(test, feature = "testing"))]
    pub hooks: Option<Arc<dyn super::testing::ExecutorHooks>>,
}

/// Where a procedure is, as far as this session knows (volatile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for its locks.
    Locking,
    /// Queued for a worker.
    Ready,
    /// A worker runs its step.
    Running,
    /// A timer will make it ready (a requested wait or a retry backoff).
    Sleeping,
    /// Waiting for children.
    Suspended,
    /// Its step awaits an external event (no commit, no worker).
    Awaiting(String),
    /// Its type is unknown or its data does not decode: never run.
    Unreadable(String),
}

pub(crate) struct Entry {
    instance: Option<Box<dyn Procedure>>,
    pub phase: Phase,
    /// While suspended: how many of its children (in the record's order, at the record
    /// version noted) were seen finished. A finished child stays finished, so the check
    /// that runs at every child's end resumes from here instead of re-reading them all
    /// (which cost children² for a parent of thousands).
    children_seen_done: (u64, usize),
}

#[derive(Default)]
pub(super) struct Inner {
    entries: BTreeMap<ProcedureId, Entry>,
    locks: LockTable,
    /// Highest procedure id loaded from the state: new procedures are exactly those above it,
    /// and loading them in id order keeps lock requests in id order.
    synced_up_to: u64,
    /// Finished root procedures and when this session first saw them finished (retention
    /// ages are measured on this node's clock, since clock origins differ between nodes).
    pub(super) finished_roots: BTreeMap<ProcedureId, Millis>,
    pub(super) pruning: bool,
}

/// One leadership term's executor state.
pub(crate) struct SessionCore {
    pub epoch: Epoch,
    pub shared: Arc<Shared>,
    stopped: AtomicBool,
    stop_event: Event,
    gate: crate::util::FifoGate,
    inner: Mutex<Inner>,
    ready_tx: async_channel::Sender<ProcedureId>,
    ready_rx: async_channel::Receiver<ProcedureId>,
    /// Procedures whose last step just committed and that can run on: served before
    /// `ready_rx`, so a procedure advances to its next wait instead of queueing behind every
    /// other (progress is visible early, and locks are held for less time).
    continuing_tx: async_channel::Sender<ProcedureId>,
    continuing_rx: async_channel::Receiver<ProcedureId>,
    /// Worker slots: how many steps compute (or call peers) at once.
    permits: Arc<async_lock::Semaphore>,
}

impl SessionCore {
    pub fn new(epoch: Epoch, shared: Arc<Shared>) -> Arc<Self> {
        let (ready_tx, ready_rx) = async_channel::unbounded();
        let (continuing_tx, continuing_rx) = async_channel::unbounded();
        let permits = Arc::new(async_lock::Semaphore::new(shared.config.workers.max(1)));
        Arc::new(Self {
            epoch,
            shared,
            stopped: AtomicBool::new(false),
            stop_event: Event::new(),
            gate: crate::util::FifoGate::default(),
            inner: Mutex::new(Inner::default()),
            ready_tx,
            ready_rx,
            continuing_tx,
            continuing_rx,
            permits,
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn now(&self) -> Millis {
        self.shared.runtime.clock.now_ms()
    }

    /// Loads every procedure, restores locks and links, and starts the workers.
    pub fn start(self: &Arc<Self>) {
        tracing::info!(epoch = %self.epoch, "procedure executor starting");
        self.sync_from_state();
        let session = self.clone();
        self.shared.runtime.spawner.spawn(
            "procedure-dispatch",
            Box::pin(async move { session.dispatch().await }),
        );
        if let Some(every) = self.shared.config.retention.check_every {
            let session = self.clone();
            self.shared.runtime.spawner.spawn(
                "procedure-retention",
                Box::pin(async move { session.retention_ticker(every).await }),
            );
        }
        let session = self.clone();
        self.shared.runtime.spawner.spawn(
            "procedure-retention-initial",
            Box::pin(async move { session.prune().await }),
        );
        let session = self.clone();
        self.shared.runtime.spawner.spawn(
            "procedure-follow-state",
            Box::pin(async move { session.follow_state().await }),
        );
    }

    /// Loads every procedure record that appears in the state, however it got there: a
    /// submission whose commit the proposer saw fail may still land (and a client retrying
    /// with its request key then finds it), and must run like any other.
    async fn follow_state(self: Arc<Self>) {
        let state = self.shared.consensus.state();
        while !self.is_stopped() {
            let seen = state.version();
            self.sync_from_state();
            future::or(state.changed_since(seen), self.wait_stopped()).await;
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Marks the session stopped without waiting (usable inside a commit).
    pub fn stop_now(&self) {
        if !self.stopped.swap(true, Ordering::SeqCst) {
            tracing::info!(epoch = %self.epoch, "procedure executor stopping");
        }
        self.stop_event.notify(usize::MAX);
        self.shared.changed.notify(usize::MAX);
    }

    /// Stops, then waits until no commit is in flight. Nothing is committed afterwards.
    pub async fn stop(&self) {
        self.stop_now();
        let _no_commit_in_flight = self.gate.write().await;
    }

    pub async fn wait_stopped(&self) {
        loop {
            if self.is_stopped() {
                return;
            }
            let listener = self.stop_event.listen();
            if self.is_stopped() {
                return;
            }
            listener.await;
        }
    }

    /// Commits `plan` under this session's epoch, unless stopped. A leadership loss stops the
    /// session. `procedure` names the procedure on whose behalf it is committed (test hooks).
    pub async fn commit(
        &self,
        plan: ConfigPlan,
        procedure: Option<ProcedureId>,
    ) -> Result<ApplyResult, ProcedureError> {
        let _gate = self.gate.read().await;
        if self.is_stopped() {
            return Err(ProcedureError::Stopped);
        }
        #[cfg(any(test, feature = "testing"))]
        let point = super::testing::PersistPoint {
            epoch: self.epoch,
            procedure,
            plan: plan.code(),
        };
        #[cfg(not(any(test, feature = "testing")))]
        let _ = procedure;
        // Tells the hooks when this commit is over, however it ends (even dropped mid-way).
        #[cfg(any(test, feature = "testing"))]
        let _settled = self.shared.hooks.as_ref().map(|hooks| {
            hooks.commit_started(&point);
            CommitSettled {
                hooks: hooks.clone(),
                point: point.clone(),
            }
        });
        #[cfg(any(test, feature = "testing"))]
        if let Some(hooks) = &self.shared.hooks
            && hooks.before_persist(&point).await == super::testing::HookAction::Kill
        {
            self.stop_now();
            return Err(ProcedureError::Stopped);
        }
        let started = self.now();
        let result = self.shared.consensus.propose(self.epoch, plan).await;
        crate::metrics::record(crate::metrics::MetricEvent::Commit {
            ok: matches!(result, Ok(Ok(_))),
            duration: Duration::from_millis(self.now().saturating_sub(started)),
        });
        #[cfg(any(test, feature = "testing"))]
        if result.is_ok()
            && let Some(hooks) = &self.shared.hooks
            && hooks.after_persist(&point).await == super::testing::HookAction::Kill
        {
            self.stop_now();
            return Err(ProcedureError::Stopped);
        }
        match result {
            Ok(applied) => Ok(applied),
            Err(e) => {
                if e.is_leadership_loss() || e.is_fatal() {
                    self.stop_now();
                }
                Err(e.into())
            }
        }
    }

    /// Loads procedures recorded since the last sync (in id order), enqueues their locks and
    /// schedules those granted. Finished roots are remembered for retention.
    pub fn sync_from_state(self: &Arc<Self>) {
        let state = self.shared.consensus.state();
        let now = self.now();
        let granted: Vec<ProcedureId> = {
            let mut inner = self.lock();
            let from = ProcedureId(inner.synced_up_to + 1);
            let mut granted = Vec::new();
            state.read(|s| {
                for (id, record) in s.procedures.range(from..) {
                    inner.synced_up_to = id.0;
                    if record.status.is_finished() {
                        if record.parent.is_none() {
                            inner.finished_roots.insert(*id, now);
                        }
                        continue;
                    }
                    let ancestors = ancestors_of(s, *id);
                    let keys = normalize_lock_keys(record.lock_keys.clone());
                    let (instance, phase) =
                        match self.shared.registry.decode(record.type_code, &record.data) {
                            Ok(instance) => (Some(instance), Phase::Locking),
                            Err(e) => {
                                tracing::error!(procedure = %id, error = %e,
                                    "unreadable procedure kept (never run, never deleted)");
                                (None, Phase::Unreadable(e.to_string()))
                            }
                        };
                    let readable = instance.is_some();
                    // Unreadable procedures keep their locks: their resources may be
                    // half-changed.
                    if inner.locks.enqueue(*id, keys, ancestors) && readable {
                        granted.push(*id);
                    }
                    inner.entries.insert(
                        *id,
                        Entry {
                            instance,
                            phase,
                            children_seen_done: (0, 0),
                        },
                    );
                }
            });
            granted
        };
        for id in granted {
            self.schedule(id);
        }
    }

    /// Decides, from the durable record, what a procedure holding its locks does next.
    pub(crate) fn schedule(self: &Arc<Self>, id: ProcedureId) {
        enum Next {
            Ready,
            Sleep(Duration),
            Suspended,
            Finished(Option<ProcedureId>),
            Nothing,
        }
        let now = self.now();
        let seen_done = self
            .lock()
            .entries
            .get(&id)
            .map_or((0, 0), |entry| entry.children_seen_done);
        let mut now_seen_done = None;
        let next = self.shared.consensus.state().read(|s| {
            let Some(record) = s.procedures.get(&id) else {
                return Next::Nothing;
            };
            match record.status {
                ProcedureStatus::Runnable
                | ProcedureStatus::RollingBack
                | ProcedureStatus::Waiting => {
                    let remaining = record.wake_at_ms.map(|wake| {
                        // Bounded by the requested duration: the record may come from a node
                        // whose clock has another origin.
                        let requested = wake.saturating_sub(record.updated_at_ms);
                        Duration::from_millis(wake.saturating_sub(now).min(requested))
                    });
                    match remaining {
                        Some(d) if !d.is_zero() => Next::Sleep(d),
                        _ => Next::Ready,
                    }
                }
                ProcedureStatus::Suspended => {
                    let (version, known) = seen_done;
                    let from = if version == record.version { known } else { 0 };
                    let done = from
                        + record
                            .children
                            .iter()
                            .skip(from)
                            .take_while(|c| {
                                s.procedures
                                    .get(c)
                                    .is_none_or(|child| child.status.is_finished())
                            })
                            .count();
                    now_seen_done = Some((record.version, done));
                    let all_done = done >= record.children.len();
                    if all_done {
                        Next::Ready
                    } else {
                        Next::Suspended
                    }
                }
                ProcedureStatus::Succeeded
                | ProcedureStatus::Failed
                | ProcedureStatus::RolledBack => Next::Finished(record.parent),
            }
        });
        if let Some(seen) = now_seen_done
            && let Some(entry) = self.lock().entries.get_mut(&id)
        {
            entry.children_seen_done = seen;
        }
        match next {
            Next::Ready => self.make_ready(id),
            Next::Sleep(delay) => self.sleep_then_ready(id, delay),
            Next::Suspended => self.set_phase(id, Phase::Suspended),
            // Finished by a commit this session did not see succeed (its outcome was
            // unknown): run the finish path once, so locks are released and the parent woken.
            Next::Finished(parent) => {
                if self.lock().entries.contains_key(&id) {
                    self.finish(id, parent);
                }
            }
            Next::Nothing => {}
        }
    }

    pub(crate) fn set_phase(&self, id: ProcedureId, phase: Phase) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.phase = phase;
        }
    }

    /// Like [`SessionCore::make_ready`], ahead of procedures that have not run yet: `id`
    /// just committed a step and continues.
    pub(crate) fn make_ready_first(&self, id: ProcedureId) {
        self.set_phase(id, Phase::Ready);
        // Unbounded and never closed while the session lives: cannot fail.
        let _ = self.continuing_tx.try_send(id);
    }

    pub(crate) fn make_ready(&self, id: ProcedureId) {
        self.set_phase(id, Phase::Ready);
        // Unbounded and never closed while the session lives: cannot fail.
        let _ = self.ready_tx.try_send(id);
    }

    /// Makes `id` ready after `delay` (a requested wait or a retry backoff).
    pub(crate) fn sleep_then_ready(self: &Arc<Self>, id: ProcedureId, delay: Duration) {
        let sleep = self.shared.runtime.clock.sleep(delay);
        self.ready_when(id, Phase::Sleeping, "procedure-timer", sleep);
    }

    /// Makes `id` ready once `until` resolves (a step's [`super::Step::Await`]).
    pub(crate) fn await_then_ready(
        self: &Arc<Self>,
        id: ProcedureId,
        until: crate::runtime::BoxFuture<()>,
        waiting_for: String,
    ) {
        self.ready_when(id, Phase::Awaiting(waiting_for), "procedure-await", until);
    }

    /// Puts `id` in `phase` and makes it ready, ahead of procedures not started, once `wake`
    /// resolves, unless the session stops first (then nothing happens: the next leader
    /// reschedules it).
    fn ready_when(
        self: &Arc<Self>,
        id: ProcedureId,
        phase: Phase,
        name: &str,
        wake: crate::runtime::BoxFuture<()>,
    ) {
        self.set_phase(id, phase);
        let session = self.clone();
        self.shared.runtime.spawner.spawn(
            name,
            Box::pin(async move {
                let woke = future::or(
                    async {
                        wake.await;
                        true
                    },
                    async {
                        session.wait_stopped().await;
                        false
                    },
                )
                .await;
                if woke && !session.is_stopped() {
                    // Work in progress (an awaited task, a wait, a backoff) goes ahead of
                    // procedures that have not started: completions are acted on first.
                    session.make_ready_first(id);
                }
            }),
        );
    }

    /// The volatile phase of `id`, and what it waits for if blocked on locks.
    pub fn describe(&self, id: ProcedureId) -> Option<(Phase, Option<String>)> {
        let inner = self.lock();
        let entry = inner.entries.get(&id)?;
        let note = match entry.phase {
            Phase::Locking => inner
                .locks
                .blocker(id)
                .map(|(other, resource)| format!("lock on {resource:?} held before it by {other}")),
            _ => None,
        };
        Some((entry.phase.clone(), note))
    }

    /// Runs ready procedures' steps, each on its own task holding one worker slot.
    async fn dispatch(self: Arc<Self>) {
        loop {
            let permits = self.permits.clone();
            let session = self.clone();
            let next = future::or(
                async move {
                    let permit = permits.acquire_arc().await;
                    let id = session.next_ready().await?;
                    Some((permit, id))
                },
                async {
                    self.wait_stopped().await;
                    None
                },
            )
            .await;
            let Some((permit, id)) = next else { break };
            if self.is_stopped() {
                break;
            }
            let slot = WorkerSlot::new(self.permits.clone(), permit);
            let session = self.clone();
            self.shared.runtime.spawner.spawn(
                "procedure-step",
                Box::pin(async move {
                    // Everything a step logs (DataNode calls, metadata commits) carries its
                    // procedure id; steps add region and DataNode ids as fields of their own
                    // events.
                    let span = tracing::info_span!("step", procedure = %id, epoch = %session.epoch);
                    tracing::Instrument::instrument(session.run_step(id, slot), span).await;
                }),
            );
        }
    }

    /// The next procedure to run: one that is continuing first.
    async fn next_ready(self: Arc<Self>) -> Option<ProcedureId> {
        if let Ok(id) = self.continuing_rx.try_recv() {
            return Some(id);
        }
        // `or` polls the continuing queue first, so it wins a tie.
        future::or(async { self.continuing_rx.recv().await.ok() }, async {
            self.ready_rx.recv().await.ok()
        })
        .await
    }

    /// Takes the live instance of `id`, or rebuilds it from `record`.
    fn take_instance(
        &self,
        record: &crate::state::ProcedureRecord,
    ) -> Result<Box<dyn Procedure>, ProcedureError> {
        let cached = self.lock().entries.get_mut(&record.id).and_then(|entry| {
            entry.phase = Phase::Running;
            entry.instance.take()
        });
        match cached {
            Some(instance) => Ok(instance),
            None => self.shared.registry.decode(record.type_code, &record.data),
        }
    }

    /// Drops the live instance of `id`, so its next step starts from the committed record.
    pub(crate) fn forget_instance(&self, id: ProcedureId) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.instance = None;
        }
    }

    pub(crate) fn put_instance(&self, id: ProcedureId, instance: Box<dyn Procedure>) {
        if let Some(entry) = self.lock().entries.get_mut(&id) {
            entry.instance = Some(instance);
        }
    }

    async fn run_step(self: &Arc<Self>, id: ProcedureId, slot: Arc<WorkerSlot>) {
        let state = self.shared.consensus.state();
        let Some((record, children)) = state.read(|s| {
            let record = s.procedures.get(&id)?.clone();
            let children = record
                .children
                .iter()
                .filter_map(|c| s.procedures.get(c))
                .map(|c| ChildOutcome {
                    id: c.id,
                    type_code: c.type_code,
                    status: c.status,
                    output: c.output.as_ref().map(|o| o.to_vec()),
                    error: c.last_error.clone(),
                })
                .collect();
            Some((record, children))
        }) else {
            return;
        };
        if record.status.is_finished() {
            self.schedule(id);
            return;
        }
        let mut instance = match self.take_instance(&record) {
            Ok(instance) => instance,
            Err(e) => {
                self.set_phase(id, Phase::Unreadable(e.to_string()));
                return;
            }
        };
        let ctx = ProcedureContext {
            id,
            host: self.clone(),
            slot: Some(slot.clone()),
            children,
            attempts: record.attempts,
            effect: Default::default(),
        };
        let rolling_back = record.status == ProcedureStatus::RollingBack;
        tracing::debug!(procedure = %id, state = record.state_name, rolling_back = record.status == ProcedureStatus::RollingBack, "step");
        if rolling_back {
            // The stop is polled first: once stopped, the step is never polled again.
            let outcome = future::or(
                async {
                    self.wait_stopped().await;
                    None
                },
                async { Some(instance.rollback(&ctx).await) },
            )
            .await
            .filter(|_| !self.is_stopped());
            // Stopped mid-step: record nothing; the next leader re-runs it.
            let Some(outcome) = outcome else { return };
            // The transition's commit holds no worker slot.
            slot.release();
            self.after_rollback(record, instance, outcome, ctx.take_effect())
                .await;
        } else {
            let started = self.now();
            let outcome = future::or(
                async {
                    self.wait_stopped().await;
                    None
                },
                async { Some(instance.step(&ctx).await) },
            )
            .await
            .filter(|_| !self.is_stopped());
            let Some(outcome) = outcome else { return };
            record_step(
                instance.type_name(),
                &outcome,
                self.now().saturating_sub(started),
            );
            #[cfg(any(test, feature = "testing"))]
            let outcome = match self.shared.hooks.as_ref().and_then(|h| h.after_step(id)) {
                Some(injected) => Err(injected),
                None => outcome,
            };
            // The transition's commit holds no worker slot.
            slot.release();
            self.after_step(record, instance, outcome, ctx.take_effect())
                .await;
        }
    }

    /// Releases `id`'s locks, wakes what they unblock and its parent if it was the last
    /// child, and applies retention.
    pub(crate) fn finish(self: &Arc<Self>, id: ProcedureId, parent: Option<ProcedureId>) {
        let now = self.now();
        let granted = {
            let mut inner = self.lock();
            inner.entries.remove(&id);
            if parent.is_none() {
                inner.finished_roots.insert(id, now);
            }
            inner.locks.release(id)
        };
        self.shared.changed.notify(usize::MAX);
        for g in granted {
            self.schedule(g);
        }
        if let Some(parent) = parent
            && self
                .describe(parent)
                .is_some_and(|(p, _)| p == Phase::Suspended)
        {
            self.schedule(parent);
        }
        let over = {
            let inner = self.lock();
            inner.finished_roots.len() > self.shared.config.retention.max_finished
        };
        if over {
            let session = self.clone();
            self.shared.runtime.spawner.spawn(
                "procedure-retention",
                Box::pin(async move { session.prune().await }),
            );
        }
    }
}

/// Calls [`super::testing::ExecutorHooks::commit_settled`] when a commit is over.
#[cfg(any(test, feature = "testing"))]
struct CommitSettled {
    hooks: Arc<dyn super::testing::ExecutorHooks>,
    point: super::testing::PersistPoint,
}

#[cfg(any(test, feature = "testing"))]
impl Drop for CommitSettled {
    fn drop(&mut self) {
        self.hooks.commit_settled(&self.point);
    }
}

/// Reports one forward step's duration and how it ended.
fn record_step(procedure: &'static str, outcome: &Result<super::Step, ProcedureError>, ms: u64) {
    use crate::metrics::{MetricEvent, Outcome};
    if !crate::metrics::enabled() {
        return;
    }
    let outcome = match outcome {
        Ok(super::Step::Wait { .. }) => Outcome::Retry,
        Ok(_) => Outcome::Success,
        Err(e) if e.is_retryable() => Outcome::Retry,
        Err(_) => Outcome::Failure,
    };
    crate::metrics::record(MetricEvent::Step {
        procedure,
        outcome,
        duration: Duration::from_millis(ms),
    });
}

/// The ancestors of `id` (parent, grandparent, ...).
fn ancestors_of(state: &ClusterState, id: ProcedureId) -> BTreeSet<ProcedureId> {
    let mut out = BTreeSet::new();
    let mut cursor = state.procedures.get(&id).and_then(|r| r.parent);
    while let Some(parent) = cursor {
        if !out.insert(parent) {
            break;
        }
        cursor = state.procedures.get(&parent).and_then(|r| r.parent);
    }
    out
}
