//! The service over an in-process ConfigNode (in-memory log, one in-process DataNode called
//! directly): request keys make retried submits idempotent.

use std::sync::Arc;

use shoal_core::api::{ApiError, ConfigNodeApi, CreateDatabaseRequest, DataNodeApi};
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{DataNodeLocation, DatabaseName, ReplicationFactor};
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_core::storage::{MemRegionStore, MemTaskJournal};
use shoal_runtime_smol::smol_runtime;

use super::ConfigNodeService;

/// Every DataNode address reaches the one in-process DataNode.
struct OneDataNode(DataNode);

impl DataNodeClients for OneDataNode {
    fn client(&self, _location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        Arc::new(self.0.clone())
    }
}

/// A leading ConfigNode with one registered DataNode.
async fn service() -> (ConfigNodeService, Arc<ConfigNode>) {
    let runtime = smol_runtime();
    let consensus = Arc::new(LocalConsensus::new(
        Arc::new(MemLogStore::new()),
        Arc::new(MemSnapshotStore::new()),
    ));
    let data_node = DataNode::open(
        runtime.clone(),
        Arc::new(MemRegionStore::new(runtime.clock.clone())),
        Arc::new(MemTaskJournal::new()),
        DataNodeConfig::default(),
    )
    .await
    .expect("DataNode opens");
    let node = ConfigNode::new(
        consensus.clone() as Arc<dyn Consensus>,
        Arc::new(OneDataNode(data_node)),
        runtime,
        ConfigNodeConfig::default(),
    )
    .expect("ConfigNode builds");
    consensus.campaign().await.expect("campaign");
    node.start();
    node.executor().wait_running().await;
    node.register_data_node(None, "127.0.0.1:1".into())
        .await
        .expect("registered");
    (ConfigNodeService::new(node.clone()), node)
}

fn request(name: &str) -> CreateDatabaseRequest {
    let rf = ReplicationFactor::new(1).expect("rf");
    CreateDatabaseRequest {
        name: DatabaseName::new(name).expect("name"),
        schema_replication_factor: rf,
        data_replication_factor: rf,
        data_region_groups: 1,
        schema_region_groups: 0,
    }
}

#[test]
fn create_retried_with_the_same_request_key_returns_the_first_procedure_not_exists() {
    smol::block_on(async {
        let (service, node) = service().await;
        let key = Some("create-key-1".to_string());
        let first = service
            .create_database(request("metrics"), key.clone())
            .await
            .expect("first create");
        // The first attempt finished (its reply was "lost"); the retry comes after.
        let done = node.wait_procedure(first).await.expect("create finishes");
        assert_eq!(done.status, shoal_core::procedure::ProcedureView::Succeeded);
        let retried = service
            .create_database(request("metrics"), key)
            .await
            .expect("a retry with the same key is not refused");
        assert_eq!(retried, first);
        assert!(
            matches!(
                service.create_database(request("metrics"), None).await,
                Err(ApiError::Refused(m)) if m.contains("exists")
            ),
            "without a key the database is reported as existing"
        );
        let created = service.list_databases().await.expect("list");
        assert_eq!(created.len(), 1, "the retry created nothing new");
        node.shutdown().await;
    });
}

#[test]
fn delete_retried_with_the_same_request_key_returns_the_first_procedure_not_not_found() {
    smol::block_on(async {
        let (service, node) = service().await;
        let created = service
            .create_database(request("doomed"), None)
            .await
            .expect("create");
        node.wait_procedure(created).await.expect("create finishes");
        let name = DatabaseName::new("doomed").expect("name");
        let key = Some("delete-key-1".to_string());
        let first = service
            .delete_database(name.clone(), key.clone())
            .await
            .expect("first delete");
        let done = node.wait_procedure(first).await.expect("delete finishes");
        assert_eq!(done.status, shoal_core::procedure::ProcedureView::Succeeded);
        assert_eq!(
            service.delete_database(name.clone(), key).await,
            Ok(first),
            "a retry with the same key finds the first deletion"
        );
        assert!(
            matches!(
                service.delete_database(name, None).await,
                Err(ApiError::Refused(m)) if m.contains("does not exist")
            ),
            "without a key the gone database is reported missing"
        );
        node.shutdown().await;
    });
}

#[test]
fn every_invalid_request_reaches_the_wire_as_a_refusal() {
    use shoal_core::confignode::ConfigNodeError;
    use shoal_core::model::ProcedureId;
    use shoal_core::state::Rejection;

    let name = DatabaseName::new("metrics").expect("name");
    for error in [
        ConfigNodeError::Invalid("5000 data region groups requested, at most 4096".into()),
        ConfigNodeError::Rejected(Rejection::DatabaseExists(name.clone())),
        ConfigNodeError::Rejected(Rejection::DatabaseNotFound(name)),
        ConfigNodeError::Rejected(Rejection::Invalid("bad address".into())),
        ConfigNodeError::UnknownProcedure(ProcedureId(7)),
    ] {
        let text = error.to_string();
        assert_eq!(super::api_error(error), ApiError::Refused(text));
    }
    smol::block_on(async {
        let (service, node) = service().await;
        let too_many = CreateDatabaseRequest {
            data_region_groups: 5000,
            ..request("big")
        };
        let refused = service.create_database(too_many, None).await;
        assert!(
            matches!(&refused, Err(ApiError::Refused(m)) if m.starts_with("invalid request: ")),
            "{refused:?}"
        );
        node.shutdown().await;
    });
}
