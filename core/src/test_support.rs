//! Proptest strategies shared by core's unit tests.

use proptest::prelude::*;

use crate::model::*;
use crate::plan::*;
use crate::state::*;

pub fn db_name() -> impl Strategy<Value = DatabaseName> {
    (0u8..4).prop_map(|i| DatabaseName::new(format!("db{i}")).unwrap())
}

pub fn data_node_id() -> impl Strategy<Value = DataNodeId> {
    (0u32..5).prop_map(DataNodeId)
}

pub fn region_kind() -> impl Strategy<Value = RegionKind> {
    prop_oneof![Just(RegionKind::Schema), Just(RegionKind::Data)]
}

pub fn region_id() -> impl Strategy<Value = RegionId> {
    (region_kind(), 0u32..12).prop_map(|(kind, id)| RegionId::new(kind, id))
}

pub fn replica_set() -> impl Strategy<Value = RegionReplicaSet> {
    (region_id(), prop::collection::vec(data_node_id(), 1..4))
        .prop_map(|(region, nodes)| RegionReplicaSet::new(region, nodes))
}

pub fn location() -> impl Strategy<Value = DataNodeLocation> {
    (data_node_id(), 6000u16..6005)
        .prop_map(|(id, port)| DataNodeLocation::new(id, format!("127.0.0.1:{port}")).unwrap())
}

pub fn schema() -> impl Strategy<Value = DatabaseSchema> {
    (db_name(), 1u8..=3, 1u8..=3).prop_map(|(name, s, d)| DatabaseSchema {
        name,
        schema_replication_factor: ReplicationFactor::new(s).unwrap(),
        data_replication_factor: ReplicationFactor::new(d).unwrap(),
    })
}

pub fn lock_key() -> impl Strategy<Value = LockKey> {
    let resource = prop_oneof![
        db_name().prop_map(LockResource::Database),
        region_id().prop_map(LockResource::RegionGroup),
        data_node_id().prop_map(LockResource::DataNode),
        "[a-z]{1,6}".prop_map(LockResource::Named),
    ];
    let mode = prop_oneof![Just(LockMode::Shared), Just(LockMode::Exclusive)];
    (resource, mode).prop_map(|(resource, mode)| LockKey { resource, mode })
}

pub fn new_procedure() -> impl Strategy<Value = NewProcedure> {
    (
        1u32..5,
        0u32..6,
        prop::collection::vec(any::<u8>(), 0..24),
        prop::collection::vec(lock_key(), 0..3),
        0u64..1_000_000,
    )
        .prop_map(
            |(type_code, state_code, data, lock_keys, at)| NewProcedure {
                type_code,
                type_name: format!("Type{type_code}"),
                state_code,
                state_name: format!("State{state_code}"),
                data,
                lock_keys,
                submitted_at_ms: at,
                submitted_unix_ms: 0,
            },
        )
}

pub fn procedure_status() -> impl Strategy<Value = ProcedureStatus> {
    prop::sample::select(ProcedureStatus::ALL)
}

