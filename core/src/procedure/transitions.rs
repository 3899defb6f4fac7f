//! What the session does with a step's outcome: build the next record, commit it, act.
//!
//! Every branch commits first and acts second. A commit that fails is an error of the step
//! (retried from the committed record); a commit refused because the record moved on (the
//! compare-and-set version) reschedules the procedure from what is committed.

use std::sync::Arc;

use crate::plan::{ConfigPlan, TransitionWithEffect, UpdateProcedure};
use crate::state::{Applied, NewProcedure, ProcedureRecord, ProcedureStatus, Rejection};

use super::session::{Phase, SessionCore};
use super::{Procedure, ProcedureError, RollbackStep, Step, normalize_lock_keys};

/// Which direction a failed step was going: its error is handled differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// A forward step (`Procedure::step`).
    Forward,
    /// A rollback step (`Procedure::rollback`).
    RollingBack,
}

impl Direction {
    fn of(status: ProcedureStatus) -> Self {
        if status == ProcedureStatus::RollingBack {
            Direction::RollingBack
        } else {
            Direction::Forward
        }
    }
}

/// How a committed transition must be followed up.
enum Then {
    Ready,
    Sleep(std::time::Duration),
    Suspend,
    Finish,
}

impl SessionCore {
    /// The record after a successful step of `instance`.
    fn next_record(
        &self,
        record: &ProcedureRecord,
        instance: &dyn Procedure,
        status: ProcedureStatus,
    ) -> Result<ProcedureRecord, ProcedureError> {
        let state = instance.state();
        let mut next = record.clone();
        next.state_code = state.code;
        next.state_name = state.name.to_string();
        next.data = instance.encode()?;
        next.status = status;
        next.updated_at_ms = self.shared.runtime.clock.now_ms();
        next.updated_unix_ms = self.shared.runtime.clock.unix_ms();
        next.attempts = 0;
        next.wake_at_ms = None;
        next.waiting_for = None;
        if status != ProcedureStatus::RollingBack && status != ProcedureStatus::RolledBack {
            // The error that started a rollback stays visible until the procedure ends.
            next.last_error = None;
        }
        Ok(next)
    }

