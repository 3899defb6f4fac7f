//! The deletion's decisions, step by step.

use crate::model::{DataNodeId, ProcedureId, RegionId, RegionKind, RegionReplicaSet};
use crate::plan::{
    ConfigPlan, CreateDatabase, RecordReplicaFootprints, ReserveRegionIds, SetDatabaseDeleting,
};
use crate::procedure::{ChildOutcome, ProcedureError, Step};
use crate::procedures::testing::{StepEnv, db, schema};
use crate::state::ProcedureStatus;

use super::{DeleteDatabaseProcedure, DeleteDatabaseState};

const ID: ProcedureId = ProcedureId(4);

#[test]
fn a_deletion_whose_database_is_gone_already_succeeds() {
    smol::block_on(async {
        let env = StepEnv::new(3).await;
        let mut deletion = DeleteDatabaseProcedure::new(db());
        let step = env.step(&mut deletion, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Done(_))), "{step:?}");
    });
}

#[test]
fn every_group_that_may_hold_replicas_gets_a_removal_even_unpublished_ones() {
    smol::block_on(async {
        let env = StepEnv::new(3).await;
        let published = env.published(1, &[0, 1, 2]).await;
        // A group a failed creation never published, with replicas maybe on dn-1.
        env.commit(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: 1,
            for_procedure: None,
        }))
        .await
        .expect("reserved");
        let unpublished = RegionId::new(RegionKind::Data, 1);
        env.commit(ConfigPlan::RecordReplicaFootprints(
            RecordReplicaFootprints {
                database: db(),
                groups: vec![RegionReplicaSet::new(unpublished, vec![DataNodeId(1)])],
            },
        ))
        .await
        .expect("footprint");
        let mut deletion = DeleteDatabaseProcedure::new(db());
        for _ in 0..2 {
            let step = env.step(&mut deletion, ID, Vec::new()).await;
            assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        }
        assert_eq!(deletion.data.state, DeleteDatabaseState::RemoveRegionGroups);
        let Ok(Step::SpawnChildren(children)) = env.step(&mut deletion, ID, Vec::new()).await
        else {
            panic!("removals spawned");
        };
        assert_eq!(children.len(), 2);
        assert_eq!(deletion.data.groups, vec![published[0], unpublished]);
    });
}

#[test]
fn a_failed_removal_fails_the_deletion_and_the_database_stays_marked() {
    smol::block_on(async {
        let env = StepEnv::new(3).await;
        env.published(1, &[0, 1, 2]).await;
        env.commit(ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: db(),
            deleting: true,
        }))
        .await
        .expect("marked");
        let mut deletion = DeleteDatabaseProcedure::new(db());
        deletion.data.state = DeleteDatabaseState::DropDatabase;
        let failed = ChildOutcome {
            id: ProcedureId(9),
            type_code: super::super::REMOVE_REGION_GROUP,
            status: ProcedureStatus::Failed,
            output: None,
            error: Some("dn-2 answered a task poll with: refused".into()),
        };
        let step = env.step(&mut deletion, ID, vec![failed]).await;
        assert!(
            matches!(&step, Err(ProcedureError::Abort(r)) if r.contains("refused")),
            "{step:?}"
        );
        assert!(
            env.state().databases[&db()].deleting,
            "visibly still being deleted"
        );
    });
}

#[test]
fn replicas_that_remain_send_the_deletion_back_to_removing() {
    smol::block_on(async {
        let env = StepEnv::new(3).await;
        env.commit(ConfigPlan::CreateDatabase(CreateDatabase {
            schema: schema(),
            created_by: None,
        }))
        .await
        .expect("created");
        env.commit(ConfigPlan::ReserveRegionIds(ReserveRegionIds {
            kind: RegionKind::Data,
            count: 1,
            for_procedure: None,
        }))
        .await
        .expect("reserved");
        env.commit(ConfigPlan::RecordReplicaFootprints(
            RecordReplicaFootprints {
                database: db(),
                groups: vec![RegionReplicaSet::new(
                    RegionId::new(RegionKind::Data, 0),
                    vec![DataNodeId(0)],
                )],
            },
        ))
        .await
        .expect("footprint");
        env.commit(ConfigPlan::SetDatabaseDeleting(SetDatabaseDeleting {
            name: db(),
            deleting: true,
        }))
        .await
        .expect("marked");
        let mut deletion = DeleteDatabaseProcedure::new(db());
        deletion.data.state = DeleteDatabaseState::DropDatabase;
        let step = env.step(&mut deletion, ID, Vec::new()).await;
        assert!(matches!(step, Ok(Step::Continue)), "{step:?}");
        assert_eq!(deletion.data.state, DeleteDatabaseState::RemoveRegionGroups);
        assert!(env.state().databases.contains_key(&db()), "not dropped");
    });
}
