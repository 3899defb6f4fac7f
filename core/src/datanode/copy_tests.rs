//! The `CopyRegion` task between two DataNodes over in-memory stores, on a ManualClock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::future;
use smol::Executor;

use crate::api::{
    ApiError, CreateRegionRequest, DataNodeApi, HeartbeatReport, MaintainTask, MaintainTaskKind,
    RegionChunk, RegionDigest, SubmitOutcome, TaskStatus,
};
use crate::confignode::clients::DataNodeClients;
use crate::datanode::{DataNode, DataNodeConfig};
use crate::model::{
    DataNodeId, DataNodeLocation, DatabaseName, Epoch, RegionId, RegionKind, TaskId,
};
use crate::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use crate::storage::{MemRegionStore, MemTaskJournal, RegionStore};

const E1: Epoch = Epoch(1);

struct ExecutorSpawner(Arc<Executor<'static>>);

impl Spawner for ExecutorSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

/// A source DataNode whose reads fail while `failing` is above zero (each failure counts
/// it down), and whose chunks can be damaged on the way.
struct FlakySource {
    node: DataNode,
    failing: AtomicU32,
    damage: AtomicU32,
    reads: AtomicU32,
}

#[async_trait::async_trait]
impl DataNodeApi for FlakySource {
    async fn create_region(&self, e: Epoch, r: CreateRegionRequest) -> Result<(), ApiError> {
        self.node.create_region(e, r).await
    }
    async fn delete_region(&self, e: Epoch, r: RegionId) -> Result<(), ApiError> {
        self.node.delete_region(e, r).await
    }
    async fn write_region(&self, r: RegionId, b: Vec<u8>) -> Result<u64, ApiError> {
        self.node.write_region(r, b).await
    }
    async fn submit_task(&self, e: Epoch, t: MaintainTask) -> Result<SubmitOutcome, ApiError> {
        self.node.submit_task(e, t).await
    }
    async fn task_result(&self, t: TaskId, w: Option<Duration>) -> Result<TaskStatus, ApiError> {
        self.node.task_result(t, w).await
    }
    async fn ack_task(&self, e: Epoch, t: TaskId) -> Result<(), ApiError> {
        self.node.ack_task(e, t).await
    }
    async fn heartbeat(&self, e: Epoch) -> Result<HeartbeatReport, ApiError> {
        self.node.heartbeat(e).await
    }
    async fn read_region(
        &self,
        region: RegionId,
        offset: u64,
        max_len: u32,
    ) -> Result<RegionChunk, ApiError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let take = |counter: &AtomicU32| {
            counter
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        };
        if take(&self.failing) {
            return Err(ApiError::Unreachable("connection reset".into()));
        }
        let mut chunk = self.node.read_region(region, offset, max_len).await?;
        if take(&self.damage)
            && let Some(byte) = chunk.data.first_mut()
        {
            *byte ^= 0xff;
        }
        Ok(chunk)
    }
    async fn region_digest(
        &self,
        region: RegionId,
        len: Option<u64>,
    ) -> Result<RegionDigest, ApiError> {
        self.node.region_digest(region, len).await
    }
}

#[derive(Default)]
struct Peers(Mutex<BTreeMap<String, Arc<FlakySource>>>);

impl DataNodeClients for Peers {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        let peers = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match peers.get(&location.address) {
            Some(node) => node.clone(),
            None => panic!("no DataNode at {}", location.address),
        }
    }
}

struct Rig {
    ex: Arc<Executor<'static>>,
    clock: ManualClock,
    source: Arc<FlakySource>,
    source_store: MemRegionStore,
    target_store: MemRegionStore,
    target_journal: MemTaskJournal,
    peers: Arc<Peers>,
}

fn region() -> RegionId {
    RegionId::new(RegionKind::Data, 4)
}

fn source_location() -> DataNodeLocation {
    DataNodeLocation::new(DataNodeId(1), "dn-source:1").expect("valid location")
}

fn config() -> DataNodeConfig {
    DataNodeConfig {
        copy_chunk_bytes: 1000,
        // One read at a time, so tests can count reads exactly.
        copy_window: 1,
        copy_checkpoint_bytes: 3000,
        copy_stall_timeout: Duration::from_secs(5),
        ..DataNodeConfig::default()
    }
}

fn runtime(ex: &Arc<Executor<'static>>, clock: &ManualClock) -> Runtime {
    Runtime {
        clock: Arc::new(clock.clone()),
        spawner: Arc::new(ExecutorSpawner(ex.clone())),
        rng: Arc::new(SeededRng::new(5)),
    }
}

