//! The executor's session as the [`StepHost`] every [`ProcedureContext`] reaches its services
//! through (kept out of `session.rs` so the context depends on nothing above it).

use std::sync::Arc;

use crate::consensus::Consensus;
use crate::model::{Epoch, ProcedureId};
use crate::plan::ConfigPlan;
use crate::runtime::Runtime;
use crate::state::ApplyResult;

use super::ProcedureError;
use super::context::{Environment, StepHost};
use super::session::SessionCore;
#[cfg(test)]
use super::{
    config::ExecutorConfig,
    context::{ChildOutcome, ProcedureContext},
    session::Shared,
};

#[async_trait::async_trait]
impl StepHost for SessionCore {
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    fn runtime(&self) -> &Runtime {
        &self.shared.runtime
    }

    fn consensus(&self) -> &Arc<dyn Consensus> {
        &self.shared.consensus
    }

    fn env(&self) -> &Environment {
        &self.shared.env
    }

    async fn commit(
        &self,
        plan: ConfigPlan,
        procedure: Option<ProcedureId>,
    ) -> Result<ApplyResult, ProcedureError> {
        SessionCore::commit(self, plan, procedure).await
    }

    async fn wait_stopped(&self) {
        SessionCore::wait_stopped(self).await;
    }
}

/// Builds contexts for driving one procedure's steps by hand in tests (per-step tests):
/// the steps run against `consensus` at `epoch`, outside any executor.
#[cfg(test)]
pub(crate) fn step_context(
    consensus: Arc<dyn Consensus>,
    runtime: Runtime,
    env: Environment,
    epoch: Epoch,
    id: ProcedureId,
    children: Vec<ChildOutcome>,
) -> ProcedureContext {
    let shared = Arc::new(Shared {
        consensus,
        registry: Arc::new(super::ProcedureRegistry::new()),
        runtime,
        env,
        config: ExecutorConfig::default(),
        changed: event_listener::Event::new(),
        hooks: None,
    });
    ProcedureContext {
        id,
        host: SessionCore::new(epoch, shared),
        slot: None,
        children,
        attempts: 0,
    }
}
