//! The script of one harness run: what to interrupt, and the counters every executor of the
//! run shares through its [`NodeHooks`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use event_listener::Event;

use crate::model::ProcedureId;
use crate::plan::PlanCode;
use crate::procedure::ProcedureError;

use super::{ExecutorHooks, HookAction, PersistPoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// A trigger kills the executor; the harness starts a fresh one on a fresh consensus.
    Restart,
    /// A trigger pauses the commit while the other node takes leadership, then lets it go on.
    LeaderChange,
}

/// What to interrupt in one run, and the counters shared by every executor of the run.
#[derive(Debug)]
pub(super) struct Script {
    pub(super) mode: Mode,
    pub(super) attempted: AtomicU64,
    pub(super) committed: AtomicU64,
    /// Hooked commits between their before-persist hook and the end of their after-persist
    /// hook (or their failure): while any is, an interruption may still be triggered.
    pub(super) in_flight: AtomicU64,
    /// Committed procedure-record plans (submissions and transitions).
    pub(super) transitions: AtomicU64,
    pub(super) steps: AtomicU64,
    pub(super) kill_before: Mutex<BTreeSet<u64>>,
    pub(super) kill_after: Mutex<BTreeSet<u64>>,
    pub(super) abort_at_step: Option<u64>,
    /// After the abort fired: interrupt around every commit.
    pub(super) interrupt_after_abort: bool,
    pub(super) aborted: AtomicBool,
    /// The procedure whose step was aborted.
    pub(super) aborted_procedure: Mutex<Option<ProcedureId>>,
    /// The abort is durable (the procedure's next commit landed): interruptions may start.
    pub(super) abort_recorded: AtomicBool,
    pub(super) last_before_kill: AtomicU64,
    /// The node whose hook fired and has not been handled yet.
    pub(super) triggered: Mutex<Option<usize>>,
    /// Bumped at every trigger, so handling one never clears a newer one.
    pub(super) trigger_seq: AtomicU64,
    pub(super) resume_generation: AtomicU64,
    /// Set at the end of a run: hooks no longer fire or hold commits.
    pub(super) released: AtomicBool,
    pub(super) changed: Event,
}

impl Script {
    pub(super) fn new(mode: Mode) -> Self {
        Self {
            mode,
            attempted: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
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

    pub(super) fn triggered(&self) -> Option<usize> {
        *self.triggered.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn fire(&self, node: usize) -> HookAction {
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

    pub(super) fn release_all(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.resume();
    }

    pub(super) fn set_triggered(&self, node: usize) {
        let mut triggered = self.triggered.lock().unwrap_or_else(|p| p.into_inner());
        *triggered = Some(node);
        self.trigger_seq.fetch_add(1, Ordering::SeqCst);
    }

    /// The current trigger and its sequence number.
    pub(super) fn trigger(&self) -> Option<(usize, u64)> {
        let triggered = self.triggered.lock().unwrap_or_else(|p| p.into_inner());
        triggered.map(|node| (node, self.trigger_seq.load(Ordering::SeqCst)))
    }

    pub(super) fn resume(&self) {
        *self.triggered.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.resume_generation.fetch_add(1, Ordering::SeqCst);
        self.changed.notify(usize::MAX);
    }

    /// Resumes after handling trigger `seq`; a trigger fired since (by the new leader's
    /// first commits) stays pending.
    pub(super) fn resume_handled(&self, seq: u64) {
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
pub(super) fn is_transition(plan: PlanCode) -> bool {
    matches!(plan, PlanCode::SubmitProcedure | PlanCode::UpdateProcedure)
}

pub(super) struct NodeHooks {
    pub(super) script: Arc<Script>,
    pub(super) node: usize,
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

    fn commit_started(&self, _point: &PersistPoint) {
        self.script.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    fn commit_settled(&self, _point: &PersistPoint) {
        self.script.in_flight.fetch_sub(1, Ordering::SeqCst);
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
