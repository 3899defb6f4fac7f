//! The Cap'n Proto transport over real loopback TCP: values round-trip intact, errors keep
//! their kind, logins are checked, bad input cannot take a node down, and connection loss
//! turns into typed errors and reconnection.

mod fake;
mod faults;
mod invalid;
mod security;

use std::sync::Arc;
use std::time::Duration;

use shoal_core::api::{
    ApiError, ConfigNodeApi, CreateDatabaseRequest, CreateRegionRequest, DataNodeApi,
    DataNodeHeartbeat, HeartbeatReport, MaintainTask, MaintainTaskKind, OrphanInfo,
    RegionGroupInfo, RegionReport, SubmitOutcome, TaskStatus,
};
use shoal_core::model::{
    DataNodeId, DatabaseName, Epoch, ProcedureId, RegionId, RegionKind, RegionReplicaSet,
    ReplicationFactor, TaskId,
};
use shoal_core::state::DataNodeStatus;
use shoal_transport_capnp::{
    CapnpConfigNodeClient, CapnpDataNodeClient, ClientOptions, Role, RpcRuntime, ServedApis,
    ServerHandle, ServerOptions, WireLimits,
};

use fake::{FakeConfigNode, FakeDataNode};

const SECRET: &str = "correct horse battery staple";

/// A served node: its RPC thread, server, and the in-memory APIs behind it.
struct Node {
    runtime: RpcRuntime,
    server: ServerHandle,
    data_node: Arc<FakeDataNode>,
    config_node: Arc<FakeConfigNode>,
}

fn start_node(limits: WireLimits) -> Node {
    start_node_at("127.0.0.1:0", limits)
}

fn start_node_at(address: &str, limits: WireLimits) -> Node {
    let runtime = RpcRuntime::start("test-server").expect("rpc thread");
    let data_node = Arc::new(FakeDataNode::default());
    let config_node = Arc::new(FakeConfigNode::default());
    let apis = ServedApis {
        data_node: Some(data_node.clone()),
        config_node: Some(config_node.clone()),
        ..ServedApis::default()
    };
    let options = ServerOptions {
        limits,
        ..ServerOptions::default()
    };
    let server = runtime
        .serve(address, SECRET, apis, options)
        .expect("serve");
    Node {
        runtime,
        server,
        data_node,
        config_node,
    }
}

/// Options of a client logging in as a ConfigNode (what calls DataNodes).
fn options(secret: &str) -> ClientOptions {
    role_options(Role::ConfigNode, secret)
}

/// Options of a client logging in as `role`.
fn role_options(role: Role, secret: &str) -> ClientOptions {
    ClientOptions {
        // Generous: the machine may be loaded; the timeout tests set their own.
        call_timeout: Duration::from_secs(20),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ClientOptions::new(role, secret)
    }
}

/// Options of an admin client (the ConfigNode's admin API).
fn admin(secret: &str) -> ClientOptions {
    role_options(Role::Admin, secret)
}

fn data_client(node: &Node, opts: ClientOptions) -> CapnpDataNodeClient {
    let client_rt = RpcRuntime::start("test-client").expect("rpc thread");
    CapnpDataNodeClient::new(&client_rt, &node.server.local_addr().to_string(), opts)
        .expect("client")
}

fn config_client(node: &Node, opts: ClientOptions) -> CapnpConfigNodeClient {
    let client_rt = RpcRuntime::start("test-client").expect("rpc thread");
    CapnpConfigNodeClient::new(&client_rt, &node.server.local_addr().to_string(), opts)
        .expect("client")
}

fn data_region(id: u32) -> RegionId {
    RegionId::new(RegionKind::Data, id)
}

fn db(name: &str) -> DatabaseName {
    DatabaseName::new(name).expect("valid name")
}

fn rf(n: u8) -> ReplicationFactor {
    ReplicationFactor::new(n).expect("valid rf")
}

