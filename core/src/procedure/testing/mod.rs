//! Crash-test facility (feature `testing`): persist hooks and the generic harnesses.
//!
//! [`ExecutorHooks`] are called by a session just before and just after every commit it makes
//! (procedure transitions, submissions, plans proposed by steps through
//! [`super::ProcedureContext::propose`], retention deletes), and after every forward step.
//! A hook can kill the executor at that point ([`HookAction::Kill`]: the commit is refused or
//! its result is thrown away, and the session stops as a crashed process would), or replace
//! a step's outcome with an injected non-retryable error (to force a rollback).
//!
//! [`CrashHarness`] builds on the hooks; see its docs for how later procedures use it. Its
//! world can be made adversarial: [`FlakyConsensus`] gives commits an unknown outcome
//! ([`UnknownOutcomes`]), and a [`Companion`] (e.g. the region cleaner) runs beside the
//! executor on every leader.

mod adversary;
mod harness;
mod script;

pub use adversary::{FlakyConsensus, UnknownOutcomes};
pub use harness::{Companion, CrashHarness, HarnessError, HarnessReport, RunOutcome};

use async_trait::async_trait;

use crate::model::{Epoch, ProcedureId};
use crate::plan::PlanCode;

use super::ProcedureError;

/// One commit a session is about to make (or has made).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistPoint {
    /// The committing session's epoch.
    pub epoch: Epoch,
    /// The procedure it is made for (`None` for submissions and retention).
    pub procedure: Option<ProcedureId>,
    /// The plan's code.
    pub plan: PlanCode,
}

/// What the executor does after a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// Carry on.
    Proceed,
    /// Die here: commit nothing (before) or act on nothing (after); the session stops.
    Kill,
}

/// Test hooks called by the executor. Every method defaults to "do nothing".
#[async_trait]
pub trait ExecutorHooks: Send + Sync + 'static {
    /// Just before a commit is proposed.
    async fn before_persist(&self, point: &PersistPoint) -> HookAction {
        let _ = point;
        HookAction::Proceed
    }
    /// Just after a commit succeeded, before the executor acts on it.
    async fn after_persist(&self, point: &PersistPoint) -> HookAction {
        let _ = point;
        HookAction::Proceed
    }
    /// A commit is about to start (before [`ExecutorHooks::before_persist`]).
    fn commit_started(&self, point: &PersistPoint) {
        let _ = point;
    }
    /// The commit started last for `point` is over, whatever its end: done after its
    /// after-persist hook, failed (its outcome maybe unknown), killed, or dropped mid-way
    /// because the session stopped. Called exactly once per [`ExecutorHooks::commit_started`].
    fn commit_settled(&self, point: &PersistPoint) {
        let _ = point;
    }
    /// After a forward step of `id` returned: `Some(error)` replaces its outcome.
    fn after_step(&self, id: ProcedureId) -> Option<ProcedureError> {
        let _ = id;
        None
    }
}
