//! One DataNode on the file stores (task journal + region store) under many deletion tasks:
//! 10,000 replicas are created, then 10,000 `DeleteRegionPeer` tasks are submitted (64
//! submitters, as a ConfigNode with many removals in flight would) and run to the end.
//! Each task is acked once it succeeded, as the ConfigNode does. Prints the total time,
//! fdatasyncs of the task journal per task (counted through core's metrics seam), and the latency of task-status calls made from another thread while the
//! tasks run (p50/p99/max; issue 17's target: p99 < 10 ms).
//!
//! Run: `cargo bench -p shoal-storage-fs --bench datanode_tasks`. `SHOAL_BENCH_TASKS` sets the
//! number of tasks (default 10000), `SHOAL_BENCH_DIR` the disk (default: under `target/`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use shoal_core::api::{
    CreateRegionRequest, DataNodeApi, MaintainTask, MaintainTaskKind, SubmitOutcome, TaskStatus,
};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::metrics::{self, MetricEvent, MetricsSink, SyncedFile};
use shoal_core::model::{DataNodeId, DatabaseName, Epoch, RegionId, RegionKind, TaskId};
use shoal_storage_fs::{FsRegionStore, FsTaskJournal, RegionStoreOptions};

/// Submitters (and creators) working at once.
const IN_FLIGHT: usize = 64;

#[derive(Default)]
struct Counts {
    journal_fsyncs: AtomicU64,
    log_fsyncs: AtomicU64,
    tasks_finished: AtomicU64,
}

struct CountingSink(Arc<Counts>);

impl MetricsSink for CountingSink {
    fn record(&self, event: MetricEvent) {
        match event {
            MetricEvent::Fsync {
                file: SyncedFile::Journal,
                ..
            } => self.0.journal_fsyncs.fetch_add(1, Ordering::Relaxed),
            MetricEvent::Fsync {
                file: SyncedFile::Log,
                ..
            } => self.0.log_fsyncs.fetch_add(1, Ordering::Relaxed),
            MetricEvent::Task { .. } => self.0.tasks_finished.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

fn region(i: u64) -> RegionId {
    RegionId::new(RegionKind::Data, u32::try_from(i).expect("region id"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `work(i)` for every `i` in `0..n`, `IN_FLIGHT` at a time, on smol's executor.
async fn for_each_concurrently<F, Fut>(n: u64, work: F)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (next, work) = (next.clone(), work.clone());
            smol::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    work(i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await;
    }
}

fn main() {
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let tasks: u64 = std::env::var("SHOAL_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("bench dir");
    let tmp = tempfile::tempdir_in(&root).expect("tempdir");
    let counts = Arc::new(Counts::default());
    metrics::install(Box::new(CountingSink(counts.clone())));
    let rt = shoal_runtime_smol::smol_runtime();
    let dir = tmp.path().join("datanode");
    let store = FsRegionStore::open(
        &dir,
        RegionStoreOptions {
            delete_rate: None,
            clock: rt.clock.clone(),
        },
    )
    .expect("region store");
    let journal = FsTaskJournal::open(dir.join("tasks.journal")).expect("journal");
    let config = DataNodeConfig {
        max_retained_results: usize::try_from(tasks).expect("tasks") + 1,
        ..DataNodeConfig::default()
    };
    let node = Arc::new(
        smol::block_on(DataNode::open(
            rt,
            Arc::new(store),
            Arc::new(journal),
            config,
        ))
        .expect("open DataNode"),
    );
    let epoch = Epoch(1);
    let database = DatabaseName::new("bench").expect("name");
    println!(
        "datanode_tasks: {tasks} deletion tasks on one DataNode, dir {}",
        root.display()
    );

    let started = Instant::now();
    smol::block_on(for_each_concurrently(tasks, {
        let node = node.clone();
        move |i| {
            let (node, database) = (node.clone(), database.clone());
            async move {
                let request = CreateRegionRequest {
                    region: region(i),
                    database,
                    peers: vec![DataNodeId(1)],
                    generation: 1,
                };
                node.create_region(epoch, request).await.expect("create");
            }
        }
    }));
    println!(
        "create {tasks} regions       : {:>8.0} ms ({} journal fdatasyncs)",
        started.elapsed().as_secs_f64() * 1e3,
        counts.journal_fsyncs.load(Ordering::Relaxed)
    );

    // Status calls from another thread (as the RPC thread makes them) while tasks run.
    let running = Arc::new(AtomicBool::new(true));
    let poller = {
        let (node, running) = (node.clone(), running.clone());
        std::thread::spawn(move || {
            let mut latencies = Vec::new();
            let mut i = 0u64;
            while running.load(Ordering::Relaxed) {
                let id = TaskId(i % tasks + 1);
                i = i.wrapping_add(7919);
                let at = Instant::now();
                let _ = smol::block_on(node.task_result(id, None));
                latencies.push(at.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            latencies
        })
    };

    let fsyncs_before = counts.journal_fsyncs.load(Ordering::Relaxed);
    let finished_before = counts.tasks_finished.load(Ordering::Relaxed);
    let started = Instant::now();
    smol::block_on(for_each_concurrently(tasks, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            async move {
                let task = MaintainTask {
                    task_id: TaskId(i + 1),
                    kind: MaintainTaskKind::DeleteRegionPeer {
                        region: region(i),
                        generation: 1,
                    },
                };
                let outcome = node.submit_task(epoch, task).await.expect("submit");
                assert_eq!(outcome, SubmitOutcome::Accepted);
            }
        }
    }));
    let submitted = started.elapsed();
    smol::block_on(for_each_concurrently(tasks, {
        let node = node.clone();
        move |i| {
            let node = node.clone();
            async move {
                loop {
                    match node
                        .task_result(TaskId(i + 1), Some(Duration::from_secs(5)))
                        .await
                        .expect("result")
                    {
                        TaskStatus::Success => {
                            // As the ConfigNode does once the deletion is recorded.
                            node.ack_task(epoch, TaskId(i + 1)).await.expect("ack");
                            break;
                        }
                        TaskStatus::Processing => continue,
                        other => panic!("task {} ended {other:?}", i + 1),
                    }
                }
            }
        }
    }));
    let total = started.elapsed();
    running.store(false, Ordering::Relaxed);
    let mut latencies = poller.join().expect("poller");
    latencies.sort();
    let fsyncs = counts.journal_fsyncs.load(Ordering::Relaxed) - fsyncs_before;
    let finished = counts.tasks_finished.load(Ordering::Relaxed) - finished_before;
    assert_eq!(finished, tasks, "every task reported finished once");
    println!(
        "submit {tasks} tasks          : {:>8.0} ms",
        submitted.as_secs_f64() * 1e3
    );
    println!(
        "submit, run, ack to the end : {:>8.0} ms ({:.0} tasks/s, {:.3} ms per task)",
        total.as_secs_f64() * 1e3,
        tasks as f64 / total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / tasks as f64
    );
    println!(
        "journal fdatasyncs per task : {:>8.2} ({fsyncs} in all)",
        fsyncs as f64 / tasks as f64
    );
    let p99 = percentile(&latencies, 0.99);
    println!(
        "task-status call latency    : p50 {:?}  p99 {:?}  max {:?} ({} calls) (target p99 < 10 ms) {}",
        percentile(&latencies, 0.50),
        p99,
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
        if p99 < Duration::from_millis(10) {
            "ok"
        } else {
            "ABOVE TARGET"
        }
    );
}