fn create() -> CreateRegionRequest {
    CreateRegionRequest {
        region: region(),
        database: DatabaseName::new("db1").expect("valid name"),
        peers: vec![DataNodeId(1), DataNodeId(2)],
        generation: 1,
    }
}

/// Pseudo-random bytes, so a misplaced chunk changes the checksum.
fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect()
}

impl Rig {
    async fn new(ex: &Arc<Executor<'static>>, bytes: usize) -> Self {
        let clock = ManualClock::new();
        let rt = runtime(ex, &clock);
        let source_store = MemRegionStore::new(rt.clock.clone());
        let node = DataNode::open(
            rt.clone(),
            Arc::new(source_store.clone()),
            Arc::new(MemTaskJournal::new()),
            config(),
        )
        .await
        .expect("source opens");
        node.create_region(E1, create())
            .await
            .expect("source create");
        node.write_region(region(), data(bytes))
            .await
            .expect("source data");
        let source = Arc::new(FlakySource {
            node,
            failing: AtomicU32::new(0),
            damage: AtomicU32::new(0),
            reads: AtomicU32::new(0),
        });
        let peers = Arc::new(Peers::default());
        peers
            .0
            .lock()
            .expect("peers")
            .insert(source_location().address, source.clone());
        Self {
            ex: ex.clone(),
            clock,
            source,
            source_store,
            target_store: MemRegionStore::new(rt.clock.clone()),
            target_journal: MemTaskJournal::new(),
            peers,
        }
    }

    async fn open_target(&self) -> DataNode {
        self.open_target_with(config()).await
    }

    async fn open_target_with(&self, config: DataNodeConfig) -> DataNode {
        let node = DataNode::open(
            runtime(&self.ex, &self.clock),
            Arc::new(self.target_store.clone()),
            Arc::new(self.target_journal.clone()),
            config,
        )
        .await
        .expect("target opens");
        node.set_peer_clients(self.peers.clone());
        node
    }

    /// Drives the clock until task `id` is terminal on `node`.
    async fn finish(&self, node: &DataNode, id: u64) -> TaskStatus {
        for _ in 0..10_000 {
            let status = node.task_result(TaskId(id), None).await.expect("poll");
            if status.is_terminal() {
                return status;
            }
            for _ in 0..50 {
                future::yield_now().await;
            }
            self.clock.advance(Duration::from_millis(10));
        }
        panic!("copy task {id} never finished");
    }

    async fn digests_equal(&self) -> bool {
        let ours = super::local_digest(&self.target_store, region(), None)
            .await
            .expect("target digest");
        let theirs = super::local_digest(&self.source_store, region(), None)
            .await
            .expect("source digest");
        ours == theirs
    }
}

fn copy(id: u64) -> MaintainTask {
    MaintainTask {
        task_id: TaskId(id),
        kind: MaintainTaskKind::CopyRegion {
            region: region(),
            source: source_location(),
        },
    }
}

#[test]
fn a_copy_makes_the_target_byte_identical_in_checksummed_chunks() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 10_500).await;
        let target = rig.open_target().await;
        target.create_region(E1, create()).await.expect("create");
        assert_eq!(
            target.submit_task(E1, copy(1)).await,
            Ok(SubmitOutcome::Accepted)
        );
        assert_eq!(rig.finish(&target, 1).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
        // 11 chunks of at most 1000 bytes, then the empty read at the end.
        assert_eq!(rig.source.reads.load(Ordering::SeqCst), 12);
    }));
}

#[test]
fn a_windowed_copy_with_reads_lost_in_flight_is_byte_identical() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 9_999).await;
        let target = rig
            .open_target_with(DataNodeConfig {
                copy_window: 3,
                ..config()
            })
            .await;
        target.create_region(E1, create()).await.expect("create");
        rig.source.failing.store(4, Ordering::SeqCst);
        target.submit_task(E1, copy(1)).await.expect("submit");
        assert_eq!(rig.finish(&target, 1).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
    }));
}

#[test]
fn a_lost_connection_mid_copy_resumes_at_the_same_offset() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 5_000).await;
        let target = rig.open_target().await;
        target.create_region(E1, create()).await.expect("create");
        rig.source.failing.store(3, Ordering::SeqCst);
        rig.source.damage.store(1, Ordering::SeqCst);
        target.submit_task(E1, copy(1)).await.expect("submit");
        assert_eq!(rig.finish(&target, 1).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
        // 5 chunks + the end, plus 3 failed reads and 1 damaged chunk read again.
        assert_eq!(rig.source.reads.load(Ordering::SeqCst), 6 + 3 + 1);
    }));
}

