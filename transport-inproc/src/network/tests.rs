use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shoal_core::api::MaintainTaskKind;
use shoal_core::model::RegionKind;
use shoal_runtime_smol::smol_runtime;

use super::*;

/// A tiny DataNode that counts the calls it ran; `write_region` takes `write_delay`.
#[derive(Default)]
struct CountingNode {
    ran: AtomicU64,
    written: AtomicU64,
    write_delay: Duration,
}

#[async_trait]
impl DataNodeApi for CountingNode {
    async fn create_region(&self, _: Epoch, _: CreateRegionRequest) -> Result<(), ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Err(ApiError::Refused("no disk".into()))
    }
    async fn delete_region(&self, _: Epoch, _: RegionId) -> Result<(), ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn write_region(&self, _: RegionId, bytes: Vec<u8>) -> Result<u64, ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        if !self.write_delay.is_zero() {
            smol::Timer::after(self.write_delay).await;
        }
        Ok(self.written.fetch_add(bytes.len() as u64, Ordering::SeqCst) + bytes.len() as u64)
    }
    async fn submit_task(&self, _: Epoch, task: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(SubmitOutcome::Rejected(format!("{}", task.task_id)))
    }
    async fn task_result(&self, id: TaskId, _: Option<Duration>) -> Result<TaskStatus, ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(if id.0 % 2 == 0 {
            TaskStatus::Success
        } else {
            TaskStatus::NotExist
        })
    }
    async fn ack_task(&self, _: Epoch, _: TaskId) -> Result<(), ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn heartbeat(&self, _: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.ran.fetch_add(1, Ordering::SeqCst);
        Ok(HeartbeatReport {
            regions: vec![],
            running_tasks: vec![TaskId(3)],
        })
    }
}

const REGION: RegionId = RegionId::new(RegionKind::Data, 1);

fn network(node: Arc<CountingNode>) -> InprocNetwork<dyn DataNodeApi> {
    let net = InprocNetwork::<dyn DataNodeApi>::new(smol_runtime(), Duration::from_millis(100));
    net.host("dn", node);
    net
}

#[test]
fn calls_round_trip_with_values_and_errors_intact() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        let client = net.client("cn", "dn");
        assert_eq!(client.write_region(REGION, vec![1, 2, 3]).await, Ok(3));
        assert_eq!(
            client.task_result(TaskId(2), None).await,
            Ok(TaskStatus::Success)
        );
        assert_eq!(
            client.task_result(TaskId(1), None).await,
            Ok(TaskStatus::NotExist)
        );
        let task = MaintainTask {
            task_id: TaskId(9),
            kind: MaintainTaskKind::DeleteRegionPeer {
                region: REGION,
                generation: 0,
            },
        };
        assert_eq!(
            client.submit_task(Epoch(1), task).await,
            Ok(SubmitOutcome::Rejected("task-9".into()))
        );
        let request = CreateRegionRequest {
            region: REGION,
            database: shoal_core::model::DatabaseName::new("db").unwrap(),
            peers: vec![],
            generation: 0,
        };
        assert_eq!(
            client.create_region(Epoch(1), request).await,
            Err(ApiError::Refused("no disk".into()))
        );
        assert_eq!(
            client.heartbeat(Epoch(1)).await.unwrap().running_tasks,
            [TaskId(3)]
        );
        assert_eq!(node.ran.load(Ordering::SeqCst), 6);
        assert_eq!(net.stats("cn", "dn").delivered, 6);
    });
}

#[test]
fn dropped_request_never_runs_and_times_out() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        net.update_link("cn", "dn", |l| l.drop_requests = 1);
        let client = net.client("cn", "dn");
        assert!(matches!(
            client.write_region(REGION, vec![1]).await,
            Err(ApiError::Timeout(_))
        ));
        assert_eq!(node.ran.load(Ordering::SeqCst), 0);
        // Only the next request was lost.
        assert_eq!(client.write_region(REGION, vec![1]).await, Ok(1));
        assert_eq!(net.stats("cn", "dn").dropped_requests, 1);
    });
}

#[test]
fn dropped_reply_runs_the_call_but_the_caller_times_out() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        net.update_link("cn", "dn", |l| l.drop_replies = 1);
        let client = net.client("cn", "dn");
        assert!(matches!(
            client.write_region(REGION, vec![1; 4]).await,
            Err(ApiError::Timeout(_))
        ));
        assert_eq!(node.written.load(Ordering::SeqCst), 4, "the call ran");
        assert_eq!(client.write_region(REGION, vec![1]).await, Ok(5));
    });
}

#[test]
fn slow_call_times_out_but_keeps_running() {
    smol::block_on(async {
        let node = Arc::new(CountingNode {
            write_delay: Duration::from_millis(300),
            ..Default::default()
        });
        let net = network(node.clone());
        let client = net.client("cn", "dn");
        assert!(matches!(
            client.write_region(REGION, vec![1]).await,
            Err(ApiError::Timeout(_))
        ));
        assert_eq!(node.written.load(Ordering::SeqCst), 0);
        smol::Timer::after(Duration::from_millis(600)).await;
        assert_eq!(
            node.written.load(Ordering::SeqCst),
            1,
            "the timed-out call finished later"
        );
    });
}

