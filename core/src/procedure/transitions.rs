//! What the session does with a step's outcome: build the next record, commit it, act.
//!
//! Every branch commits first and acts second. A commit that fails is an error of the step
//! (retried from the committed record); a commit refused because the record moved on (the
//! compare-and-set version) reschedules the procedure from what is committed.

use std::sync::Arc;

use crate::plan::{ConfigPlan, UpdateProcedure};
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
        next.attempts = 0;
        next.wake_at_ms = None;
        next.waiting_for = None;
        if status != ProcedureStatus::RollingBack && status != ProcedureStatus::RolledBack {
            // The error that started a rollback stays visible until the procedure ends.
            next.last_error = None;
        }
        Ok(next)
    }

    pub(crate) async fn after_step(
        self: &Arc<Self>,
        record: ProcedureRecord,
        instance: Box<dyn Procedure>,
        outcome: Result<Step, ProcedureError>,
    ) {
        let now = self.shared.runtime.clock.now_ms();
        let built = match outcome {
            Err(e) => {
                return self
                    .handle_error(record, instance, e, Direction::Forward)
                    .await;
            }
            Ok(Step::Await { until, waiting_for }) => {
                // Nothing to commit; the live instance is dropped so the next run starts
                // from the committed record.
                drop(instance);
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
                        .map(|child| new_procedure(child.as_ref(), now))
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
                self.commit_transition(record, next, spawn, then, Some(instance))
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
                self.commit_transition(record, next, Vec::new(), then, Some(instance))
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
                .commit_transition(record, next, Vec::new(), Then::Sleep(delay), None)
                .await;
        }
        next.attempts = 0;
        next.wake_at_ms = None;
        next.waiting_for = None;
        if !rolling_back && supports_rollback {
            tracing::warn!(procedure = %id, error = %error, "step failed; rolling back");
            next.status = ProcedureStatus::RollingBack;
            next.last_error = Some(error.to_string());
            self.commit_transition(record, next, Vec::new(), Then::Ready, None)
                .await
        } else {
            tracing::error!(procedure = %id, error = %error, rolling_back, "procedure failed");
            next.status = ProcedureStatus::Failed;
            next.last_error = Some(if rolling_back {
                format!("rollback failed: {error}")
            } else {
                error.to_string()
            });
            self.commit_transition(record, next, Vec::new(), Then::Finish, None)
                .await
        }
    }

    /// Commits `next` (compare-and-set on `record.version`), then acts.
    async fn commit_transition(
        self: &Arc<Self>,
        record: ProcedureRecord,
        next: ProcedureRecord,
        spawn: Vec<NewProcedure>,
        then: Then,
        instance: Option<Box<dyn Procedure>>,
    ) {
        let id = record.id;
        let parent = record.parent;
        let is_failure_record = instance.is_none() && matches!(then, Then::Sleep(_));
        let plan = ConfigPlan::UpdateProcedure(UpdateProcedure {
            record: next,
            spawn,
            expect_version: Some(record.version),
        });
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
                    let record = committed;
                    match self.shared.registry.decode(record.type_code, &record.data) {
                        Ok(fresh) => {
                            let direction = Direction::of(record.status);
                            Box::pin(self.handle_error(record, fresh, e, direction)).await
                        }
                        Err(decode) => self.set_phase(id, Phase::Unreadable(decode.to_string())),
                    }
                }
            }
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

/// The record a spawned child starts from.
pub(crate) fn new_procedure(
    procedure: &dyn Procedure,
    now: u64,
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
    })
}