#[test]
fn a_source_gone_longer_than_the_stall_timeout_fails_the_copy_and_a_new_task_resumes() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 5_000).await;
        let target = rig.open_target().await;
        target.create_region(E1, create()).await.expect("create");
        // Let two chunks through, then the source goes away for good.
        rig.target_store
            .write_at(region(), 0, data(2_000))
            .await
            .expect("pretend two chunks were copied");
        rig.source.failing.store(u32::MAX, Ordering::SeqCst);
        target.submit_task(E1, copy(1)).await.expect("submit");
        let failed = rig.finish(&target, 1).await;
        assert!(
            matches!(&failed, TaskStatus::Fail(reason) if reason.contains("connection reset")),
            "{failed:?}"
        );
        rig.source.failing.store(0, Ordering::SeqCst);
        let before = rig.source.reads.load(Ordering::SeqCst);
        target.submit_task(E1, copy(2)).await.expect("submit");
        assert_eq!(rig.finish(&target, 2).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
        // It resumed after the 2,000 bytes it held: 3 chunks and the end.
        assert_eq!(rig.source.reads.load(Ordering::SeqCst) - before, 4);
    }));
}

#[test]
fn local_bytes_that_differ_from_the_source_are_discarded_and_the_copy_starts_over() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 3_000).await;
        let target = rig.open_target().await;
        target.create_region(E1, create()).await.expect("create");
        rig.target_store
            .write_at(region(), 0, vec![9; 1_500])
            .await
            .expect("garbage");
        target.submit_task(E1, copy(1)).await.expect("submit");
        assert_eq!(rig.finish(&target, 1).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
        assert_eq!(rig.source.reads.load(Ordering::SeqCst), 4);
    }));
}

#[test]
fn a_copy_resumed_after_a_target_restart_finishes_under_the_same_id() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 8_000).await;
        let target = rig.open_target().await;
        target.create_region(E1, create()).await.expect("create");
        // The source is down when the task starts: the copy is journaled and waiting.
        rig.source.failing.store(2, Ordering::SeqCst);
        target.submit_task(E1, copy(7)).await.expect("submit");
        for _ in 0..20 {
            future::yield_now().await;
        }
        target.halt();
        let restarted = rig.open_target().await;
        assert_eq!(rig.finish(&restarted, 7).await, TaskStatus::Success);
        assert!(rig.digests_equal().await);
        // Resubmitting the same id runs nothing new.
        let reads = rig.source.reads.load(Ordering::SeqCst);
        assert_eq!(
            restarted.submit_task(E1, copy(7)).await,
            Ok(SubmitOutcome::Accepted)
        );
        assert_eq!(rig.finish(&restarted, 7).await, TaskStatus::Success);
        assert_eq!(rig.source.reads.load(Ordering::SeqCst), reads);
    }));
}

#[test]
fn a_copy_into_a_missing_replica_fails_with_the_reason() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 1_000).await;
        let target = rig.open_target().await;
        target.submit_task(E1, copy(1)).await.expect("submit");
        let failed = rig.finish(&target, 1).await;
        assert!(
            matches!(&failed, TaskStatus::Fail(reason) if reason.contains("does not exist")),
            "{failed:?}"
        );
    }));
}

#[test]
fn read_region_answers_checksummed_chunks_and_digests_cover_prefixes() {
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.clone().run(async move {
        let rig = Rig::new(&ex, 2_500).await;
        let node = &rig.source.node;
        let chunk = node
            .read_region(region(), 2_000, 1_000)
            .await
            .expect("read");
        assert_eq!(chunk.offset, 2_000);
        assert_eq!(chunk.data, data(2_500)[2_000..].to_vec());
        assert_eq!(chunk.crc32c, crc32c::crc32c(&chunk.data));
        assert_eq!(chunk.region_len, 2_500);
        let end = node
            .read_region(region(), 2_500, 1_000)
            .await
            .expect("read");
        assert!(end.data.is_empty());
        let digest = node
            .region_digest(region(), Some(100))
            .await
            .expect("digest");
        assert_eq!(digest.len, 100);
        assert_eq!(digest.crc32c, crc32c::crc32c(&data(2_500)[..100]));
        assert_eq!(digest.region_len, 2_500);
        let missing = node
            .read_region(RegionId::new(RegionKind::Data, 99), 0, 10)
            .await;
        assert!(matches!(missing, Err(ApiError::Refused(_))), "{missing:?}");
    }));
}