#[test]
fn partition_refuses_calls_until_healed() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        let client = net.client("cn", "dn");
        net.partition("cn", "dn");
        assert!(matches!(
            client.heartbeat(Epoch(1)).await,
            Err(ApiError::Unreachable(_))
        ));
        assert_eq!(node.ran.load(Ordering::SeqCst), 0);
        net.heal("cn", "dn");
        assert!(client.heartbeat(Epoch(1)).await.is_ok());
    });
}

#[test]
fn stopped_node_cancels_in_flight_calls_and_comes_back_when_hosted() {
    smol::block_on(async {
        let node = Arc::new(CountingNode {
            write_delay: Duration::from_millis(50),
            ..Default::default()
        });
        let net = network(node.clone());
        let client = net.client("cn", "dn");
        let in_flight = smol::spawn({
            let client = client.clone();
            async move { client.write_region(REGION, vec![1]).await }
        });
        smol::Timer::after(Duration::from_millis(10)).await;
        assert!(net.stop("dn"));
        let result = in_flight.await;
        assert!(
            matches!(result, Err(ApiError::Unreachable(_))),
            "{result:?}"
        );
        smol::Timer::after(Duration::from_millis(100)).await;
        assert_eq!(
            node.written.load(Ordering::SeqCst),
            0,
            "the stopped node's call was cancelled"
        );
        assert!(matches!(
            client.heartbeat(Epoch(1)).await,
            Err(ApiError::Unreachable(_))
        ));
        let fresh = Arc::new(CountingNode::default());
        net.host("dn", fresh.clone());
        assert!(client.heartbeat(Epoch(1)).await.is_ok());
        assert_eq!(fresh.ran.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn latency_delays_delivery() {
    smol::block_on(async {
        let net = network(Arc::new(CountingNode::default()));
        net.update_link("cn", "dn", |l| l.latency = Duration::from_millis(40));
        let start = Instant::now();
        net.client("cn", "dn").heartbeat(Epoch(1)).await.unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
    });
}

#[test]
fn method_filtered_faults_hit_only_that_method() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        net.update_link("cn", "dn", |l| {
            l.drop_replies_of.insert("task_result", 1);
        });
        let client = net.client("cn", "dn");
        assert!(
            client.heartbeat(Epoch(1)).await.is_ok(),
            "other methods are untouched"
        );
        assert!(matches!(
            client.task_result(TaskId(2), None).await,
            Err(ApiError::Timeout(_))
        ));
        assert_eq!(
            client.task_result(TaskId(2), None).await,
            Ok(TaskStatus::Success)
        );
        assert_eq!(
            node.ran.load(Ordering::SeqCst),
            3,
            "the lost-reply call ran"
        );
    });
}

#[test]
fn a_link_timeout_overrides_the_network_default() {
    smol::block_on(async {
        let node = Arc::new(CountingNode {
            write_delay: Duration::from_millis(60),
            ..Default::default()
        });
        let net = network(node.clone());
        // The network default (100 ms) would let the 60 ms call finish; this link allows 20 ms.
        net.update_link("cn", "dn", |l| l.timeout = Some(Duration::from_millis(20)));
        let result = net.client("cn", "dn").write_region(REGION, vec![1]).await;
        assert_eq!(result, Err(ApiError::Timeout(Duration::from_millis(20))));
        // Another link keeps the default and gets its answer.
        let other = net
            .client("other", "dn")
            .write_region(REGION, vec![1])
            .await;
        assert!(matches!(other, Ok(1 | 2)), "{other:?}");
        assert_eq!(net.stats("cn", "dn").timeouts, 1);
    });
}

/// Loses nothing, duplicates every `write_region` 5 ms later and delays it 20 ms.
struct DuplicateWrites;

impl MessagePolicy for DuplicateWrites {
    fn fate(&self, _: &str, _: &str, method: &'static str) -> MessageFate {
        if method == "write_region" {
            MessageFate {
                latency: Duration::from_millis(20),
                duplicate_after: Some(Duration::from_millis(5)),
                ..Default::default()
            }
        } else {
            MessageFate::default()
        }
    }
}

#[test]
fn a_policy_duplicates_and_delays_messages_that_outlive_their_sender() {
    smol::block_on(async {
        let node = Arc::new(CountingNode::default());
        let net = network(node.clone());
        net.set_policy(Some(Arc::new(DuplicateWrites)));
        let client = net.client("cn", "dn");
        let start = Instant::now();
        assert_eq!(client.write_region(REGION, vec![1, 2]).await.unwrap(), 2);
        assert!(start.elapsed() >= Duration::from_millis(20));
        // A caller that gives up at once: its request is already in flight and still runs.
        let abandoned = client.write_region(REGION, vec![1]);
        drop(futures_lite::future::poll_once(Box::pin(abandoned)).await);
        smol::Timer::after(Duration::from_millis(60)).await;
        assert_eq!(
            node.ran.load(Ordering::SeqCst),
            4,
            "two calls, each delivered twice"
        );
        assert_eq!(node.written.load(Ordering::SeqCst), 6);
    });
}