    /// `effect`: the plan the step staged, committed in the transition's entry.
    pub(crate) async fn after_step(
        self: &Arc<Self>,
        record: ProcedureRecord,
        instance: Box<dyn Procedure>,
        outcome: Result<Step, ProcedureError>,
        effect: Option<ConfigPlan>,
    ) {
        let now = self.shared.runtime.clock.now_ms();
        let built = match outcome {
            Err(e) => {
                return self
                    .handle_error(record, instance, e, Direction::Forward)
                    .await;
            }
            Ok(Step::Await { .. }) if effect.is_some() => {
                let error = ProcedureError::Data(
                    "a step staged a plan and then awaited, which commits nothing".into(),
                );
                return self
                    .handle_error(record, instance, error, Direction::Forward)
                    .await;
            }
            Ok(Step::Await { until, waiting_for }) => {
                // Nothing to commit. The live instance is kept only when its persistent
                // data is exactly the committed record (what decoding it would give, plus
                // what the instance remembers for itself); a step that changed its data
                // and then awaited is dropped, so the next run starts from the record.
                if instance
                    .encode()
                    .is_ok_and(|data| data.as_slice() == record.data.as_slice())
                {
                    self.put_instance(record.id, instance);
                } else {
                    drop(instance);
                }
                self.await_then_ready(record.id, until, waiting_for);
                return;
            }
            Ok(Step::Continue) => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::Runnable)
                .map(|r| (r, Vec::new(), Then::Ready)),
            Ok(Step::SpawnChildren(children)) if children.is_empty() => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::Runnable)
                .map(|r| (r, Vec::new(), Then::Ready)),
            Ok(Step::Wait { after, waiting_for }) => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::Waiting)
                .map(|mut r| {
                    r.wake_at_ms = Some(now + after.as_millis() as u64);
                    r.waiting_for = Some(waiting_for);
                    (r, Vec::new(), Then::Sleep(after))
                }),
            Ok(Step::SpawnChildren(children)) => {
                match self.next_record(&record, instance.as_ref(), ProcedureStatus::Suspended) {
                    Ok(r) => children
                        .iter()
                        .map(|child| {
                            new_procedure(child.as_ref(), now, self.shared.runtime.clock.unix_ms())
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map(|spawn| (r, spawn, Then::Suspend)),
                    Err(e) => Err(e),
                }
            }
            Ok(Step::Done(output)) => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::Succeeded)
                .map(|mut r| {
                    r.output = Some(serde_bytes::ByteBuf::from(output));
                    (r, Vec::new(), Then::Finish)
                }),
        };
        match built {
            Ok((next, spawn, then)) => {
                let transition = Transition {
                    next,
                    spawn,
                    effect,
                };
                self.commit_transition(record, transition, then, Some(instance))
                    .await
            }
            Err(e) => {
                self.handle_error(record, instance, e, Direction::Forward)
                    .await
            }
        }
    }

    pub(crate) async fn after_rollback(
        self: &Arc<Self>,
        record: ProcedureRecord,
        instance: Box<dyn Procedure>,
        outcome: Result<RollbackStep, ProcedureError>,
        effect: Option<ConfigPlan>,
    ) {
        let built = match outcome {
            Err(e) => {
                return self
                    .handle_error(record, instance, e, Direction::RollingBack)
                    .await;
            }
            Ok(RollbackStep::Continue) => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::RollingBack)
                .map(|r| (r, Then::Ready)),
            Ok(RollbackStep::Done) => self
                .next_record(&record, instance.as_ref(), ProcedureStatus::RolledBack)
                .map(|r| (r, Then::Finish)),
        };
        match built {
            Ok((next, then)) => {
                let transition = Transition {
                    next,
                    spawn: Vec::new(),
                    effect,
                };
                self.commit_transition(record, transition, then, Some(instance))
                    .await
            }
            Err(e) => {
                self.handle_error(record, instance, e, Direction::RollingBack)
                    .await
            }
        }
    }

    /// Retry with backoff, roll back, or fail. The live instance is discarded: the next
    /// attempt starts from the committed record, not from a half-mutated value.
    async fn handle_error(
        self: &Arc<Self>,
        record: ProcedureRecord,
        instance: Box<dyn Procedure>,
        error: ProcedureError,
        direction: Direction,
    ) {
        let rolling_back = direction == Direction::RollingBack;
        let id = record.id;
        if error.is_stop() || self.is_stopped() {
            self.stop_now();
            return;
        }
        let supports_rollback = instance.supports_rollback();
        drop(instance);
        let now = self.shared.runtime.clock.now_ms();
        let attempts = record.attempts.saturating_add(1);
        let policy = &self.shared.config.backoff;
        let mut next = record.clone();
        next.updated_at_ms = now;
        next.updated_unix_ms = self.shared.runtime.clock.unix_ms();
        if error.is_retryable() && policy.may_retry(attempts) {
            let delay = policy.delay(attempts, self.shared.runtime.rng.as_ref());
            tracing::warn!(procedure = %id, attempts, error = %error, ?delay, "step failed; retrying");
            next.status = if rolling_back {
                ProcedureStatus::RollingBack
            } else {
                ProcedureStatus::Runnable
            };
            next.attempts = attempts;
            next.last_error = Some(error.to_string());
            next.wake_at_ms = Some(now + delay.as_millis() as u64);
            next.waiting_for = Some(format!("retry {attempts} after: {error}"));
            return self
                .commit_transition(record, Transition::record(next), Then::Sleep(delay), None)
                .await;
        }
        next.attempts = 0;
        next.wake_at_ms = None;
        next.waiting_for = None;
        if !rolling_back && supports_rollback {
            tracing::warn!(procedure = %id, error = %error, "step failed; rolling back");
            next.status = ProcedureStatus::RollingBack;
            next.last_error = Some(error.to_string());
            self.commit_transition(record, Transition::record(next), Then::Ready, None)
                .await
        } else {
            tracing::error!(procedure = %id, error = %error, rolling_back, "procedure failed");
            next.status = ProcedureStatus::Failed;
            next.last_error = Some(if rolling_back {
                format!("rollback failed: {error}")
            } else {
                error.to_string()
            });
            self.commit_transition(record, Transition::record(next), Then::Finish, None)
                .await
        }
    }

    /// Commits `transition` (compare-and-set on `record.version`), then acts.
    async fn commit_transition(
        self: &Arc<Self>,
        record: ProcedureRecord,
        transition: Transition,
        then: Then,
        instance: Option<Box<dyn Procedure>>,
    ) {
        let id = record.id;
        let parent = record.parent;
        let is_failure_record = instance.is_none() && matches!(then, Then::Sleep(_));
        let has_effect = transition.effect.is_some();
        let plan = transition.into_plan(record.version);
        match self.commit(plan, Some(id)).await {
            Ok(Ok(applied)) => {
                if let Some(instance) = instance {
                    self.put_instance(id, instance);
                }
                match then {
                    Then::Ready => self.make_ready_first(id),
                    Then::Sleep(delay) => self.sleep_then_ready(id, delay),
                    Then::Suspend => {
                        self.set_phase(id, Phase::Suspended);
                        if let Applied::ProcedureUpdated { children } = &applied {
                            tracing::debug!(procedure = %id, ?children, "children spawned");
                        }
                        // Loads the children (they inherit this procedure's locks).
                        self.sync_from_state();
                        self.schedule(id);
                    }
                    Then::Finish => self.finish(id, parent),
                }
            }
            Ok(Err(
                Rejection::ProcedureVersionMismatch { .. } | Rejection::ProcedureFinished(_),
            )) => {
                // An earlier commit whose outcome we did not learn has landed: continue from
                // what is committed (for a finished record: its finish path).
                tracing::warn!(procedure = %id, "record moved on; resuming from the log");
                self.resume_from_committed(id);
            }
            Ok(Err(rejection)) if has_effect => {
                // The step's staged plan was refused (nothing applied): the step failed with
                // that verdict, and is retried or aborts from the committed record.
                tracing::warn!(procedure = %id, error = %rejection, "a step's staged plan was refused");
                self.retry_from_committed(&record, rejection.into()).await;
            }
            Ok(Err(rejection)) => {
                tracing::error!(procedure = %id, error = %rejection, "transition refused");
                self.set_phase(id, Phase::Unreadable(rejection.to_string()));
            }
            Err(e) if e.is_stop() => {}
            Err(e) => {
                if is_failure_record {
                    // Only the bookkeeping of a failed attempt was lost; the retry goes on.
                    if let Then::Sleep(delay) = then {
                        tracing::warn!(procedure = %id, error = %e, "failed to record a failed attempt");
                        self.sleep_then_ready(id, delay);
                    }
                } else {
                    let committed = self
                        .shared
                        .consensus
                        .state()
                        .read(|s| s.procedures.get(&id).cloned())
                        .unwrap_or_else(|| record.clone());
                    if committed.version != record.version || committed.status.is_finished() {
                        // The commit (or another) landed although we saw an error: carry on
                        // from what is committed, never from the failure.
                        return self.resume_from_committed(id);
                    }
                    // A failed commit is an error of the step: retried from the log.
                    self.retry_from_committed(&committed, e).await;
                }
            }
        }
    }

    /// Handles `error` as the failure of the step that started from `record` (the committed
    /// one), with an instance rebuilt from it.
    async fn retry_from_committed(
        self: &Arc<Self>,
        record: &ProcedureRecord,
        error: ProcedureError,
    ) {
        let record = record.clone();
        match self.shared.registry.decode(record.type_code, &record.data) {
            Ok(fresh) => {
                let direction = Direction::of(record.status);
                Box::pin(self.handle_error(record, fresh, error, direction)).await
            }
            Err(decode) => self.set_phase(record.id, Phase::Unreadable(decode.to_string())),
        }
    }
}

