//! The leader's region cleaner: retries queued create tasks until each missing replica exists.
//!
//! A create task is queued when a region group was published with a quorum but without every
//! replica. The cleaner makes sure the target is in the group's footprint (durably, before the
//! create leaves), calls the (idempotent) `create_region` at the target's current address
//! (tasks name DataNodes by id; a DataNode that re-registered elsewhere is dialled there),
//! then records the new location and removes the task, in that order: a crash in between
//! re-runs the create, which succeeds again. Failures back off exponentially with jitter, per
//! task; a `StaleLeader` answer is reported to the [`EpochHealer`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::CreateRegionRequest;
use crate::consensus::Consensus;
use crate::model::{Epoch, MaintainQueueId, RegionReplicaSet};
use crate::plan::{AddRegionLocation, ConfigPlan, DropQueuedCreates, RecordReplicaFootprints};
use crate::runtime::Runtime;
use crate::state::{QueuedCreate, Rejection};

use super::clients::DataNodeClients;
use super::fence::EpochHealer;
use super::inflight::InflightCreates;
use crate::procedure::BackoffPolicy;

/// What one cleaner pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanerPass {
    /// Tasks whose replica now exists.
    pub created: Vec<MaintainQueueId>,
    /// Tasks that failed this time and will be retried.
    pub failed: Vec<MaintainQueueId>,
    /// Tasks skipped because they are backing off.
    pub deferred: Vec<MaintainQueueId>,
}

/// Retries the region-maintain queue's create tasks while this node leads.
pub struct RegionCleaner {
    consensus: Arc<dyn Consensus>,
    clients: Arc<dyn DataNodeClients>,
    runtime: Runtime,
    inflight: Arc<InflightCreates>,
    healer: Arc<EpochHealer>,
    backoff: BackoffPolicy,
    /// Per task: failed attempts and the earliest time of the next one (volatile).
    retry: Mutex<BTreeMap<MaintainQueueId, (u32, u64)>>,
}

impl RegionCleaner {
    /// A cleaner; `backoff` bounds the delay between attempts of one task.
    pub fn new(
        consensus: Arc<dyn Consensus>,
        clients: Arc<dyn DataNodeClients>,
        runtime: Runtime,
        inflight: Arc<InflightCreates>,
        healer: Arc<EpochHealer>,
        backoff: BackoffPolicy,
    ) -> Self {
        Self {
            consensus,
            clients,
            runtime,
            inflight,
            healer,
            backoff,
            retry: Mutex::new(BTreeMap::new()),
        }
    }

    /// Runs passes every `interval` until leadership at `epoch` is lost.
    pub async fn run(&self, epoch: Epoch, interval: Duration) {
        let watch = self.consensus.leadership();
        super::every_while_leading(&watch, epoch, &self.runtime, interval, || async {
            self.run_once(epoch).await;
        })
        .await;
    }

    /// One pass over the queue.
    pub async fn run_once(&self, epoch: Epoch) -> CleanerPass {
        let tasks: Vec<(MaintainQueueId, QueuedCreate)> = self.consensus.state().read(|s| {
            s.create_queue
                .iter()
                .map(|(id, t)| (*id, t.clone()))
                .collect()
        });
        let mut pass = CleanerPass::default();
        let now = self.runtime.clock.now_ms();
        {
            let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
            retry.retain(|id, _| tasks.iter().any(|(t, _)| t == id));
        }
        for (id, task) in tasks {
            let due = self
                .retry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .is_none_or(|(_, next)| *next <= now);
            if !due {
                pass.deferred.push(id);
                continue;
            }
            match self.create_one(epoch, id, &task).await {
                Ok(true) => {
                    self.retry
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    pass.created.push(id);
                }
                Ok(false) => {}
                Err(message) => {
                    let mut retry = self.retry.lock().unwrap_or_else(|p| p.into_inner());
                    let entry = retry.entry(id).or_insert((0, 0));
                    entry.0 += 1;
                    let delay = self.backoff.delay(entry.0, self.runtime.rng.as_ref());
                    entry.1 = now + delay.as_millis() as u64;
                    tracing::warn!(
                        queued = %id, region = %task.group.region, data_node = %task.target,
                        attempts = entry.0, retry_in_ms = delay.as_millis() as u64,
                        "creating missing replica failed: {message}"
                    );
                    pass.failed.push(id);
                }
            }
        }
        pass
    }