#[test]
fn every_data_node_call_round_trips_with_values_intact() {
    let node = start_node(WireLimits::default());
    let client = data_client(&node, options(SECRET));
    smol::block_on(async {
        let request = CreateRegionRequest {
            region: data_region(7),
            database: db("root_sg1"),
            peers: vec![DataNodeId(1), DataNodeId(2), DataNodeId(u32::MAX)],
            generation: 0,
        };
        client
            .create_region(Epoch(3), request.clone())
            .await
            .expect("create");
        assert_eq!(
            node.data_node.region(data_region(7)).map(|(r, _)| r),
            Some(request.clone())
        );

        let bytes: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        assert_eq!(
            client.write_region(data_region(7), bytes.clone()).await,
            Ok(10_000)
        );
        assert_eq!(
            client.write_region(data_region(7), vec![1, 2]).await,
            Ok(10_002)
        );
        let stored = node.data_node.region(data_region(7)).expect("region").1;
        assert_eq!(&stored[..10_000], &bytes[..]);

        let task = MaintainTask {
            task_id: TaskId(u64::MAX - 1),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: RegionId::new(RegionKind::Schema, 9),
                generation: 0,
            },
        };
        assert_eq!(
            client.submit_task(Epoch(3), task.clone()).await,
            Ok(SubmitOutcome::Accepted)
        );
        let other = MaintainTask {
            task_id: task.task_id,
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: data_region(8),
                generation: 0,
            },
        };
        assert!(matches!(
            client.submit_task(Epoch(3), other).await,
            Ok(SubmitOutcome::Rejected(reason)) if reason.contains("another task")
        ));

        assert_eq!(
            client.task_result(task.task_id, None).await,
            Ok(TaskStatus::Processing)
        );
        let report = client.heartbeat(Epoch(3)).await.expect("heartbeat");
        assert_eq!(
            report,
            HeartbeatReport {
                regions: vec![RegionReport {
                    region: data_region(7),
                    bytes: 10_002
                }],
                running_tasks: vec![task.task_id],
            }
        );

        let reason = "disk on fire: ünïcödé kept".to_string();
        node.data_node
            .set_status(task.task_id, TaskStatus::Fail(reason.clone()));
        assert_eq!(
            client.task_result(task.task_id, None).await,
            Ok(TaskStatus::Fail(reason))
        );
        node.data_node.set_status(task.task_id, TaskStatus::Success);
        assert_eq!(
            client.task_result(task.task_id, None).await,
            Ok(TaskStatus::Success)
        );
        client.ack_task(Epoch(3), task.task_id).await.expect("ack");
        assert_eq!(
            client.task_result(task.task_id, None).await,
            Ok(TaskStatus::NotExist)
        );

        client
            .delete_region(Epoch(3), data_region(7))
            .await
            .expect("delete");
        assert_eq!(node.data_node.region(data_region(7)), None);
        // Deleting what is gone is success.
        client
            .delete_region(Epoch(3), data_region(7))
            .await
            .expect("delete again");
    });
    assert_eq!(
        node.data_node.calls(),
        [
            "create_region",
            "write_region",
            "write_region",
            "submit_task",
            "submit_task",
            "task_result",
            "heartbeat",
            "task_result",
            "task_result",
            "ack_task",
            "task_result",
            "delete_region",
            "delete_region"
        ]
    );
}

