//! Small in-memory DataNode and ConfigNode used behind the real transport: they keep real
//! state (regions, tasks, epochs, databases), record the calls they receive, and return
//! whatever statuses the test sets up.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::api::{
    ApiError, ClusterStatus, ConfigNodeApi, CreateDatabaseRequest, CreateRegionRequest,
    DataNodeApi, DataNodeHeartbeat, DatabaseInfo, HeartbeatReport, MaintainTask, OrphanInfo,
    ProcedureInfo, ProcedureView, RegionGroupInfo, RegionReport, SubmitOutcome, TaskStatus,
};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, Epoch, ProcedureId, RegionId,
    TaskId,
};
use shoal_core::state::{DataNodeInfo, DataNodeStatus};

#[derive(Default)]
struct DataNodeState {
    seen_epoch: Epoch,
    regions: BTreeMap<RegionId, (CreateRegionRequest, Vec<u8>)>,
    tasks: BTreeMap<TaskId, (MaintainTask, TaskStatus)>,
    calls: Vec<String>,
    fail_next: Option<ApiError>,
    stall: Option<Duration>,
}

/// An in-memory DataNode.
#[derive(Default)]
pub struct FakeDataNode {
    state: Mutex<DataNodeState>,
}

impl FakeDataNode {
    fn with<R>(&self, f: impl FnOnce(&mut DataNodeState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Names of the calls received, in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|s| s.calls.clone())
    }

    /// The next call fails with `error`.
    pub fn fail_next(&self, error: ApiError) {
        self.with(|s| s.fail_next = Some(error));
    }

    /// Every call sleeps this long first (a slow or hung node).
    pub fn stall(&self, delay: Duration) {
        self.with(|s| s.stall = Some(delay));
    }

    /// Sets a submitted task's status (the task "runs" when the test says so).
    pub fn set_status(&self, task_id: TaskId, status: TaskStatus) {
        self.with(|s| {
            if let Some(entry) = s.tasks.get_mut(&task_id) {
                entry.1 = status;
            }
        });
    }

    /// The stored region, if any.
    pub fn region(&self, region: RegionId) -> Option<(CreateRegionRequest, Vec<u8>)> {
        self.with(|s| s.regions.get(&region).cloned())
    }

    /// Records the call, applies injected faults and checks the epoch.
    async fn enter(&self, name: &str, epoch: Option<Epoch>) -> Result<(), ApiError> {
        let (stall, injected) = self.with(|s| {
            s.calls.push(name.to_string());
            (s.stall, s.fail_next.take())
        });
        if let Some(delay) = stall {
            smol::Timer::after(delay).await;
        }
        if let Some(error) = injected {
            return Err(error);
        }
        if let Some(epoch) = epoch {
            self.with(|s| {
                if epoch < s.seen_epoch {
                    return Err(ApiError::StaleLeader {
                        request: epoch,
                        seen: s.seen_epoch,
                    });
                }
                s.seen_epoch = epoch;
                Ok(())
            })?;
        }
        Ok(())
    }
}

#[async_trait]
impl DataNodeApi for FakeDataNode {
    async fn create_region(
        &self,
        epoch: Epoch,
        request: CreateRegionRequest,
    ) -> Result<(), ApiError> {
        self.enter("create_region", Some(epoch)).await?;
        self.with(|s| match s.regions.get(&request.region) {
            Some((existing, _)) if *existing == request => Ok(()),
            Some(_) => Err(ApiError::Refused(format!(
                "{} exists with another config",
                request.region
            ))),
            None => {
                s.regions.insert(request.region, (request, Vec::new()));
                Ok(())
            }
        })
    }

    async fn delete_region(&self, epoch: Epoch, region: RegionId) -> Result<(), ApiError> {
        self.enter("delete_region", Some(epoch)).await?;
        self.with(|s| s.regions.remove(&region));
        Ok(())
    }

    async fn write_region(&self, region: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.enter("write_region", None).await?;
        self.with(|s| match s.regions.get_mut(&region) {
            Some((_, data)) => {
                data.extend_from_slice(&bytes);
                Ok(data.len() as u64)
            }
            None => Err(ApiError::Refused(format!("no region {region}"))),
        })
    }

    async fn submit_task(
        &self,
        epoch: Epoch,
        task: MaintainTask,
    ) -> Result<SubmitOutcome, ApiError> {
        self.enter("submit_task", Some(epoch)).await?;
        Ok(self.with(|s| match s.tasks.get(&task.task_id) {
            Some((existing, _)) if *existing == task => SubmitOutcome::Accepted,
            Some(_) => SubmitOutcome::Rejected(format!("{} is another task", task.task_id)),
            None => {
                s.tasks.insert(task.task_id, (task, TaskStatus::Processing));
                SubmitOutcome::Accepted
            }
        }))
    }

