//! The simulated cluster: two ConfigNode slots over one durable log, N DataNodes over their
//! durable stores, the in-process transport between them, and the admin client.
//!
//! Task tags: [`WORLD`] (messages in flight), [`CLIENT`] (the workload), `10 + i` for
//! ConfigNode slot `i`, `100 + j` for DataNode `j`. A crash cancels every task of the node's
//! tag and drops its objects; a restart rebuilds the node from its durable stores.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_lite::future;
use shoal_core::api::DataNodeApi;
use shoal_core::confignode::clients::DataNodeClients;
use shoal_core::confignode::{ConfigNode, ConfigNodeConfig};
use shoal_core::consensus::{Consensus, LocalConsensus};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{DataNodeId, DataNodeLocation, Epoch};
use shoal_core::procedure::{BackoffPolicy, ExecutorConfig};
use shoal_core::procedures::LifecycleConfig;
use shoal_core::runtime::{BoxFuture, Clock, Runtime};
use shoal_core::storage::mem::MemSnapshotStore;
use shoal_core::storage::{LogStore, SnapshotStore, StorageError};
use shoal_transport_inproc::InprocNetwork;

use crate::disk::{Disks, SimConsensus, SimJournal, SimLogStore, SimRegionStore};
use crate::executor::{Executor, SharedRng, SimClock, SimRng, Tag};
use crate::net::NetPolicy;
use crate::observe::Observer;
use crate::scenario::{Scenario, Tuning};

/// Tag of messages in flight and other network tasks.
pub const WORLD: Tag = 0;
/// Tag of the workload's client tasks.
pub const CLIENT: Tag = 1;

/// Tag of ConfigNode slot `i`.
pub fn cn_tag(i: usize) -> Tag {
    10 + i as Tag
}

/// Tag of DataNode `j`.
pub fn dn_tag(j: usize) -> Tag {
    100 + j as Tag
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Timeout of one call between nodes (a task long-poll waits less than this).
pub const RPC_TIMEOUT: Duration = Duration::from_millis(2_000);
/// How long the admin client waits for a ConfigNode's answer.
pub const ADMIN_TIMEOUT: Duration = Duration::from_millis(5_000);

/// The ConfigNode configuration the simulator runs with (short intervals; time is
/// virtual), with the run's `tuning`.
pub fn confignode_config(tuning: &Tuning) -> ConfigNodeConfig {
    let backoff = BackoffPolicy {
        initial: Duration::from_millis(tuning.step_backoff_ms),
        max: Duration::from_millis(2_000),
        max_attempts: None,
    };
    ConfigNodeConfig {
        executor: ExecutorConfig {
            workers: 8,
            backoff: backoff.clone(),
            ..Default::default()
        },
        lifecycle: LifecycleConfig {
            poll_wait: Duration::from_millis(1_000),
            retry: BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(2_000),
                max_attempts: None,
            },
            create_retry_window: Duration::from_millis(tuning.create_retry_window_ms),
            data_quorum_at_least_one: false,
        },
        cleaner_interval: Duration::from_millis(tuning.cleaner_interval_ms),
        cleaner_backoff: BackoffPolicy {
            initial: Duration::from_millis(50),
            ..backoff
        },
        heartbeat_interval: Duration::from_millis(1_000),
        misses_before_unknown: 3,
        orphans: shoal_core::confignode::orphans::OrphanPolicy {
            // Short, per seed: planted orphans must be gone once the cluster settles, and a
            // zero grace puts every create in flight next to the reconciler.
            grace: Duration::from_millis(tuning.orphan_grace_ms),
            remove: true,
        },
    }
}

/// The ConfigNodes' snapshot store, with the log's failure rate.
#[derive(Clone)]
pub struct SimSnapshotStore {
    inner: MemSnapshotStore,
    disks: Disks,
}

#[async_trait]
impl SnapshotStore for SimSnapshotStore {
    async fn save(&self, last_index: u64, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.disks.fail_log("snapshot save")?;
        self.inner.save(last_index, bytes).await
    }

    async fn load_latest(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.disks.fail_log("snapshot load")?;
        self.inner.load_latest().await
    }
}

/// A node whose process would exit for a supervisor to restart it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFailure {
    /// DataNode `j`.
    DataNode(usize),
    /// ConfigNode slot `i`.
    ConfigNode(usize),
}

/// One DataNode: durable stores, and its incarnation while up.
pub struct DnSlot {
    /// Its id (registered in slot order).
    pub id: DataNodeId,
    /// Its address on the network.
    pub address: String,
    /// Its regions (durable).
    pub store: SimRegionStore,
    /// Its task journal (durable).
    pub journal: SimJournal,
    /// The running incarnation once opened.
    pub node: Arc<Mutex<Option<DataNode>>>,
    /// Up (opening or serving) rather than crashed.
    pub up: bool,
    /// Lost for good ([`crate::scenario::Op::KillDataNode`]): it never restarts.
    pub dead: bool,
    rng: Arc<SharedRng>,
}