#[test]
fn every_config_node_call_round_trips_with_values_intact() {
    let node = start_node(WireLimits::default());
    let client = config_client(&node, admin(SECRET));
    let data_node = config_client(&node, role_options(Role::DataNode, SECRET));
    smol::block_on(async {
        let request = CreateDatabaseRequest {
            name: db("metrics"),
            schema_replication_factor: rf(1),
            data_replication_factor: rf(3),
            data_region_groups: 16,
            schema_region_groups: 2,
        };
        let created = client
            .create_database(request.clone(), None)
            .await
            .expect("create");
        assert_eq!(
            created,
            ProcedureId(1_001),
            "the creating procedure's id crosses the wire"
        );
        assert!(matches!(
            client.create_database(request, None).await,
            Err(ApiError::Refused(m)) if m.contains("exists")
        ));
        let dbs = client.list_databases().await.expect("list");
        assert_eq!(dbs.len(), 1);
        assert_eq!(dbs[0].schema.name, db("metrics"));
        assert_eq!(dbs[0].schema.schema_replication_factor, rf(1));
        assert_eq!(dbs[0].schema.data_replication_factor, rf(3));
        assert_eq!(
            (dbs[0].data_region_groups, dbs[0].schema_region_groups),
            (16, 2)
        );
        assert!(!dbs[0].deleting);

        let first = data_node
            .register_data_node(None, "10.0.0.1:6667".into())
            .await
            .expect("register");
        let again = data_node
            .register_data_node(Some(DataNodeId(42)), "10.0.0.2:6667".into())
            .await
            .expect("re-register");
        assert_eq!((first, again), (DataNodeId(1), DataNodeId(42)));
        let nodes = client.list_data_nodes().await.expect("nodes");
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].location.id, DataNodeId(42));
        assert_eq!(nodes[1].location.address, "10.0.0.2:6667");
        assert_eq!(nodes[1].status, DataNodeStatus::Running);

        node.config_node.set_epoch(Epoch(9));
        let heartbeat = DataNodeHeartbeat {
            id: DataNodeId(42),
            report: HeartbeatReport {
                regions: vec![RegionReport {
                    region: data_region(3),
                    bytes: 1 << 40,
                }],
                running_tasks: vec![TaskId(5), TaskId(6)],
            },
        };
        assert_eq!(
            data_node.data_node_heartbeat(heartbeat.clone()).await,
            Ok(Epoch(9))
        );
        assert_eq!(node.config_node.heartbeats(), vec![heartbeat]);

        let group = RegionGroupInfo {
            database: db("metrics"),
            replica_set: RegionReplicaSet::new(data_region(3), vec![DataNodeId(1), DataNodeId(42)]),
        };
        node.config_node.add_group(group.clone());
        node.config_node.add_group(RegionGroupInfo {
            database: db("other"),
            replica_set: RegionReplicaSet::new(data_region(4), vec![DataNodeId(1)]),
        });
        assert_eq!(
            client.list_region_groups(Some(db("metrics"))).await,
            Ok(vec![group])
        );
        assert_eq!(
            client.list_region_groups(None).await.map(|g| g.len()),
            Ok(2)
        );

        let id = client
            .delete_database(db("metrics"), None)
            .await
            .expect("delete");
        let shown = client.get_procedure(id).await.expect("get").expect("found");
        assert_eq!(shown.id, id);
        assert_eq!(shown.type_name, "DeleteDatabaseProcedure");
        assert_eq!(shown.state_name, "RemoveRegionGroups");
        assert_eq!(
            shown.status,
            shoal_core::procedure::ProcedureView::Suspended,
            "the typed status crosses the wire"
        );
        assert!(!shown.is_finished());
        assert_eq!((shown.type_code, shown.state_code), (302, 2));
        assert_eq!(
            (shown.submitted_unix_ms, shown.updated_unix_ms),
            (1_795_000_000_000, 1_795_000_001_000)
        );
        assert_eq!(shown.database, Some(db("metrics")));
        assert_eq!(shown.output, None, "outputs stay on the ConfigNode");
        assert_eq!(shown.parent, None);
        assert_eq!(shown.children, vec![ProcedureId(100), ProcedureId(101)]);
        assert_eq!((shown.submitted_at_ms, shown.updated_at_ms), (1_000, 2_000));
        assert_eq!(shown.attempts, 3);
        assert_eq!(shown.last_error.as_deref(), Some("dn-2 unreachable"));
        assert_eq!(shown.waiting_for.as_deref(), Some("2 region groups"));
        assert_eq!(client.list_procedures().await, Ok(vec![shown]));
        assert_eq!(client.get_procedure(ProcedureId(999)).await, Ok(None));
        let dbs = client.list_databases().await.expect("list");
        assert!(dbs[0].deleting);
    });
}