    async fn task_result(
        &self,
        task_id: TaskId,
        wait: Option<Duration>,
    ) -> Result<TaskStatus, ApiError> {
        self.enter("task_result", None).await?;
        let deadline = Instant::now() + wait.unwrap_or_default();
        loop {
            let status = self.with(|s| {
                s.tasks
                    .get(&task_id)
                    .map_or(TaskStatus::NotExist, |(_, status)| status.clone())
            });
            if status.is_terminal() || Instant::now() >= deadline {
                return Ok(status);
            }
            smol::Timer::after(Duration::from_millis(2)).await;
        }
    }

    async fn ack_task(&self, epoch: Epoch, task_id: TaskId) -> Result<(), ApiError> {
        self.enter("ack_task", Some(epoch)).await?;
        self.with(|s| {
            if s.tasks
                .get(&task_id)
                .is_some_and(|(_, st)| st.is_terminal())
            {
                s.tasks.remove(&task_id);
            }
        });
        Ok(())
    }

    async fn heartbeat(&self, epoch: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.enter("heartbeat", Some(epoch)).await?;
        Ok(self.with(|s| HeartbeatReport {
            regions: s
                .regions
                .iter()
                .map(|(region, (_, data))| RegionReport {
                    region: *region,
                    bytes: data.len() as u64,
                })
                .collect(),
            running_tasks: s
                .tasks
                .iter()
                .filter(|(_, (_, status))| !status.is_terminal())
                .map(|(id, _)| *id)
                .collect(),
        }))
    }
}

