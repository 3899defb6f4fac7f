//! [`ProcedureContext`]: what a step can reach besides its persistent data (volatile only).

use std::any::Any;
use std::sync::Arc;

use crate::consensus::{Consensus, StateCell};
use crate::model::{Epoch, ProcedureId};
use crate::plan::ConfigPlan;
use crate::runtime::Runtime;
use crate::state::{ApplyResult, ProcedureStatus};

use super::ProcedureError;
use super::session::SessionCore;

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

/// Volatile context of one step: rebuilt for every step, never persisted.
pub struct ProcedureContext {
    pub(crate) id: ProcedureId,
    pub(crate) session: Arc<SessionCore>,
    pub(crate) children: Vec<ChildOutcome>,
    pub(crate) attempts: u32,
}

impl std::fmt::Debug for ProcedureContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcedureContext")
            .field("id", &self.id)
            .field("epoch", &self.session.epoch)
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
        self.session.epoch
    }

    /// Clock, spawner and randomness.
    pub fn runtime(&self) -> &Runtime {
        &self.session.shared.runtime
    }

    /// The consensus handle (for reading; propose through [`ProcedureContext::propose`]).
    pub fn consensus(&self) -> &Arc<dyn Consensus> {
        &self.session.shared.consensus
    }

    /// The applied cluster state.
    pub fn state(&self) -> Arc<StateCell> {
        self.session.shared.consensus.state()
    }

    /// The environment as `T`; fails if the application supplied another type.
    pub fn env<T: Any + Send + Sync>(&self) -> Result<&T, ProcedureError> {
        self.session
            .shared
            .env
            .downcast_ref::<T>()
            .ok_or(ProcedureError::MissingEnvironment(
                std::any::type_name::<T>(),
            ))
    }

    /// Commits a metadata plan under this executor's epoch, through the same gate (and test
    /// hooks) as the framework's own transitions: after the executor stops, it fails with
    /// [`ProcedureError::Stopped`]. The inner result is the state machine's verdict.
    pub async fn propose(&self, plan: ConfigPlan) -> Result<ApplyResult, ProcedureError> {
        self.session.commit(plan, Some(self.id)).await
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
        self.session.wait_stopped().await;
    }
}

#[cfg(test)]
impl ProcedureContext {
    /// A context outside any executor, for per-step tests (`procedures::testing`): commits go
    /// straight to `consensus` under `epoch`; `children` are the finished children the step
    /// sees.
    pub(crate) fn for_step_test(
        id: ProcedureId,
        epoch: Epoch,
        consensus: Arc<dyn Consensus>,
        runtime: Runtime,
        env: Environment,
        children: Vec<ChildOutcome>,
    ) -> Self {
        let shared = Arc::new(super::session::Shared {
            consensus,
            registry: Arc::new(super::ProcedureRegistry::new()),
            runtime,
            env,
            config: super::ExecutorConfig::default(),
            changed: event_listener::Event::new(),
            hooks: None,
        });
        Self {
            id,
            session: SessionCore::new(epoch, shared),
            children,
            attempts: 0,
        }
    }
}