#[test]
fn request_keys_of_create_and_delete_cross_the_wire_intact() {
    let node = start_node(WireLimits::default());
    let client = config_client(&node, admin(SECRET));
    let key = "9f0c2a7e5b1d4c3a8e6f0b2d4a6c8e0f".to_string();
    smol::block_on(async {
        let request = CreateDatabaseRequest {
            name: db("keyed"),
            schema_replication_factor: rf(1),
            data_replication_factor: rf(1),
            data_region_groups: 1,
            schema_region_groups: 1,
        };
        client
            .create_database(request, Some(key.clone()))
            .await
            .expect("create");
        client
            .delete_database(db("keyed"), Some("delete-key".into()))
            .await
            .expect("delete");
        client
            .delete_database(db("keyed"), None)
            .await
            .expect("delete without a key");
    });
    assert_eq!(
        node.config_node.request_keys(),
        vec![
            ("create_database", Some(key)),
            ("delete_database", Some("delete-key".into())),
            ("delete_database", None),
        ]
    );
}

#[test]
fn migrations_removals_and_orphans_cross_the_wire_intact() {
    let node = start_node(WireLimits::default());
    let orphan = OrphanInfo {
        data_node: DataNodeId(2),
        region: data_region(41),
        bytes: 4_096,
        orphan_for_ms: 601_000,
        removal: Some(ProcedureId(17)),
    };
    node.config_node.set_orphans(vec![orphan.clone()]);
    let client = config_client(&node, admin(SECRET));
    smol::block_on(async {
        let placed = client
            .migrate_region(data_region(7), DataNodeId(1), None, Some("m-key".into()))
            .await
            .expect("migrate, placement chooses");
        let chosen = client
            .migrate_region(data_region(8), DataNodeId(0), Some(DataNodeId(3)), None)
            .await
            .expect("migrate to a chosen node");
        assert_eq!((placed, chosen), (ProcedureId(1_001), ProcedureId(1_002)));
        assert_eq!(
            client
                .migrate_region(data_region(9), DataNodeId(99), None, None)
                .await,
            Err(ApiError::Refused("dn-99 is not registered".into())),
            "a refusal keeps its kind and text"
        );
        let removal = client
            .remove_data_node(DataNodeId(2), true, Some("r-key".into()))
            .await
            .expect("remove");
        assert_eq!(removal, ProcedureId(2_001));
        assert_eq!(client.list_orphans().await.expect("orphans"), vec![orphan]);
        let status = client.cluster_status().await.expect("cluster status");
        assert_eq!(
            (status.epoch, status.queued_creates, status.legacy_deletions),
            (shoal_core::model::Epoch(7), 0, 2),
            "clusterStatus crosses the wire field by field"
        );
    });
    assert_eq!(
        node.config_node.moves(),
        (
            vec![
                (data_region(7), DataNodeId(1), None),
                (data_region(8), DataNodeId(0), Some(DataNodeId(3))),
            ],
            vec![(DataNodeId(2), true)],
        )
    );
    let keys = node.config_node.request_keys();
    assert!(keys.contains(&("migrate_region", Some("m-key".into()))));
    assert!(keys.contains(&("remove_data_node", Some("r-key".into()))));
}

#[test]
fn api_errors_keep_their_kind_across_the_wire() {
    let node = start_node(WireLimits::default());
    let client = data_client(&node, options(SECRET));
    smol::block_on(async {
        client.heartbeat(Epoch(10)).await.expect("epoch 10 seen");
        assert_eq!(
            client.heartbeat(Epoch(4)).await,
            Err(ApiError::StaleLeader {
                request: Epoch(4),
                seen: Epoch(10)
            })
        );
        let injected = [
            ApiError::Refused("no".into()),
            ApiError::Malformed("bad bytes".into()),
            ApiError::Remote {
                message: "disk full".into(),
                retryable: false,
            },
            ApiError::Remote {
                message: "busy".into(),
                retryable: true,
            },
        ];
        for error in injected {
            node.data_node.fail_next(error.clone());
            assert_eq!(client.heartbeat(Epoch(10)).await, Err(error));
        }
        // The server's own timeout is not the caller's: it arrives as a retryable failure.
        node.data_node
            .fail_next(ApiError::Timeout(Duration::from_secs(1)));
        let error = client
            .task_result(TaskId(1), None)
            .await
            .expect_err("injected");
        assert!(
            matches!(&error, ApiError::Remote { retryable: true, message } if message.contains("timed out")),
            "{error:?}"
        );
        node.data_node
            .fail_next(ApiError::Unreachable("dn-3".into()));
        let error = client
            .ack_task(Epoch(10), TaskId(1))
            .await
            .expect_err("injected");
        assert!(error.is_retryable(), "{error:?}");
        assert!(!matches!(error, ApiError::Unreachable(_)), "{error:?}");
    });
}