#[derive(Default)]
struct ConfigNodeState {
    databases: BTreeMap<DatabaseName, DatabaseInfo>,
    groups: Vec<RegionGroupInfo>,
    nodes: BTreeMap<DataNodeId, DataNodeInfo>,
    procedures: BTreeMap<ProcedureId, ProcedureInfo>,
    heartbeats: Vec<DataNodeHeartbeat>,
    request_keys: Vec<(&'static str, Option<String>)>,
    epoch: Epoch,
    /// Migrations asked for: (region, from, to).
    migrations: Vec<(RegionId, DataNodeId, Option<DataNodeId>)>,
    /// DataNode removals asked for: (id, force).
    removals: Vec<(DataNodeId, bool)>,
    orphans: Vec<OrphanInfo>,
}

/// An in-memory ConfigNode: databases, registrations and deletion procedures.
#[derive(Default)]
pub struct FakeConfigNode {
    state: Mutex<ConfigNodeState>,
}

impl FakeConfigNode {
    fn with<R>(&self, f: impl FnOnce(&mut ConfigNodeState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Publishes a region group (as a creation procedure would).
    pub fn add_group(&self, group: RegionGroupInfo) {
        self.with(|s| s.groups.push(group));
    }

    /// Heartbeats received.
    pub fn heartbeats(&self) -> Vec<DataNodeHeartbeat> {
        self.with(|s| s.heartbeats.clone())
    }

    /// Sets the leader epoch heartbeats report.
    pub fn set_epoch(&self, epoch: Epoch) {
        self.with(|s| s.epoch = epoch);
    }

    /// Orphans `list_orphans` reports.
    pub fn set_orphans(&self, orphans: Vec<OrphanInfo>) {
        self.with(|s| s.orphans = orphans);
    }

    /// Migrations and DataNode removals asked for, in call order.
    #[allow(clippy::type_complexity)]
    pub fn moves(
        &self,
    ) -> (
        Vec<(RegionId, DataNodeId, Option<DataNodeId>)>,
        Vec<(DataNodeId, bool)>,
    ) {
        self.with(|s| (s.migrations.clone(), s.removals.clone()))
    }

    /// The request keys create and delete calls arrived with, in call order.
    pub fn request_keys(&self) -> Vec<(&'static str, Option<String>)> {
        self.with(|s| s.request_keys.clone())
    }
}

#[async_trait]
impl ConfigNodeApi for FakeConfigNode {
    async fn create_database(
        &self,
        request: CreateDatabaseRequest,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.with(|s| {
            s.request_keys.push(("create_database", request_key));
            if s.databases.contains_key(&request.name) {
                return Err(ApiError::Refused(format!("{} exists", request.name)));
            }
            s.databases.insert(
                request.name.clone(),
                DatabaseInfo {
                    schema: DatabaseSchema {
                        name: request.name,
                        schema_replication_factor: request.schema_replication_factor,
                        data_replication_factor: request.data_replication_factor,
                    },
                    deleting: false,
                    schema_region_groups: request.schema_region_groups,
                    data_region_groups: request.data_region_groups,
                },
            );
            // A creating procedure's id of its own range, distinct from deletions'.
            Ok(ProcedureId(1_000 + s.databases.len() as u64))
        })
    }

    async fn delete_database(
        &self,
        name: DatabaseName,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.with(|s| {
            s.request_keys
                .push(("delete_database", request_key.clone()));
            let db = s
                .databases
                .get_mut(&name)
                .ok_or_else(|| ApiError::Refused(format!("no database {name}")))?;
            db.deleting = true;
            let id = ProcedureId(s.procedures.len() as u64 + 1);
            s.procedures.insert(
                id,
                ProcedureInfo {
                    id,
                    type_code: 302,
                    type_name: "DeleteDatabaseProcedure".into(),
                    state_code: 2,
                    state_name: "RemoveRegionGroups".into(),
                    status: ProcedureView::Suspended,
                    parent: None,
                    children: vec![ProcedureId(100), ProcedureId(101)],
                    submitted_at_ms: 1_000,
                    updated_at_ms: 2_000,
                    submitted_unix_ms: 1_795_000_000_000,
                    updated_unix_ms: 1_795_000_001_000,
                    attempts: 3,
                    last_error: Some("dn-2 unreachable".into()),
                    waiting_for: Some(format!("{} region groups", s.groups.len())),
                    output: None,
                    request_key: request_key.clone(),
                    database: Some(name.clone()),
                    notes: vec!["replica of data-3 on dn-2 abandoned".into()],
                },
            );
            Ok(id)
        })
    }

    async fn list_databases(&self) -> Result<Vec<DatabaseInfo>, ApiError> {
        Ok(self.with(|s| s.databases.values().cloned().collect()))
    }

    async fn list_region_groups(
        &self,
        database: Option<DatabaseName>,
    ) -> Result<Vec<RegionGroupInfo>, ApiError> {
        Ok(self.with(|s| {
            s.groups
                .iter()
                .filter(|g| database.as_ref().is_none_or(|d| *d == g.database))
                .cloned()
                .collect()
        }))
    }

    async fn list_data_nodes(&self) -> Result<Vec<DataNodeInfo>, ApiError> {
        Ok(self.with(|s| s.nodes.values().cloned().collect()))
    }

    async fn list_procedures(&self) -> Result<Vec<ProcedureInfo>, ApiError> {
        Ok(self.with(|s| s.procedures.values().cloned().collect()))
    }

    async fn get_procedure(&self, id: ProcedureId) -> Result<Option<ProcedureInfo>, ApiError> {
        Ok(self.with(|s| s.procedures.get(&id).cloned()))
    }

    async fn register_data_node(
        &self,
        known_id: Option<DataNodeId>,
        address: String,
    ) -> Result<DataNodeId, ApiError> {
        self.with(|s| {
            let id = known_id.unwrap_or(DataNodeId(s.nodes.len() as u32 + 1));
            let location =
                DataNodeLocation::new(id, address).map_err(|e| ApiError::Refused(e.to_string()))?;
            s.nodes.insert(
                id,
                DataNodeInfo {
                    location,
                    status: DataNodeStatus::Running,
                },
            );
            Ok(id)
        })
    }

    async fn data_node_heartbeat(&self, heartbeat: DataNodeHeartbeat) -> Result<Epoch, ApiError> {
        self.with(|s| {
            if !s.nodes.contains_key(&heartbeat.id) {
                return Err(ApiError::Refused(format!(
                    "{} is not registered",
                    heartbeat.id
                )));
            }
            s.heartbeats.push(heartbeat);
            Ok(s.epoch)
        })
    }

    async fn migrate_region(
        &self,
        region: RegionId,
        from: DataNodeId,
        to: Option<DataNodeId>,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.with(|s| {
            s.request_keys.push(("migrate_region", request_key));
            if from == DataNodeId(99) {
                return Err(ApiError::Refused(format!("{from} is not registered")));
            }
            s.migrations.push((region, from, to));
            Ok(ProcedureId(1_000 + s.migrations.len() as u64))
        })
    }

    async fn remove_data_node(
        &self,
        id: DataNodeId,
        force: bool,
        request_key: Option<String>,
    ) -> Result<ProcedureId, ApiError> {
        self.with(|s| {
            s.request_keys.push(("remove_data_node", request_key));
            s.removals.push((id, force));
            Ok(ProcedureId(2_000 + s.removals.len() as u64))
        })
    }

    async fn list_orphans(&self) -> Result<Vec<OrphanInfo>, ApiError> {
        self.with(|s| Ok(s.orphans.clone()))
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, ApiError> {
        self.with(|s| {
            Ok(ClusterStatus {
                epoch: Epoch(7),
                queued_creates: s.databases.len() as u64,
                legacy_deletions: 2,
            })
        })
    }
}
