//! The states stored in `tests/fixtures/`. Deterministic: the same code writes the same bytes.

use std::path::PathBuf;

use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, RegionId, RegionKind,
    RegionReplicaSet, ReplicationFactor, TaskId,
};
use shoal_core::plan::{
    ConfigPlan, CreateDatabase, CreateRegionGroups, NewRegionMaintainTask,
    OfferRegionMaintainTasks, RegisterDataNode, ReserveRegionIds, SubmitProcedure,
};
use shoal_core::snapshot::{ClusterStateV1, Snapshot, SnapshotV1};
use shoal_core::state::{
    ClusterState, LockKey, LockMode, LockResource, NewProcedure, RegionMaintainKind,
    RegionMaintainTask,
};

/// Directory holding the committed fixture files.
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Name of the v1 snapshot fixture.
pub const SNAPSHOT_V1: &str = "snapshot-v1.bin";
/// Name of the v2 snapshot fixture.
pub const SNAPSHOT_V2: &str = "snapshot-v2.bin";

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
        },
        request_key: Some("fixture-request".into()),
    }));
    apply_all(&plans)
}

fn location(id: u32) -> DataNodeLocation {
    DataNodeLocation::new(DataNodeId(id), format!("127.0.0.1:{}", 6700 + id))
        .expect("fixture address is valid")
}

/// The v2 fixture: [`base_state`] at log index 12, term 3.
pub fn snapshot_v2() -> Snapshot {
    Snapshot {
        last_index: 12,
        last_term: 3,
        state: base_state(),
    }
}

/// The v1 fixture: [`base_state`] in the v1 shape, whose queue also holds two legacy delete
/// tasks (ids 100 and 101) for region data-9 of a database that was being dropped.
pub fn snapshot_v1() -> SnapshotV1 {
    let state = base_state();
    let mut queue = state.region_maintain_queue.clone();
    let doomed = RegionReplicaSet::new(
        RegionId::new(RegionKind::Data, 9),
        vec![DataNodeId(0), DataNodeId(1)],
    );
    for (task, node) in [(100, 0), (101, 1)] {
        queue.insert(
            TaskId(task),
            RegionMaintainTask {
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