/// A running ConfigNode.
#[derive(Clone)]
pub struct CnLive {
    /// Its consensus over the shared log.
    pub consensus: Arc<LocalConsensus>,
    /// The service.
    pub node: Arc<ConfigNode>,
}

struct NetClients {
    network: InprocNetwork<dyn DataNodeApi>,
    from: String,
}

impl DataNodeClients for NetClients {
    fn client(&self, location: &DataNodeLocation) -> Arc<dyn DataNodeApi> {
        Arc::new(self.network.client(&self.from, &location.address))
    }
}

/// The whole simulated cluster.
pub struct World {
    /// The scheduler.
    pub exec: Executor,
    /// Virtual time.
    pub clock: SimClock,
    /// The checker's view.
    pub observer: Observer,
    /// The disks' fault source.
    pub disks: Disks,
    /// The in-process transport.
    pub network: InprocNetwork<dyn DataNodeApi>,
    /// Its seeded message policy.
    pub policy: Arc<NetPolicy>,
    /// The ConfigNodes' durable log.
    pub log: SimLogStore,
    /// The ConfigNodes' durable snapshots.
    pub snapshots: SimSnapshotStore,
    /// DataNodes by index.
    pub dns: Vec<DnSlot>,
    /// ConfigNode slots 0 and 1 (`None`: down).
    pub cns: Arc<Mutex<Vec<Option<CnLive>>>>,
    /// A node that failed for good (poisoned journal or log) asks its supervisor for a
    /// restart here, as its process would exit non-zero.
    pub failed: async_channel::Receiver<NodeFailure>,
    failed_tx: async_channel::Sender<NodeFailure>,
    seed: u64,
    world_rng: Arc<SharedRng>,
    tuning: Tuning,
}

impl World {
    /// The cluster of `scenario` (no node started yet) whose log starts at `first_index`.
    pub fn new(
        scenario: &Scenario,
        first_index: u64,
        observer: Observer,
        clock: SimClock,
        disks: Disks,
        policy: Arc<NetPolicy>,
    ) -> World {
        let seed = scenario.seed;
        let data_nodes = scenario.data_nodes;
        let delete_rates = &scenario.delete_rates;
        let exec = Executor::new();
        let world_rng = Arc::new(SharedRng::new(SimRng::new(seed, 2)));
        let runtime = Runtime {
            clock: Arc::new(clock.clone()),
            spawner: exec.spawner(WORLD),
            rng: world_rng.clone(),
        };
        let network = InprocNetwork::<dyn DataNodeApi>::new(runtime, RPC_TIMEOUT);
        network.set_policy(Some(policy.clone()));
        let dns = (0..data_nodes)
            .map(|j| {
                let id = DataNodeId(j as u32);
                DnSlot {
                    id,
                    address: format!("dn{j}:6000"),
                    store: SimRegionStore::new(
                        id,
                        Arc::new(clock.clone()),
                        delete_rates.get(j).copied().unwrap_or(0),
                        disks.clone(),
                    ),
                    journal: SimJournal::new(id, disks.clone()),
                    node: Arc::new(Mutex::new(None)),
                    up: false,
                    dead: false,
                    rng: Arc::new(SharedRng::new(SimRng::new(seed, 100 + j as u64))),
                }
            })
            .collect();
        let (failed_tx, failed) = async_channel::unbounded();
        World {
            failed,
            failed_tx,
            exec,
            clock: clock.clone(),
            observer,
            log: SimLogStore::new(disks.clone(), first_index),
            snapshots: SimSnapshotStore {
                inner: MemSnapshotStore::new(),
                disks: disks.clone(),
            },
            disks,
            network,
            policy,
            dns,
            cns: Arc::new(Mutex::new(vec![None, None])),
            seed,
            world_rng,
            tuning: scenario.tuning.clone(),
        }
    }

    /// The snapshot store's contents (to seed a v1 snapshot).
    pub async fn save_snapshot(&self, last_index: u64, bytes: Vec<u8>) {
        let _ = self.snapshots.inner.save(last_index, bytes).await;
    }

    fn runtime(&self, tag: Tag, rng: Arc<SharedRng>) -> Runtime {
        Runtime {
            clock: Arc::new(self.clock.clone()),
            spawner: self.exec.spawner(tag),
            rng,
        }
    }

