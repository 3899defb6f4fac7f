//! In-process clusters for scenario tests: ConfigNodes over one shared in-memory log and
//! DataNodes over in-memory stores, all talking through `shoal-transport-inproc`.
//!
//! Every DataNode's region store is a [`FaultyRegionStore`] over a [`MemRegionStore`], so a
//! test can slow deletions, fail operations, and count deletions executed per region. A
//! DataNode restart halts the node (its tasks stop mid-way, as in a crash) and opens a new one
//! over the same stores; a leader change starts a second ConfigNode over the same log, which
//! campaigns for a higher epoch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use shoal_core::api::DataNodeApi;
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::datanode::journal::JournalRecord;
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{
    DataNodeId, DataNodeLocation, DatabaseName, DatabaseSchema, ProcedureId, RegionId,
    ReplicationFactor, TaskId,
};
use shoal_core::procedure::{BackoffPolicy, ExecutorConfig, ProcedureInfo, ProcedureView};
use shoal_core::procedures::LifecycleConfig;
use shoal_core::runtime::Runtime;
use shoal_core::storage::faulty::FaultyRegionStore;
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_core::storage::{
    CreateOutcome, DeleteOutcome, LogEntry, LogStore, MemRegionStore, MemTaskJournal, RegionConfig,
    RegionStore, StorageError, TaskJournal,
};
use shoal_runtime_smol::smol_runtime;
use shoal_transport_inproc::InprocNetwork;

/// A [`MemLogStore`] that remembers when each entry was appended (for latency benches), and
/// can be poisoned as a file log is by a failed fsync.
#[derive(Clone, Default)]
pub struct RecordingLog {
    inner: MemLogStore,
    appends: Arc<Mutex<Vec<Append>>>,
    poisoned: Arc<std::sync::atomic::AtomicBool>,
}

/// When an entry was appended, and its payload.
pub type Append = (Instant, Vec<u8>);

impl RecordingLog {
    /// From now on every sync fails as a poisoned store's does.
    pub fn poison(&self) {
        self.poisoned
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every append so far: when, and the encoded plan.
    pub fn appends(&self) -> Vec<Append> {
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl LogStore for RecordingLog {
    fn current_term(&self) -> u64 {
        self.inner.current_term()
    }
    async fn claim_term(&self, term: u64) -> Result<(), StorageError> {
        self.inner.claim_term(term).await
    }
    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError> {
        let index = self.inner.append(term, payload)?;
        self.appends
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Instant::now(), payload.to_vec()));
        Ok(index)
    }
    async fn sync(&self, index: u64) -> Result<(), StorageError> {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StorageError::Unavailable(
                "log poisoned by a failed fdatasync".into(),
            ));
        }
        self.inner.sync(index).await
    }
    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        self.inner.read(from, max)
    }
    fn first_index(&self) -> u64 {
        self.inner.first_index()
    }
    fn last_index(&self) -> u64 {
        self.inner.last_index()
    }
    async fn compact(&self, index: u64) -> Result<(), StorageError> {
        self.inner.compact(index).await
    }
}

/// A region store that remembers when each deletion that removed data finished.
#[derive(Clone)]
pub struct TimedRegionStore {
    inner: FaultyRegionStore,
    finished: Arc<Mutex<Vec<(RegionId, Instant)>>>,
}