#[test]
fn wrong_secret_is_refused_and_reaches_no_api() {
    let node = start_node(WireLimits::default());
    let client = data_client(&node, options("guess"));
    let config = config_client(&node, admin(""));
    smol::block_on(async {
        let error = client.heartbeat(Epoch(1)).await.expect_err("refused");
        assert!(
            matches!(&error, ApiError::Refused(m) if m.contains("secret")),
            "{error:?}"
        );
        assert!(!error.is_retryable());
        assert!(matches!(
            config.list_databases().await,
            Err(ApiError::Refused(_))
        ));
        // A correct client on the same server still works.
        let good = data_client(&node, options(SECRET));
        good.heartbeat(Epoch(1)).await.expect("correct secret");
    });
    assert_eq!(node.data_node.calls(), ["heartbeat"]);
}

#[test]
fn a_node_without_a_config_node_api_refuses_its_calls() {
    let runtime = RpcRuntime::start("dn-only").expect("rpc thread");
    let data_node = Arc::new(FakeDataNode::default());
    let server = runtime
        .serve(
            "127.0.0.1:0",
            SECRET,
            ServedApis::data_node(data_node),
            ServerOptions::default(),
        )
        .expect("serve");
    let client =
        CapnpConfigNodeClient::new(&runtime, &server.local_addr().to_string(), admin(SECRET))
            .expect("client");
    smol::block_on(async {
        assert!(matches!(
            client.list_data_nodes().await,
            Err(ApiError::Refused(m)) if m.contains("ConfigNode")
        ));
    });
}

#[test]
fn calls_in_flight_together_each_get_their_own_reply() {
    let node = start_node(WireLimits::default());
    let client = data_client(&node, options(SECRET));
    smol::block_on(async {
        for i in 0..64u64 {
            let task = MaintainTask {
                task_id: TaskId(i),
                kind: MaintainTaskKind::DeleteRegionPeer {
                    region: data_region(i as u32),
                    generation: 0,
                },
            };
            client.submit_task(Epoch(1), task).await.expect("submit");
            if i % 2 == 0 {
                node.data_node.set_status(TaskId(i), TaskStatus::Success);
            }
        }
        let calls: Vec<_> = (0..64u64)
            .map(|i| {
                let client = client.clone();
                smol::spawn(async move { (i, client.task_result(TaskId(i), None).await) })
            })
            .collect();
        for call in calls {
            let (i, status) = call.await;
            let expected = if i % 2 == 0 {
                TaskStatus::Success
            } else {
                TaskStatus::Processing
            };
            assert_eq!(status, Ok(expected), "task {i}");
        }
    });
}

/// The served-call events core's metrics seam received in this process.
static SERVED: std::sync::Mutex<Vec<(&'static str, shoal_core::metrics::Outcome)>> =
    std::sync::Mutex::new(Vec::new());

struct ServedCalls;

impl shoal_core::metrics::MetricsSink for ServedCalls {
    fn record(&self, event: shoal_core::metrics::MetricEvent) {
        if let shoal_core::metrics::MetricEvent::Rpc { method, outcome } = event {
            SERVED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((method, outcome));
        }
    }
}

#[test]
fn every_served_call_is_counted_by_method_and_outcome_through_cores_seam() {
    use shoal_core::metrics::Outcome;
    // Only the first sink a process installs takes effect (no other test installs one).
    shoal_core::metrics::install(Box::new(ServedCalls));
    let node = start_node(WireLimits::default());
    let client = config_client(&node, admin(SECRET));
    smol::block_on(async {
        client.list_databases().await.expect("list");
        let refused = client
            .migrate_region(data_region(9), DataNodeId(99), None, None)
            .await;
        assert!(refused.is_err());
    });
    let seen = SERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(
        seen.contains(&("ConfigNode.listDatabases", Outcome::Success)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("ConfigNode.migrateRegion", Outcome::Failure)),
        "a refusal counts as a failure: {seen:?}"
    );
}
