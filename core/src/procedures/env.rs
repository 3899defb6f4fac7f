//! What the region procedures reach besides their persistent data (volatile).

use std::sync::Arc;
use std::time::Duration;

use crate::confignode::clients::DataNodeClients;
use crate::confignode::inflight::InflightCreates;
use crate::model::{ProcedureId, TaskId};
use crate::procedure::{BackoffPolicy, ProcedureContext, ProcedureError};

/// Tunables of the region procedures.
#[derive(Debug, Clone)]
pub struct LifecycleConfig {
    /// Longest single long-poll of a task result (awaited without holding a worker).
    pub poll_wait: Duration,
    /// Backoff after a failed deletion and while a DataNode is unreachable.
    pub retry: BackoffPolicy,
    /// Data region groups may serve with one replica when a majority is not reached.
    pub data_quorum_at_least_one: bool,
}

impl Default for LifecycleConfig {
    fn default() -> Self {
        Self {
            poll_wait: Duration::from_secs(5),
            retry: BackoffPolicy {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(10),
                max_attempts: None,
            },
            data_quorum_at_least_one: false,
        }
    }
}

/// The environment region procedures expect in their [`ProcedureContext`].
#[derive(Clone)]
pub struct RegionEnv {
    /// Clients of DataNodes.
    pub clients: Arc<dyn DataNodeClients>,
    /// Creates in flight from the region cleaner (removals wait them out).
    pub inflight: Arc<InflightCreates>,
    /// Tunables.
    pub config: LifecycleConfig,
}

impl std::fmt::Debug for RegionEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionEnv")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RegionEnv {
    /// The region environment of a step.
    pub fn of(ctx: &ProcedureContext) -> Result<&RegionEnv, ProcedureError> {
        ctx.env::<RegionEnv>()
    }
}

/// The `seq`-th task id of procedure `id`. Unique across the cluster because procedure ids
/// are; persisted by the procedure before the task is submitted.
pub fn task_id_for(id: ProcedureId, seq: u32) -> TaskId {
    TaskId((id.0 << 20) | u64::from(seq & 0xF_FFFF))
}