impl TimedRegionStore {
    /// Every finished deletion that removed data: region and when.
    pub fn finished_deletions(&self) -> Vec<(RegionId, Instant)> {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[async_trait]
impl RegionStore for TimedRegionStore {
    async fn create(&self, config: &RegionConfig) -> Result<CreateOutcome, StorageError> {
        self.inner.create(config).await
    }
    async fn append(&self, region: RegionId, bytes: &[u8]) -> Result<u64, StorageError> {
        self.inner.append(region, bytes).await
    }
    async fn set_peers(&self, region: RegionId, peers: &[DataNodeId]) -> Result<(), StorageError> {
        self.inner.set_peers(region, peers).await
    }
    async fn delete(&self, region: RegionId) -> Result<DeleteOutcome, StorageError> {
        let outcome = self.inner.delete(region).await?;
        if matches!(outcome, DeleteOutcome::Deleted { .. }) {
            self.finished
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((region, Instant::now()));
        }
        Ok(outcome)
    }
    async fn list(&self) -> Result<Vec<RegionConfig>, StorageError> {
        self.inner.list().await
    }
    async fn size(&self, region: RegionId) -> Result<Option<u64>, StorageError> {
        self.inner.size(region).await
    }
    async fn read_at(
        &self,
        region: RegionId,
        offset: u64,
        max_len: usize,
    ) -> Result<Vec<u8>, StorageError> {
        self.inner.read_at(region, offset, max_len).await
    }
    async fn write_at(
        &self,
        region: RegionId,
        offset: u64,
        bytes: Vec<u8>,
    ) -> Result<u64, StorageError> {
        self.inner.write_at(region, offset, bytes).await
    }
    async fn sync(&self, region: RegionId) -> Result<(), StorageError> {
        self.inner.sync(region).await
    }
}

/// How a test cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// DataNodes to start.
    pub data_nodes: usize,
    /// Timeout of every call between nodes.
    pub rpc_timeout: Duration,
    /// Delete rate limit of every DataNode's store (bytes/s); `None` deletes instantly.
    pub delete_rate: Option<u64>,
    /// ConfigNode tuning.
    pub config: ConfigNodeConfig,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            data_nodes: 3,
            rpc_timeout: Duration::from_millis(300),
            delete_rate: None,
            config: fast_config(),
        }
    }
}

/// ConfigNode tuning with short intervals, for tests on a real clock.
pub fn fast_config() -> ConfigNodeConfig {
    let backoff = BackoffPolicy {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(300),
        max_attempts: None,
    };
    ConfigNodeConfig {
        executor: ExecutorConfig {
            workers: 8,
            backoff: backoff.clone(),
            ..Default::default()
        },
        lifecycle: LifecycleConfig {
            poll_wait: Duration::from_millis(200),
            retry: backoff.clone(),
            create_retry_window: Duration::from_secs(2),
            data_quorum_at_least_one: false,
        },
        cleaner_interval: Duration::from_millis(50),
        cleaner_backoff: backoff,
        heartbeat_interval: Duration::from_millis(100),
        misses_before_unknown: 3,
        orphans: shoal_core::confignode::orphans::OrphanPolicy::default(),
    }
}

/// One DataNode's durable stores and its current incarnation.
pub struct DataNodeSlot {
    /// Its network address (also its DataNodeLocation address).
    pub address: String,
    /// The in-memory data, shared across restarts.
    pub mem: MemRegionStore,
    /// The fault-injecting wrapper over `mem`.
    pub store: FaultyRegionStore,
    /// What the node uses: `store`, timing finished deletions.
    pub timed: TimedRegionStore,
    /// The task journal, shared across restarts.
    pub journal: MemTaskJournal,
    node: Mutex<Option<DataNode>>,
    /// Where it serves now (`address` until [`TestCluster::move_data_node`]).
    current: Mutex<String>,
}

impl DataNodeSlot {
    /// DataNode `i`'s durable stores (not started), at `127.0.0.1:{17000 + i}`.
    pub fn new(i: usize, runtime: &Runtime, delete_rate: Option<u64>) -> Arc<Self> {
        let mem = MemRegionStore::new(runtime.clock.clone())
            .with_delete_rate(delete_rate.unwrap_or(0))
            .with_delete_chunk(4096);
        let store = FaultyRegionStore::new(Arc::new(mem.clone()), runtime.clock.clone());
        let timed = TimedRegionStore {
            inner: store.clone(),
            finished: Arc::default(),
        };
        let address = format!("127.0.0.1:{}", 17000 + i);
        Arc::new(DataNodeSlot {
            address: address.clone(),
            mem,
            store,
            timed,
            journal: MemTaskJournal::new(),
            node: Mutex::new(None),
            current: Mutex::new(address),
        })
    }

    /// Opens (or reopens, after [`DataNodeSlot::stop`]) DataNode `id` over its stores and
    /// serves it on `network` at its current address.
    pub async fn start(
        &self,
        id: DataNodeId,
        runtime: &Runtime,
        network: &InprocNetwork<dyn DataNodeApi>,
    ) {
        let node = DataNode::open(
            runtime.clone(),
            Arc::new(self.timed.clone()),
            Arc::new(self.journal.clone()),
            DataNodeConfig::default(),
        )
        .await
        .expect("DataNode opens");
        node.set_id(id);
        // Copy tasks pull from other DataNodes over the same network.
        node.set_peer_clients(Arc::new(NetClients {
            network: network.clone(),
            from: self.current_address(),
        }));
        *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(node.clone());
        network.host(&self.current_address(), Arc::new(node));
    }

