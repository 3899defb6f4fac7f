//! [`ProcedureContext`]: what a step can reach besides its persistent data (volatile only).

use std::any::Any;
use std::sync::Arc;

use crate::consensus::{Consensus, StateCell};
use crate::model::{Epoch, ProcedureId};
use crate::plan::ConfigPlan;
use crate::runtime::Runtime;
use crate::state::{ApplyResult, ProcedureStatus};

use super::ProcedureError;

/// What runs a step: the executor's session for one leadership term. Steps reach it only
/// through [`ProcedureContext`]; defined here so the context depends on nothing above it.
#[async_trait::async_trait]
pub(crate) trait StepHost: Send + Sync {
    /// The leader epoch the session runs under.
    fn epoch(&self) -> Epoch;
    /// Clock, spawner and randomness.
    fn runtime(&self) -> &Runtime;
    /// The consensus handle.
    fn consensus(&self) -> &Arc<dyn Consensus>;
    /// The embedding application's environment.
    fn env(&self) -> &Environment;
    /// Commits `plan` on behalf of `procedure` (gated by the session's stop).
    async fn commit(
        &self,
        plan: ConfigPlan,
        procedure: Option<ProcedureId>,
    ) -> Result<ApplyResult, ProcedureError>;
    /// Resolves when the session stops.
    async fn wait_stopped(&self);
}

/// The embedding application's services (DataNode clients, caches), shared by every step.
/// Steps reach a concrete type through [`ProcedureContext::env`].
pub type Environment = Arc<dyn Any + Send + Sync>;

/// How one child of a resumed parent ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildOutcome {
    /// The child's id.
    pub id: ProcedureId,
    /// Its type code.
    pub type_code: u32,
    /// Its durable status (finished when the parent runs, except for unreadable children).
    pub status: ProcedureStatus,
    /// Its output, if it succeeded.
    pub output: Option<Vec<u8>>,
    /// Its last error, if any.
    pub error: Option<String>,
}

/// One of the executor's worker slots, held by a running step: held while the step
/// computes or calls peers, given back while it waits for a commit, so that commits of many
/// procedures share one flush (group commit) whatever the number of workers.
pub(crate) struct WorkerSlot {
    permits: Arc<async_lock::Semaphore>,
    held: std::sync::Mutex<Option<async_lock::SemaphoreGuardArc>>,
}

impl WorkerSlot {
    /// A slot holding `guard`, one of `permits`.
    pub(crate) fn new(
        permits: Arc<async_lock::Semaphore>,
        guard: async_lock::SemaphoreGuardArc,
    ) -> Arc<Self> {
        Arc::new(Self {
            permits,
            held: std::sync::Mutex::new(Some(guard)),
        })
    }

    /// Gives the slot back (idempotent).
    pub(crate) fn release(&self) {
        let guard = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(guard);
    }

    /// Takes a slot again (after a commit), waiting for one to be free.
    pub(crate) async fn reacquire(&self) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if !held {
            let guard = self.permits.acquire_arc().await;
            *self.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
        }
    }
}

/// Volatile context of one step: rebuilt for every step, never persisted.
pub struct ProcedureContext {
    pub(crate) id: ProcedureId,
    pub(crate) host: Arc<dyn StepHost>,
    /// The worker slot the step holds (none when a test drives a step by hand).
    pub(crate) slot: Option<Arc<WorkerSlot>>,
    pub(crate) children: Vec<ChildOutcome>,
    pub(crate) attempts: u32,
}

impl std::fmt::Debug for ProcedureContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcedureContext")
            .field("id", &self.id)
            .field("epoch", &self.host.epoch())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl ProcedureContext {
    /// The running procedure's id (stable across restarts; use it to derive task ids).
    pub fn procedure_id(&self) -> ProcedureId {
        self.id
    }

    /// The leader epoch this step runs under (send it with every DataNode request).
    pub fn epoch(&self) -> Epoch {
        self.host.epoch()
    }

    /// Clock, spawner and randomness.
    pub fn runtime(&self) -> &Runtime {
        self.host.runtime()
    }

    /// The consensus handle (for reading; propose through [`ProcedureContext::propose`]).
    pub fn consensus(&self) -> &Arc<dyn Consensus> {
        self.host.consensus()
    }

    /// The applied cluster state.
    pub fn state(&self) -> Arc<StateCell> {
        self.host.consensus().state()
    }

    /// The environment as `T`; fails if the application supplied another type.
    pub fn env<T: Any + Send + Sync>(&self) -> Result<&T, ProcedureError> {
        self.host
            .env()
            .downcast_ref::<T>()
            .ok_or(ProcedureError::MissingEnvironment(
                std::any::type_name::<T>(),
            ))
    }

    /// Commits a metadata plan under this executor's epoch, through the same gate (and test
    /// hooks) as the framework's own transitions: after the executor stops, it fails with
    /// [`ProcedureError::Stopped`]. The inner result is the state machine's verdict.
    pub async fn propose(&self, plan: ConfigPlan) -> Result<ApplyResult, ProcedureError> {
        // The slot is free while the commit waits for durability: other procedures' steps
        // run meanwhile, and their commits join the same flush.
        if let Some(slot) = &self.slot {
            slot.release();
        }
        let result = self.host.commit(plan, Some(self.id)).await;
        if let Some(slot) = &self.slot {
            slot.reacquire().await;
        }
        result
    }

    /// Outcomes of the children this procedure spawned, in spawn order.
    pub fn children(&self) -> &[ChildOutcome] {
        &self.children
    }

    /// Failed attempts of this step so far (0 on the first try).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Resolves when the executor stops; a step blocking on something external may race it.
    pub async fn stopped(&self) {
        self.host.wait_stopped().await;
    }
}