    /// Starts (or restarts) DataNode `j` over its durable stores.
    pub fn start_dn(&mut self, j: usize) {
        let Some(slot) = self.dns.get_mut(j) else {
            return;
        };
        if slot.up || slot.dead {
            return;
        }
        slot.up = true;
        let tag = dn_tag(j);
        let rt = Runtime {
            clock: Arc::new(self.clock.clone()),
            spawner: self.exec.spawner(tag),
            rng: slot.rng.clone(),
        };
        let store = Arc::new(slot.store.clone());
        let journal = Arc::new(slot.journal.clone());
        let id = slot.id;
        let address = slot.address.clone();
        let holder = slot.node.clone();
        let network = self.network.clone();
        let observer = self.observer.clone();
        let clock = self.clock.clone();
        let failed = self.failed_tx.clone();
        // Copies pull from their source DataNode over the same network.
        let peers = Arc::new(NetClients {
            network: self.network.clone(),
            from: address.clone(),
        });
        observer.trace(|| format!("start DataNode {id}"));
        self.exec.spawn(
            tag,
            Box::pin(async move {
                loop {
                    match DataNode::open(
                        rt.clone(),
                        store.clone(),
                        journal.clone(),
                        DataNodeConfig {
                            // A copy whose source is lost fails well within the checker's
                            // stall bound (30 s without a durable change), as it would
                            // within the default 60 s in production.
                            copy_stall_timeout: Duration::from_secs(10),
                            ..DataNodeConfig::default()
                        },
                    )
                    .await
                    {
                        Ok(node) => {
                            node.set_id(id);
                            node.set_peer_clients(peers.clone());
                            *lock(&holder) = Some(node.clone());
                            network.host_on(&address, Arc::new(node.clone()), rt.spawner.clone());
                            observer.trace(|| format!("DataNode {id} serving"));
                            let error = node.wait_failed().await;
                            observer.trace(|| format!("DataNode {id} failed for good: {error}"));
                            let _ = failed.send(NodeFailure::DataNode(j)).await;
                            return;
                        }
                        Err(e) => {
                            observer.trace(|| format!("DataNode {id} failed to open: {e}"));
                            clock.sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }),
        );
    }

    /// Crashes DataNode `j`: every task of it stops where it is; only its stores remain.
    pub fn crash_dn(&mut self, j: usize) {
        let Some(slot) = self.dns.get_mut(j) else {
            return;
        };
        if !slot.up {
            return;
        }
        slot.up = false;
        self.network.stop(&slot.address);
        let cancelled = self.exec.cancel(dn_tag(j));
        *lock(&slot.node) = None;
        let id = slot.id;
        self.observer
            .trace(|| format!("crash DataNode {id} ({cancelled} tasks dropped)"));
    }

    /// DataNode `j` is lost for good: it crashes and never restarts; the checker stops
    /// judging its disk except for what the cluster must record as abandoned.
    pub fn kill_dn(&mut self, j: usize) {
        self.crash_dn(j);
        let Some(slot) = self.dns.get_mut(j) else {
            return;
        };
        slot.dead = true;
        let id = slot.id;
        self.observer.with(|seen| {
            seen.dead.insert(id);
        });
        self.observer
            .trace(|| format!("DataNode {id} lost for good"));
    }

    /// Whether ConfigNode slot `i` is up.
    pub fn cn_up(&self, i: usize) -> bool {
        lock(&self.cns).get(i).is_some_and(Option::is_some)
    }

    /// The slot that leads under the log's current term, if any.
    pub fn real_leader(&self) -> Option<usize> {
        let term = self.log.current_term();
        lock(&self.cns).iter().position(|cn| {
            cn.as_ref().is_some_and(|cn| {
                let l = cn.consensus.leadership().get();
                l.is_leader && l.epoch == Epoch(term)
            })
        })
    }

    /// The slot whose consensus leads (or last led) at `term`, if it is up.
    pub fn leader_at(&self, term: u64) -> Option<usize> {
        lock(&self.cns).iter().position(|cn| {
            cn.as_ref()
                .is_some_and(|cn| cn.consensus.leadership().get().epoch == Epoch(term))
        })
    }

    /// Starts ConfigNode slot `i` over the shared log (a follower until it campaigns).
    pub fn start_cn(&mut self, i: usize, campaign: bool) {
        if self.cn_up(i) {
            if campaign {
                self.campaign(i);
            }
            return;
        }
        let tag = cn_tag(i);
        let rng = Arc::new(SharedRng::new(SimRng::new(
            self.seed ^ self.clock.now_ms(),
            10 + i as u64,
        )));
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(self.log.clone()),
            Arc::new(self.snapshots.clone()),
        ));
        let clients = Arc::new(NetClients {
            network: self.network.clone(),
            from: format!("cn{i}"),
        });
        let node = match ConfigNode::new(
            Arc::new(SimConsensus::new(consensus.clone(), self.log.clone())) as Arc<dyn Consensus>,
            clients,
            self.runtime(tag, rng),
            confignode_config(&self.tuning),
        ) {
            Ok(node) => node,
            Err(e) => {
                self.observer
                    .trace(|| format!("ConfigNode {i} failed to build: {e}"));
                return;
            }
        };
        node.start();
        let failed = self.failed_tx.clone();
        let watched = node.clone();
        let observer = self.observer.clone();
        self.exec.spawn(
            tag,
            Box::pin(async move {
                let error = watched.failed().await;
                observer.trace(|| format!("ConfigNode {i} failed for good: {error}"));
                let _ = failed.send(NodeFailure::ConfigNode(i)).await;
            }),
        );
        if let Some(slot) = lock(&self.cns).get_mut(i) {
            *slot = Some(CnLive { consensus, node });
        }
        self.observer.trace(|| format!("start ConfigNode {i}"));
        if campaign {
            self.campaign(i);
        }
    }

    /// ConfigNode slot `i` campaigns until it leads (it must be up).
    pub fn campaign(&mut self, i: usize) {
        let Some(live) = lock(&self.cns).get(i).cloned().flatten() else {
            return;
        };
        if self.real_leader().is_some() {
            self.observer.interrupted_now();
        }
        let observer = self.observer.clone();
        let clock = self.clock.clone();
        self.exec.spawn(
            cn_tag(i),
            Box::pin(async move {
                loop {
                    match live.consensus.campaign().await {
                        Ok(epoch) => {
                            observer.trace(|| format!("ConfigNode {i} leads at epoch {epoch}"));
                            return;
                        }
                        Err(e) => {
                            observer.trace(|| format!("ConfigNode {i} campaign failed: {e}"));
                            clock.sleep(Duration::from_millis(300)).await;
                        }
                    }
                }
            }),
        );
    }

    /// Crashes ConfigNode slot `i`: its tasks stop, its unsynced log tail is lost.
    pub fn crash_cn(&mut self, i: usize) {
        let Some(live) = lock(&self.cns).get_mut(i).and_then(Option::take) else {
            return;
        };
        if self.log.current_term() == live.consensus.leadership().get().epoch.0 {
            self.observer.interrupted_now();
        }
        let cancelled = self.exec.cancel(cn_tag(i));
        let lost = self
            .log
            .crash_appender(live.consensus.leadership().get().epoch.0);
        drop(live);
        self.observer.trace(|| {
            format!(
                "crash ConfigNode {i} ({cancelled} tasks dropped, {lost} unsynced entries lost)"
            )
        });
    }

    /// The admin client of this world.
    pub fn admin(&self) -> Admin {
        Admin {
            cns: self.cns.clone(),
            log: self.log.clone(),
            exec: self.exec.clone(),
            clock: self.clock.clone(),
        }
    }

    /// ConfigNode slot `i`, if up.
    pub fn cns_live(&self, i: usize) -> Option<CnLive> {
        lock(&self.cns).get(i).cloned().flatten()
    }

    /// The world's own randomness (client jitter).
    pub fn rng(&self) -> &Arc<SharedRng> {
        &self.world_rng
    }
}

/// The admin client: reaches the leading ConfigNode as an RPC would.
#[derive(Clone)]
pub struct Admin {
    cns: Arc<Mutex<Vec<Option<CnLive>>>>,
    log: SimLogStore,
    exec: Executor,
    clock: SimClock,
}

impl Admin {
    /// Runs `f` on the leading ConfigNode, inside that node (on its tag, so a crash drops
    /// it), and waits for the answer at most [`ADMIN_TIMEOUT`]. `None`: no leader, or no
    /// answer in time (the request may or may not have taken effect).
    pub async fn call<R, F>(&self, f: F) -> Option<R>
    where
        R: Send + 'static,
        F: FnOnce(Arc<ConfigNode>) -> BoxFuture<R> + Send + 'static,
    {
        let term = self.log.current_term();
        let leader = lock(&self.cns).iter().enumerate().find_map(|(i, cn)| {
            cn.as_ref().and_then(|cn| {
                let l = cn.consensus.leadership().get();
                (l.is_leader && l.epoch == Epoch(term)).then(|| (i, cn.node.clone()))
            })
        });
        let (slot, node) = leader?;
        let (tx, rx) = async_channel::bounded(1);
        self.exec.spawn(
            cn_tag(slot),
            Box::pin(async move {
                let answer = f(node).await;
                let _ = tx.send(answer).await;
            }),
        );
        let clock = self.clock.clone();
        future::or(async { rx.recv().await.ok() }, async move {
            clock.sleep(ADMIN_TIMEOUT).await;
            None
        })
        .await
    }
}
