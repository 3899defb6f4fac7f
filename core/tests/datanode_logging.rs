//! Every finished maintain task is logged at INFO with task id, region, kind, outcome and
//! duration. A separate test binary: tracing caches callsite interest process-wide, so a
//! capturing subscriber is only reliable where no other test runs concurrently.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use shoal_core::api::{
    CreateRegionRequest, DataNodeApi, MaintainTask, MaintainTaskKind, SubmitOutcome, TaskStatus,
};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{DataNodeId, DatabaseName, Epoch, RegionId, RegionKind, TaskId};
use shoal_core::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use shoal_core::storage::{
    CreateOutcome, DeleteOutcome, MemRegionStore, MemTaskJournal, RegionConfig, RegionStore,
    StorageError,
};

#[derive(Default, Clone)]
struct CapturedLogs(Arc<Mutex<Vec<String>>>);

struct LineVisitor(String);

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl tracing::Subscriber for CapturedLogs {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        *metadata.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _span: &tracing::span::Id, _values: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _span: &tracing::span::Id, _follows: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut line = LineVisitor(event.metadata().level().to_string());
        event.record(&mut line);
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(line.0);
    }
    fn enter(&self, _span: &tracing::span::Id) {}
    fn exit(&self, _span: &tracing::span::Id) {}
}

/// A region store whose deletes of region 2 always fail.
struct FailRegionTwo(MemRegionStore);

#[async_trait]
impl RegionStore for FailRegionTwo {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        self.0.create(config).await
    }
    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        self.0.append(region, bytes).await
    }
    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        self.0.set_peers(region, peers).await
    }
    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        if region.id == 2 {
            return Err(StorageError::Unavailable("disk gone".into()));
        }
        self.0.delete(region).await
    }
    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        self.0.list().await
    }
    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        self.0.size(region).await
    }
}

struct ExecutorSpawner(Arc<smol::Executor<'static>>);

impl Spawner for ExecutorSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

async fn finished(node: &DataNode, task: u64) -> TaskStatus {
    for _ in 0..100_000 {
        let status = node.task_result(TaskId(task), None).await.expect("status");
        if status.is_terminal() {
            return status;
        }
        futures_lite::future::yield_now().await;
    }
    panic!("task-{task} never finished");
}

fn delete(task: u64, region: u32) -> MaintainTask {
    MaintainTask {
        task_id: TaskId(task),
        kind: MaintainTaskKind::DeleteRegionPeer {
            region: RegionId::new(RegionKind::Data, region),
            generation: 0,
        },
    }
}

#[test]
fn every_finished_task_is_logged_at_info_with_id_region_kind_outcome_and_duration() {
    let logs = CapturedLogs::default();
    let ex = Arc::new(smol::Executor::new());
    let clock = ManualClock::new();
    let mem = MemRegionStore::new(Arc::new(clock.clone())).with_delete_rate(1000);
    let rt = Runtime {
        clock: Arc::new(clock.clone()),
        spawner: Arc::new(ExecutorSpawner(ex.clone())),
        rng: Arc::new(SeededRng::new(1)),
    };
    tracing::subscriber::with_default(logs.clone(), || {
        smol::block_on(ex.run(async {
            let node = DataNode::open(
                rt,
                Arc::new(FailRegionTwo(mem.clone())),
                Arc::new(MemTaskJournal::new()),
                DataNodeConfig::default(),
            )
            .await
            .expect("open");
            node.set_id(DataNodeId(4));
            let request = CreateRegionRequest {
                region: RegionId::new(RegionKind::Data, 1),
                database: DatabaseName::new("db").expect("name"),
                peers: vec![DataNodeId(1)],
                generation: 0,
            };
            node.create_region(Epoch(1), request).await.expect("create");
            node.write_region(RegionId::new(RegionKind::Data, 1), vec![0; 2000])
                .await
                .expect("write");
            for task in [delete(10, 1), delete(11, 2)] {
                let outcome = node.submit_task(Epoch(1), task).await;
                assert_eq!(outcome, Ok(SubmitOutcome::Accepted));
            }
            assert!(matches!(finished(&node, 11).await, TaskStatus::Fail(_)));
            while clock.next_deadline().is_none() {
                futures_lite::future::yield_now().await;
            }
            clock.advance(Duration::from_secs(2));
            assert_eq!(finished(&node, 10).await, TaskStatus::Success);
        }))
    });
    let lines = logs.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let finished: Vec<_> = lines
        .iter()
        .filter(|line| line.contains("maintain task finished"))
        .collect();
    assert_eq!(finished.len(), 2, "{lines:#?}");
    let success = finished
        .iter()
        .find(|line| line.contains("task_id=task-10"))
        .expect("task-10 logged");
    for part in [
        "INFO",
        "data_node=dn-4",
        "region=data-1",
        "kind=\"DeleteRegionPeer\"",
        "outcome=\"success\"",
        "duration_ms=2000",
    ] {
        assert!(success.contains(part), "{part} missing from {success}");
    }
    let failure = finished
        .iter()
        .find(|line| line.contains("task_id=task-11"))
        .expect("task-11 logged");
    assert!(failure.contains("outcome=\"fail\""), "{failure}");
    assert!(failure.contains("disk gone"), "{failure}");
}