    /// Creates one missing replica. `Ok(false)`: the task vanished (its group is being
    /// removed), nothing was done.
    async fn create_one(
        &self,
        epoch: Epoch,
        id: MaintainQueueId,
        task: &QueuedCreate,
    ) -> Result<bool, String> {
        let region = task.group.region;
        let _inflight = self.inflight.enter(region);
        // Re-check under the in-flight mark: a removal that dropped the task first must not
        // see a create land after it.
        let queued = self
            .consensus
            .state()
            .read(|s| s.create_queue.contains_key(&id));
        if !queued {
            return Ok(false);
        }
        let generation = self.ensure_footprint(epoch, task).await?;
        let started = self.runtime.clock.now_ms();
        let request = CreateRegionRequest {
            region,
            database: task.database.clone(),
            peers: task.group.replicas.clone(),
            generation,
        };
        let location = self
            .consensus
            .state()
            .read(|s| s.data_nodes.get(&task.target).map(|n| n.location.clone()))
            .ok_or_else(|| format!("DataNode {} is not registered", task.target))?;
        if let Err(e) = self
            .clients
            .client(&location)
            .create_region(epoch, request)
            .await
        {
            if let crate::api::ApiError::StaleLeader { request, seen } = &e {
                self.healer.report(task.target, *request, *seen);
            }
            return Err(e.to_string());
        }
        self.record_created(epoch, id, task).await?;
        tracing::info!(
            queued = %id, %region, data_node = %task.target, outcome = "success",
            duration_ms = self.runtime.clock.now_ms().saturating_sub(started),
            "missing replica created"
        );
        Ok(true)
    }

    /// Makes sure `task`'s target is in its group's footprint — durably, before the create
    /// leaves: a create whose reply is lost still happened — and returns the creation
    /// generation it holds there. Refused for a database being deleted.
    async fn ensure_footprint(&self, epoch: Epoch, task: &QueuedCreate) -> Result<u64, String> {
        let region = task.group.region;
        let generation =
            |s: &crate::state::ClusterState| s.creation_generation(region, task.target);
        if let Some(known) = self.consensus.state().read(generation) {
            return Ok(known);
        }
        let record = ConfigPlan::RecordReplicaFootprints(RecordReplicaFootprints {
            database: task.database.clone(),
            groups: vec![RegionReplicaSet::new(region, vec![task.target])],
        });
        match self.consensus.propose(epoch, record).await {
            Ok(Ok(_)) => {}
            Ok(Err(rejection)) => return Err(rejection.to_string()),
            Err(e) => return Err(e.to_string()),
        }
        self.consensus
            .state()
            .read(generation)
            .ok_or_else(|| format!("{} left the footprint of {region}", task.target))
    }

    /// Records the created replica in its group, then drops the task (in that order: a crash
    /// in between re-runs the idempotent create).
    async fn record_created(
        &self,
        epoch: Epoch,
        id: MaintainQueueId,
        task: &QueuedCreate,
    ) -> Result<(), String> {
        let region = task.group.region;
        let add = ConfigPlan::AddRegionLocation(AddRegionLocation {
            region,
            data_node: task.target,
        });
        match self
            .consensus
            .propose(epoch, add)
            .await
            .map_err(|e| e.to_string())?
        {
            Ok(_) => {}
            Err(Rejection::UnknownRegion(_)) => {
                // Cannot happen while removals wait for in-flight creates; say so loudly.
                tracing::error!(%region, "created a replica of a group that no longer exists");
            }
            Err(rejection) => return Err(rejection.to_string()),
        }
        let drop = ConfigPlan::DropQueuedCreates(DropQueuedCreates { ids: vec![id] });
        self.consensus
            .propose(epoch, drop)
            .await
            .map_err(|e| e.to_string())?
            .ok();
        Ok(())
    }
}