/// What one step commits: the procedure's next record, the children it spawns and the plan
/// it staged, all in one log entry.
struct Transition {
    next: ProcedureRecord,
    spawn: Vec<NewProcedure>,
    effect: Option<ConfigPlan>,
}

impl Transition {
    /// Just a new record (bookkeeping of a failed attempt, a rollback's start, a failure).
    fn record(next: ProcedureRecord) -> Self {
        Self {
            next,
            spawn: Vec::new(),
            effect: None,
        }
    }

    /// The plan, applied only while the stored record is at `version`.
    fn into_plan(self, version: u64) -> ConfigPlan {
        let update = UpdateProcedure {
            record: self.next,
            spawn: self.spawn,
            expect_version: Some(version),
        };
        match self.effect {
            None => ConfigPlan::UpdateProcedure(update),
            Some(effect) => ConfigPlan::TransitionWithEffect(TransitionWithEffect {
                update,
                effect: Box::new(effect),
            }),
        }
    }
}

impl SessionCore {
    /// Continues `id` from its committed record: reloads what the log holds (children a
    /// landed spawn created) and schedules it; a finished record runs the finish path.
    fn resume_from_committed(self: &Arc<Self>, id: crate::model::ProcedureId) {
        // The live instance may be ahead of (or behind) the log: rebuild from the record.
        self.forget_instance(id);
        self.sync_from_state();
        self.schedule(id);
    }
}

/// The record a procedure starts from, submitted at `now` (monotonic) / `unix_ms` (wall).
pub(crate) fn new_procedure(
    procedure: &dyn Procedure,
    now: u64,
    unix_ms: u64,
) -> Result<NewProcedure, ProcedureError> {
    let state = procedure.state();
    Ok(NewProcedure {
        type_code: procedure.type_code(),
        type_name: procedure.type_name().to_string(),
        state_code: state.code,
        state_name: state.name.to_string(),
        data: procedure.encode()?,
        lock_keys: normalize_lock_keys(procedure.lock_keys()),
        submitted_at_ms: now,
        submitted_unix_ms: unix_ms,
    })
}