pub fn procedure_record() -> impl Strategy<Value = ProcedureRecord> {
    (
        1u64..20,
        new_procedure(),
        procedure_status(),
        prop::option::of(0u32..50),
        prop::option::of("[a-z ]{0,16}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
    )
        .prop_map(|(id, new, status, attempts, error, output)| {
            let mut record = ProcedureRecord::from_new(ProcedureId(id), new, None);
            record.status = status;
            record.attempts = attempts.unwrap_or(0);
            record.last_error = error.clone();
            record.waiting_for = error;
            record.output = output.map(serde_bytes::ByteBuf::from);
            record.wake_at_ms = attempts.map(u64::from);
            record
        })
}

pub fn maintain_kind() -> impl Strategy<Value = RegionMaintainKind> {
    prop::sample::select(RegionMaintainKind::ALL)
}

pub fn new_task() -> impl Strategy<Value = NewRegionMaintainTask> {
    (maintain_kind(), db_name(), replica_set(), location()).prop_map(
        |(kind, database, region, target)| NewRegionMaintainTask {
            kind,
            database,
            region,
            target,
        },
    )
}

/// A strategy for one plan of `code`. The match is exhaustive, so adding a plan variant
/// without a generator fails to compile.
pub fn plan_for(code: PlanCode) -> BoxedStrategy<ConfigPlan> {
    match code {
        PlanCode::RegisterDataNode => (prop::option::of(data_node_id()), 6000u16..6005)
            .prop_map(|(known_id, port)| {
                ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id,
                    address: format!("127.0.0.1:{port}"),
                })
            })
            .boxed(),
        PlanCode::UpdateDataNodeStatus => {
            (data_node_id(), prop::sample::select(DataNodeStatus::ALL))
                .prop_map(|(id, status)| {
                    ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
                        only_from: None,
                        id,
                        status,
                    })
                })
                .boxed()
        }
        PlanCode::CreateDatabase => (schema(), prop::option::of(1u64..5))
            .prop_map(|(schema, by)| {
                ConfigPlan::CreateDatabase(CreateDatabase {
                    schema,
                    created_by: by.map(ProcedureId),
                })
            })
            .boxed(),
        PlanCode::SetDatabaseDeleting => (db_name(), any::<bool>())
            .prop_map(|(name, deleting)| {
                ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting { name, deleting })
            })
            .boxed(),
        PlanCode::DeleteDatabase => db_name()
            .prop_map(|name| ConfigPlan::DeleteDatabase(DeleteDatabase { name }))
            .boxed(),
        PlanCode::CreateRegionGroups => (db_name(), prop::collection::vec(replica_set(), 1..3))
            .prop_map(|(database, groups)| {
                ConfigPlan::CreateRegionGroups(CreateRegionGroups { database, groups })
            })
            .boxed(),
        PlanCode::RemoveRegionGroup => (db_name(), region_id())
            .prop_map(|(database, region)| {
                ConfigPlan::RemoveRegionGroup(RemoveRegionGroup { database, region })
            })
            .boxed(),
        PlanCode::RecordReplicaFootprints => {
            (db_name(), prop::collection::vec(replica_set(), 0..3))
                .prop_map(|(database, groups)| {
                    ConfigPlan::RecordReplicaFootprints(RecordReplicaFootprints {
                        database,
                        groups,
                    })
                })
                .boxed()
        }
        PlanCode::UnregisterDataNode => data_node_id()
            .prop_map(|id| ConfigPlan::UnregisterDataNode(UnregisterDataNode { id }))
            .boxed(),
        PlanCode::AbandonReplica => (
            region_id(),
            data_node_id(),
            1u64..5,
            prop::collection::vec(1u64..9, 0..3),
        )
            .prop_map(|(region, data_node, by, deletions)| {
                ConfigPlan::AbandonReplica(AbandonReplica {
                    region,
                    data_node,
                    by: ProcedureId(by),
                    deletions: deletions.into_iter().map(ProcedureId).collect(),
                })
            })
            .boxed(),
        PlanCode::ReplicaDeleted => (region_id(), data_node_id())
            .prop_map(|(region, data_node)| {
                ConfigPlan::ReplicaDeleted(ReplicaDeleted { region, data_node })
            })
            .boxed(),
        PlanCode::DropRegionGroup => (db_name(), region_id())
            .prop_map(|(database, region)| {
                ConfigPlan::DropRegionGroup(DropRegionGroup { database, region })
            })
            .boxed(),
        PlanCode::AddRegionLocation => (region_id(), data_node_id())
            .prop_map(|(region, data_node)| {
                ConfigPlan::AddRegionLocation(AddRegionLocation { region, data_node })
            })
            .boxed(),
        PlanCode::RetiredRegionLeaderHint => (region_id(), data_node_id())
            .prop_map(|(region, leader)| {
                ConfigPlan::RetiredRegionLeaderHint(RetiredRegionLeaderHint { region, leader })
            })
            .boxed(),
        PlanCode::RemoveRegionLocation => (region_id(), data_node_id())
            .prop_map(|(region, data_node)| {
                ConfigPlan::RemoveRegionLocation(RemoveRegionLocation { region, data_node })
            })
            .boxed(),
        PlanCode::ReserveRegionIds => (region_kind(), 0u32..6, prop::option::of(1u64..5))
            .prop_map(|(kind, count, owner)| {
                ConfigPlan::ReserveRegionIds(ReserveRegionIds {
                    kind,
                    count,
                    for_procedure: owner.map(ProcedureId),
                })
            })
            .boxed(),
        PlanCode::OfferRegionMaintainTasks => prop::collection::vec(new_task(), 0..3)
            .prop_map(|tasks| {
                ConfigPlan::OfferRegionMaintainTasks(OfferRegionMaintainTasks { tasks })
            })
            .boxed(),
        PlanCode::PollRegionMaintainTask => Just(ConfigPlan::PollRegionMaintainTask(
            PollRegionMaintainTask {},
        ))
        .boxed(),
        PlanCode::DropQueuedCreates => prop::collection::vec(0u64..8, 0..3)
            .prop_map(|ids| {
                ConfigPlan::DropQueuedCreates(DropQueuedCreates {
                    ids: ids.into_iter().map(MaintainQueueId).collect(),
                })
            })
            .boxed(),
        PlanCode::ResolveLegacyDeletion => (0u64..8)
            .prop_map(|id| {
                ConfigPlan::ResolveLegacyDeletion(ResolveLegacyDeletion {
                    id: MaintainQueueId(id),
                })
            })
            .boxed(),
        PlanCode::SubmitProcedure => (new_procedure(), prop::option::of("k[0-3]"))
            .prop_map(|(procedure, request_key)| {
                ConfigPlan::SubmitProcedure(SubmitProcedure {
                    procedure,
                    request_key,
                })
            })
            .boxed(),
        PlanCode::UpdateProcedure => (
            procedure_record(),
            prop::collection::vec(new_procedure(), 0..2),
        )
            .prop_map(|(record, spawn)| {
                ConfigPlan::UpdateProcedure(UpdateProcedure {
                    record,
                    spawn,
                    expect_version: None,
                })
            })
            .boxed(),
        PlanCode::TransitionWithEffect => (
            procedure_record(),
            prop::option::of(0u64..4),
            region_id(),
            data_node_id(),
        )
            .prop_map(|(record, expect_version, region, data_node)| {
                ConfigPlan::TransitionWithEffect(TransitionWithEffect {
                    update: UpdateProcedure {
                        record,
                        spawn: Vec::new(),
                        expect_version,
                    },
                    effect: Box::new(ConfigPlan::ReplicaDeleted(ReplicaDeleted {
                        region,
                        data_node,
                    })),
                })
            })
            .boxed(),
        PlanCode::DeleteProcedures => prop::collection::vec(1u64..20, 0..3)
            .prop_map(|ids| {
                ConfigPlan::DeleteProcedures(DeleteProcedures {
                    ids: ids.into_iter().map(ProcedureId).collect(),
                })
            })
            .boxed(),
    }
}

/// Any plan of any known code.
pub fn any_plan() -> impl Strategy<Value = ConfigPlan> {
    prop::sample::select(PlanCode::ALL).prop_flat_map(plan_for)
}

/// A plan sequence that starts by registering nodes and creating databases, so that later
/// random plans often apply rather than being rejected.
pub fn plan_history(max: usize) -> impl Strategy<Value = Vec<ConfigPlan>> {
    prop::collection::vec(any_plan(), 0..max).prop_map(|random| {
        let mut plans: Vec<ConfigPlan> = (0..4)
            .map(|port| {
                ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id: None,
                    address: format!("127.0.0.1:{}", 6000 + port),
                })
            })
            .collect();
        plans.push(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: 12,
            for_procedure: None,
        }));
        for i in 0..2 {
            plans.push(ConfigPlan::CreateDatabase(CreateDatabase {
                schema: DatabaseSchema {
                    name: DatabaseName::new(format!("db{i}")).unwrap(),
                    schema_replication_factor: ReplicationFactor::new(1).unwrap(),
                    data_replication_factor: ReplicationFactor::new(3).unwrap(),
                },
                created_by: None,
            }));
        }
        plans.extend(random);
        plans
    })
}