    /// Stops the node as a crash would: running tasks stop mid-way, calls are refused.
    pub fn stop(&self, network: &InprocNetwork<dyn DataNodeApi>) {
        if let Some(node) = self.node.lock().unwrap_or_else(|p| p.into_inner()).take() {
            node.halt();
        }
        // What it staged in its journal and no sync covered is lost with the process.
        self.journal.crash();
        network.stop(&self.current_address());
    }

    /// The running incarnation, if up.
    pub fn node(&self) -> Option<DataNode> {
        self.node.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The address it serves at now.
    pub fn current_address(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Task ids this DataNode accepted as new more than once (journal evidence: a task id
    /// that ran twice). Empty when the promise "each task id runs once" held.
    pub async fn task_ids_accepted_twice(&self) -> Vec<TaskId> {
        let records = self.journal.load().await.expect("journal loads");
        accepted_twice(&records)
    }
}

/// Task ids with more than one `TaskAccepted` record in a DataNode journal's `records`.
pub fn accepted_twice(records: &[Vec<u8>]) -> Vec<TaskId> {
    let mut seen = std::collections::BTreeMap::<TaskId, u32>::new();
    for bytes in records {
        if let Ok(JournalRecord::TaskAccepted { task_id, .. }) = JournalRecord::decode(bytes) {
            *seen.entry(task_id).or_default() += 1;
        }
    }
    seen.into_iter()
        .filter(|(_, count)| *count > 1)
        .map(|(id, _)| id)
        .collect()
}

/// DataNode clients of the ConfigNode named `from` on an in-process network.
pub struct NetClients {
    /// The network.
    pub network: InprocNetwork<dyn DataNodeApi>,
    /// The ConfigNode's name (the `from` of its calls).
    pub from: String,
}

impl DataNodeClients for NetClients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        Arc::new(self.network.client(&self.from, &location.address))
    }
}

/// A ConfigNode and its consensus.
pub struct ConfigNodeSlot {
    /// Its name on the network (the `from` of its calls).
    pub name: String,
    /// Its consensus over the shared log.
    pub consensus: Arc<LocalConsensus>,
    /// The service.
    pub node: Arc<ConfigNode>,
}

/// A whole cluster in one process.
pub struct TestCluster {
    /// Real-clock smol runtime.
    pub runtime: Runtime,
    /// The network every call crosses.
    pub network: InprocNetwork<dyn DataNodeApi>,
    /// The shared ConfigNode log.
    pub log: RecordingLog,
    /// The shared snapshots.
    pub snapshots: MemSnapshotStore,
    /// DataNodes, by index (DataNode id = index when registered in order).
    pub data_nodes: Vec<Arc<DataNodeSlot>>,
    confignodes: Mutex<Vec<Arc<ConfigNodeSlot>>>,
    options: ClusterOptions,
}

impl TestCluster {
    /// Starts DataNodes and one leading ConfigNode, and registers the DataNodes.
    pub async fn start(options: ClusterOptions) -> TestCluster {
        let runtime = smol_runtime();
        let network = InprocNetwork::<dyn DataNodeApi>::new(runtime.clone(), options.rpc_timeout);
        let data_nodes = (0..options.data_nodes)
            .map(|i| DataNodeSlot::new(i, &runtime, options.delete_rate))
            .collect();
        let cluster = TestCluster {
            runtime,
            network,
            log: RecordingLog {
                inner: MemLogStore::new(),
                appends: Arc::default(),
                poisoned: Arc::default(),
            },
            snapshots: MemSnapshotStore::new(),
            data_nodes,
            confignodes: Mutex::new(Vec::new()),
            options,
        };
        for i in 0..cluster.data_nodes.len() {
            cluster.start_data_node(i).await;
        }
        cluster.add_leader().await;
        for (i, slot) in cluster.data_nodes.iter().enumerate() {
            let id = cluster
                .leader()
                .register_data_node(None, slot.address.clone())
                .await
                .expect("registration");
            assert_eq!(id, DataNodeId(i as u32));
        }
        cluster
    }

