//! The states stored in `tests/fixtures/`. Deterministic: the same code writes the same bytes.

use std::path::PathBuf;

use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, MaintainQueueId, RegionId,
    RegionKind, RegionReplicaSet, ReplicationFactor, TaskId,
};
use shoal_core::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, NewRegionMaintainTask,
    OfferRegionMaintainTasks, PollRegionMaintainTask, RegisterDataNode, ReserveRegionIds,
    SubmitProcedure,
};
use shoal_core::snapshot::{
    ClusterStateV1, ClusterStateV2, RegionMaintainTaskV2, Snapshot, SnapshotV1, SnapshotV2,
};
use shoal_core::state::{
    ClusterState, LockKey, LockMode, LockResource, NewProcedure, RegionMaintainKind,
};

/// Directory holding the committed fixture files.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Name of the v1 snapshot fixture.
pub const SNAPSHOT_V1: &str = "snapshot-v1.bin";
/// Name of the v2 snapshot fixture.
pub const SNAPSHOT_V2: &str = "snapshot-v2.bin";
/// Name of the v3 snapshot fixture.
pub const SNAPSHOT_V3: &str = "snapshot-v3.bin";
/// Name of the pre-procedure log fixture (see [`legacy_log`]).
pub const LEGACY_LOG: &str = "legacy-log-v1.bin";

fn apply_all(plans: &[ConfigPlan]) -> ClusterState {
    let mut state = ClusterState::default();
    for plan in plans {
        if let Err(rejection) = state.apply(plan) {
            panic!("fixture plan rejected: {rejection}");
        }
    }
    state
}

fn db(name: &str) -> DatabaseName {
    DatabaseName::new(name).expect("fixture name is valid")
}

fn rf(n: u8) -> ReplicationFactor {
    ReplicationFactor::new(n).expect("fixture factor is valid")
}

/// A small cluster: three DataNodes, two databases with region groups, one queued create
/// task and one submitted procedure.
pub fn base_state() -> ClusterState {
    let nodes = [DataNodeId(0), DataNodeId(1), DataNodeId(2)];
    let group = |kind, id| RegionReplicaSet::new(RegionId::new(kind, id), nodes.to_vec());
    let mut plans: Vec<ConfigPlan> = (0..3)
        .map(|i| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: format!("127.0.0.1:{}", 6700 + i),
            })
        })
        .collect();
    for name in ["metrics", "logs"] {
        plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
            schema: DatabaseSchema {
                name: db(name),
                schema_replication_factor: rf(1),
                data_replication_factor: rf(3),
            },
            created_by: None,
        }));
    }
    plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count: 4,
        for_procedure: None,
    }));
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("metrics"),
        groups: vec![group(RegionKind::Schema, 0), group(RegionKind::Data, 1)],
    }));
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("logs"),
        groups: vec![group(RegionKind::Data, 2), group(RegionKind::Data, 3)],
    }));
    plans.push(ConfigPlan::OfferRegionMaintainTasks(
        OfferRegionMaintainTasks {
            tasks: vec![NewRegionMaintainTask {
                kind: RegionMaintainKind::Create,
                database: db("logs"),
                region: group(RegionKind::Data, 3),
                target: location(2),
            }],
        },
    ));
    plans.push(ConfigPlan::SubmitProcedure(SubmitProcedure {
        procedure: NewProcedure {
            type_code: 1,
            type_name: "Fixture".into(),
            state_code: 1,
            state_name: "Start".into(),
            data: vec![0xa0],
            lock_keys: vec![LockKey {
                resource: LockResource::Database(db("logs")),
                mode: LockMode::Exclusive,
            }],
            submitted_at_ms: 1_700_000_000_000,
            submitted_unix_ms: 0,
        },
        request_key: Some("fixture-request".into()),
    }));
    apply_all(&plans)
}

fn location(id: u32) -> DataNodeLocation {
    DataNodeLocation::new(DataNodeId(id), format!("127.0.0.1:{}", 6700 + id))
        .expect("fixture address is valid")
}

/// The v3 fixture: [`base_state`] at log index 12, term 3.
pub fn snapshot_v3() -> Snapshot {
    Snapshot {
        last_index: 12,
        last_term: 3,
        state: base_state(),
    }
}

/// [`base_state`] in the v2 shape (no footprints, task targets by location).
fn base_state_v2() -> ClusterStateV2 {
    let state = base_state();
    let in_v2 = |id: &MaintainQueueId,
                 kind,
                 database: &DatabaseName,
                 group: &RegionReplicaSet,
                 target: DataNodeId| {
        let task = RegionMaintainTaskV2 {
            kind,
            database: database.clone(),
            region: group.clone(),
            target: location(target.0),
        };
        (TaskId(id.0), task)
    };
    ClusterStateV2 {
        next_data_node_id: state.next_data_node_id,
        next_region_id: state.next_region_id,
        next_procedure_id: state.next_procedure_id,
        next_task_id: state.next_queue_id,
        region_maintain_queue: state
            .create_queue
            .iter()
            .map(|(id, t)| {
                in_v2(
                    id,
                    RegionMaintainKind::Create,
                    &t.database,
                    &t.group,
                    t.target,
                )
            })
            .collect(),
        pending_legacy_deletions: state
            .legacy_deletions
            .iter()
            .map(|(id, t)| {
                in_v2(
                    id,
                    RegionMaintainKind::LegacyDelete,
                    &t.database,
                    &t.group,
                    t.target,
                )
            })
            .collect(),
        data_nodes: state.data_nodes,
        databases: state.databases,
        partition_tables: state.partition_tables,
        procedures: state.procedures,
        procedure_request_keys: state.procedure_request_keys,
        region_reservations: state.region_reservations,
    }
}

/// The v2 fixture: [`base_state`] in the v2 shape at log index 12, term 3.
pub fn snapshot_v2() -> SnapshotV2 {
    SnapshotV2 {
        last_index: 12,
        last_term: 3,
        state: base_state_v2(),
    }
}

/// The v1 fixture: [`base_state`] in the v1 shape, whose queue also holds two legacy delete
/// tasks (ids 100 and 101) for region data-9 of a database that was being dropped.
pub fn snapshot_v1() -> SnapshotV1 {
    let state = base_state_v2();
    let mut queue = state.region_maintain_queue.clone();
    let doomed = RegionReplicaSet::new(
        RegionId::new(RegionKind::Data, 9),
        vec![DataNodeId(0), DataNodeId(1)],
    );
    for (task, node) in [(100, 0), (101, 1)] {
        queue.insert(
            TaskId(task),
            RegionMaintainTaskV2 {
                kind: RegionMaintainKind::LegacyDelete,
                database: db("old_db"),
                region: doomed.clone(),
                target: location(node),
            },
        );
    }
    SnapshotV1 {
        last_index: 40,
        last_term: 2,
        state: ClusterStateV1 {
            next_data_node_id: state.next_data_node_id,
            next_region_id: state.next_region_id,
            next_procedure_id: state.next_procedure_id,
            next_task_id: 102,
            data_nodes: state.data_nodes,
            databases: state.databases,
            partition_tables: state.partition_tables,
            region_maintain_queue: queue,
            procedures: state.procedures,
            procedure_request_keys: state.procedure_request_keys,
        },
    }
}

/// A log as a release before procedures wrote it: the maintain queue held a legacy delete
/// (task 0, the replica of data-1 on dn-0) and a create (task 1, data-1 on dn-2), and the
/// old drainer then polled the oldest task — the delete it had just executed. Replayed, the
/// same task must be popped: the create stays queued, no legacy deletion stays pending.
pub fn legacy_log() -> Vec<ConfigPlan> {
    let nodes = [DataNodeId(0), DataNodeId(1), DataNodeId(2)];
    let group = RegionReplicaSet::new(RegionId::new(RegionKind::Data, 1), nodes.to_vec());
    let mut plans: Vec<ConfigPlan> = (0..3)
        .map(|i| {
            ConfigPlan::RegisterDataNode(RegisterDataNode {
                known_id: None,
                address: format!("127.0.0.1:{}", 6700 + i),
            })
        })
        .collect();
    plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
        schema: DatabaseSchema {
            name: db("metrics"),
            schema_replication_factor: rf(1),
            data_replication_factor: rf(3),
        },
        created_by: None,
    }));
    plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
        kind: RegionKind::Data,
        count: 2,
        for_procedure: None,
    }));
    plans.push(ConfigPlan::CreateRegionGroups(CreateRegionGroups {
        database: db("metrics"),
        groups: vec![RegionReplicaSet::new(
            group.region,
            vec![DataNodeId(0), DataNodeId(1)],
        )],
    }));
    plans.push(ConfigPlan::OfferRegionMaintainTasks(
        OfferRegionMaintainTasks {
            tasks: vec![
                NewRegionMaintainTask {
                    kind: RegionMaintainKind::LegacyDelete,
                    database: db("metrics"),
                    region: group.clone(),
                    target: location(0),
                },
                NewRegionMaintainTask {
                    kind: RegionMaintainKind::Create,
                    database: db("metrics"),
                    region: group,
                    target: location(2),
                },
            ],
        },
    ));
    plans.push(ConfigPlan::PollRegionMaintainTask(
        PollRegionMaintainTask {},
    ));
    plans
}

/// Encodes `plans` as the log fixture stores them: per entry `len u32 BE | encoded plan`.
pub fn encode_log(plans: &[ConfigPlan]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for plan in plans {
        let bytes = plan.encode().map_err(|e| e.to_string())?;
        let len = u32::try_from(bytes.len()).map_err(|e| e.to_string())?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

/// Decodes a log fixture written by [`encode_log`].
pub fn decode_log(mut bytes: &[u8]) -> Result<Vec<ConfigPlan>, String> {
    let mut plans = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or("entry length cut short")?;
        let len = u32::from_be_bytes(*len) as usize;
        let entry = rest.get(..len).ok_or("entry cut short")?;
        plans.push(ConfigPlan::decode(entry).map_err(|e| e.to_string())?);
        bytes = &rest[len..];
    }
    Ok(plans)
}