    /// Starts (or restarts) DataNode `i` over its durable stores.
    pub async fn start_data_node(&self, i: usize) {
        // Ids are assigned in registration order, which is slot order.
        self.data_nodes[i]
            .start(DataNodeId(i as u32), &self.runtime, &self.network)
            .await;
    }

    /// Stops DataNode `i` as a crash would: running tasks stop mid-way, calls are refused.
    pub fn stop_data_node(&self, i: usize) {
        self.data_nodes[i].stop(&self.network);
    }

    /// Crash-restarts DataNode `i` at `address` (a new port) and re-registers it there under
    /// its id, as a restarted `shoal datanode --listen NEW` does.
    pub async fn move_data_node(&self, i: usize, address: &str) {
        self.stop_data_node(i);
        *self.data_nodes[i]
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = address.to_string();
        self.start_data_node(i).await;
        let id = self
            .leader()
            .register_data_node(Some(DataNodeId(i as u32)), address.to_string())
            .await
            .expect("re-registration");
        assert_eq!(id, DataNodeId(i as u32));
    }

    /// Crash-restarts DataNode `i`.
    pub async fn restart_data_node(&self, i: usize) {
        self.stop_data_node(i);
        self.start_data_node(i).await;
    }

    /// Starts a new ConfigNode over the shared log and makes it leader (a higher epoch).
    /// The previous leader is fenced on its next proposal.
    pub async fn add_leader(&self) -> Arc<ConfigNodeSlot> {
        let index = self
            .confignodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        let name = format!("cn-{index}");
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(self.log.clone()),
            Arc::new(self.snapshots.clone()),
        ));
        let clients = Arc::new(NetClients {
            network: self.network.clone(),
            from: name.clone(),
        });
        let node = ConfigNode::new(
            consensus.clone() as Arc<dyn Consensus>,
            clients,
            self.runtime.clone(),
            self.options.config.clone(),
        )
        .expect("ConfigNode builds");
        consensus.campaign().await.expect("campaign");
        node.start();
        node.executor().wait_running().await;
        let slot = Arc::new(ConfigNodeSlot {
            name,
            consensus,
            node,
        });
        self.confignodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slot.clone());
        slot
    }

    /// The newest ConfigNode (the leader unless a test deposed it).
    pub fn leader(&self) -> Arc<ConfigNode> {
        self.leader_slot().node.clone()
    }

    /// The newest ConfigNode's slot.
    pub fn leader_slot(&self) -> Arc<ConfigNodeSlot> {
        self.confignodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last()
            .cloned()
            .expect("a ConfigNode")
    }

    /// Every ConfigNode started so far.
    pub fn confignodes(&self) -> Vec<Arc<ConfigNodeSlot>> {
        self.confignodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Creates database `name` (RF `rf` for both kinds) with its groups; waits for it.
    pub async fn create_database(
        &self,
        name: &str,
        rf: u8,
        schema_groups: u32,
        data_groups: u32,
    ) -> ProcedureInfo {
        let schema = DatabaseSchema {
            name: db(name),
            schema_replication_factor: ReplicationFactor::new(rf).expect("rf"),
            data_replication_factor: ReplicationFactor::new(rf).expect("rf"),
        };
        let leader = self.leader();
        let id = leader
            .create_database(schema, schema_groups, data_groups, None)
            .await
            .expect("create submitted");
        leader.wait_procedure(id).await.expect("create finished")
    }

    /// Appends `bytes` to every replica of every data region of `name`.
    pub async fn load(&self, name: &str, bytes: usize) {
        let groups = self.leader().list_region_groups(Some(&db(name)));
        for (_, group) in groups {
            for node in &group.replicas {
                let slot = &self.data_nodes[node.0 as usize];
                slot.store
                    .append(group.region, &vec![7u8; bytes])
                    .await
                    .expect("load");
            }
        }
    }

    /// Bytes of region data (live or still being removed) on every DataNode.
    pub fn region_bytes(&self) -> u64 {
        self.data_nodes.region_bytes()
    }

    /// Replicas (live or still being removed) on every DataNode.
    pub async fn replica_count(&self) -> usize {
        self.data_nodes.replica_count().await
    }

    /// Maintain tasks running on every DataNode that is up.
    pub fn running_tasks(&self) -> usize {
        self.data_nodes.running_tasks()
    }

    /// How many deletions of `region` each DataNode's store executed, by DataNode index.
    pub fn deletions(&self, region: RegionId) -> Vec<u64> {
        self.data_nodes.deletions(region)
    }

    /// Procedures that have not finished, per the newest ConfigNode.
    pub fn unfinished_procedures(&self) -> Vec<ProcedureInfo> {
        self.leader()
            .list_procedures()
            .into_iter()
            .filter(|p| {
                !matches!(
                    p.status,
                    ProcedureView::Succeeded | ProcedureView::Failed | ProcedureView::RolledBack
                )
            })
            .collect()
    }

    /// Waits (polling every 20 ms, at most `limit`) until `check` holds; panics naming `what`.
    pub async fn eventually(&self, what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
        let start = std::time::Instant::now();
        while !check() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// Waits for procedure `id` on the current leader, failing after `limit`.
    pub async fn wait(&self, id: ProcedureId, limit: Duration) -> ProcedureInfo {
        let leader = self.leader();
        futures_lite::future::or(
            async { leader.wait_procedure(id).await.expect("procedure finishes") },
            async {
                smol::Timer::after(limit).await;
                panic!(
                    "procedure {id} not finished after {limit:?}: {:?}",
                    leader.get_procedure(id)
                );
            },
        )
        .await
    }

    /// Asserts the end state every deletion scenario must reach: the database is gone, no
    /// region data or replica is left anywhere, no task runs, every procedure finished.
    pub async fn assert_database_gone_without_leftovers(&self, name: &str) {
        let leader = self.leader();
        assert!(
            leader
                .list_databases()
                .iter()
                .all(|d| d.entry.schema.name.as_str() != name),
            "database {name} still listed"
        );
        assert!(leader.list_region_groups(Some(&db(name))).is_empty());
        assert_eq!(self.region_bytes(), 0, "region data left on a DataNode");
        assert_eq!(
            self.replica_count().await,
            0,
            "a replica is left on a DataNode"
        );
        assert_eq!(self.running_tasks(), 0, "a maintain task still runs");
        assert!(
            self.unfinished_procedures().is_empty(),
            "{:?}",
            self.unfinished_procedures()
        );
    }

    /// Shuts every ConfigNode down and halts every DataNode.
    pub async fn shutdown(&self) {
        for slot in self.confignodes() {
            slot.node.shutdown().await;
        }
        for i in 0..self.data_nodes.len() {
            self.stop_data_node(i);
        }
    }
}

/// A database name (panics on an invalid one: tests only).
pub fn db(name: &str) -> DatabaseName {
    DatabaseName::new(name).expect("valid test database name")
}

/// The DataNode ids a test's data region groups live on.
pub fn replicas_of(cluster: &TestCluster, name: &str) -> Vec<(RegionId, Vec<DataNodeId>)> {
    cluster
        .leader()
        .list_region_groups(Some(&db(name)))
        .into_iter()
        .map(|(_, g)| (g.region, g.replicas))
        .collect()
}

/// What a test asks of a cluster's DataNodes, whichever ConfigNodes drive them (one
/// [`TestCluster`] leader or a Raft group).
pub trait DataNodeSlots {
    /// Bytes of region data (live or still being removed) on every DataNode.
    fn region_bytes(&self) -> u64;
    /// Replicas (live or still being removed) on every DataNode.
    fn replica_count(&self) -> impl std::future::Future<Output = usize>;
    /// Maintain tasks running on every DataNode that is up.
    fn running_tasks(&self) -> usize;
    /// How many deletions of `region` each DataNode's store executed, by DataNode index.
    fn deletions(&self, region: RegionId) -> Vec<u64>;
}

impl DataNodeSlots for [Arc<DataNodeSlot>] {
    fn region_bytes(&self) -> u64 {
        self.iter().map(|s| s.mem.total_bytes()).sum()
    }

    async fn replica_count(&self) -> usize {
        let mut count = 0;
        for slot in self {
            count += slot.mem.list().await.expect("list").len();
            count += slot.mem.regions_being_deleted().len();
        }
        count
    }

    fn running_tasks(&self) -> usize {
        self.iter()
            .filter_map(|s| s.node())
            .map(|n| n.task_counts().running)
            .sum()
    }

    fn deletions(&self, region: RegionId) -> Vec<u64> {
        self.iter()
            .map(|s| s.store.deletions_executed(region))
            .collect()
    }
}
