//! Durable procedure steps per second, for 1 procedure and for 1,000 concurrent procedures,
//! on the file log (`FsLogStore`) side by side with a raw `write` + `fdatasync` loop on the
//! same disk, and on the in-memory log. Every step is one committed `UpdateProcedure` (CBOR
//! encode, log append, sync, apply).
//!
//! Run: `cargo bench -p shoal-core --features testing --bench procedure_steps`.
//! `SHOAL_BENCH_DIR` picks the disk (default: a temp dir under `target/`),
//! `SHOAL_BENCH_ROUNDS` the number of interleaved rounds (default 5), `SHOAL_BENCH_WORKERS`
//! the executor's workers (default: the executor's default, 8); `SHOAL_BENCH_COMMIT_DELAY_US`
//! and `SHOAL_BENCH_FLUSH_LINGER_US` the file log's group-commit settings (default: the
//! log's defaults).
//!
//! Targets (issue 17): 1 procedure >= 0.8x raw; 1,000 procedures >= 20x the 1-procedure rate.
//! The machine is shared and noisy: each round runs raw, 1 procedure and 1,000 procedures back
//! to back, and ratios are the median of per-round ratios.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::consensus::LocalConsensus;
use shoal_core::procedure::examples::{CounterProcedure, ExampleWorld, example_registry};
use shoal_core::procedure::{ExecutorConfig, ProcedureExecutor, ProcedureView, RetentionPolicy};
use shoal_core::runtime::{BoxFuture, ManualClock, Runtime, SeededRng, Spawner};
use shoal_core::storage::LogStore;
use shoal_core::storage::mem::{MemLogStore, MemSnapshotStore};
use shoal_storage_fs::{FsLogStore, LogOptions};

/// Bytes of one raw write: about one `UpdateProcedure` record of the counter procedure.
const RAW_RECORD: usize = 160;
/// Length of one raw measurement.
const RAW_FOR: Duration = Duration::from_millis(400);

struct ExSpawner(Arc<smol::Executor<'static>>);

impl Spawner for ExSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

/// Which log the consensus runs on.
#[derive(Clone, Copy)]
enum Log<'a> {
    Mem,
    File(&'a Path),
}

/// One measurement.
struct Run {
    steps_per_s: f64,
    /// Log entries appended per completed flush (fdatasync); 0 for the in-memory log.
    entries_per_sync: f64,
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn workers() -> usize {
    env_usize("SHOAL_BENCH_WORKERS").unwrap_or(ExecutorConfig::default().workers)
}

/// The file log's options: the defaults, or `SHOAL_BENCH_COMMIT_DELAY_US` and
/// `SHOAL_BENCH_FLUSH_LINGER_US` to try other group-commit settings.
fn log_options() -> LogOptions {
    let mut options = LogOptions::default();
    if let Some(us) = env_usize("SHOAL_BENCH_COMMIT_DELAY_US") {
        options.commit_delay = Duration::from_micros(us as u64);
    }
    if let Some(us) = env_usize("SHOAL_BENCH_FLUSH_LINGER_US") {
        options.flush_linger = Duration::from_micros(us as u64);
    }
    options
}

#[allow(clippy::disallowed_methods, reason = "a benchmark measures wall time")]
fn now() -> Instant {
    Instant::now()
}

/// Runs `procedures` counter procedures of `steps` steps each, all submitted at once, and
/// returns the durable step rate (submissions included: each is one commit too).
fn measure(log: Log<'_>, procedures: usize, steps: u32) -> Run {
    let ex = Arc::new(smol::Executor::new());
    let runtime = Runtime {
        clock: Arc::new(ManualClock::new()),
        spawner: Arc::new(ExSpawner(ex.clone())),
        rng: Arc::new(SeededRng::new(1)),
    };
    let (store, fs): (Arc<dyn LogStore>, Option<Arc<FsLogStore>>) = match log {
        Log::Mem => (Arc::new(MemLogStore::new()), None),
        Log::File(dir) => {
            let _ = std::fs::remove_dir_all(dir);
            let fs = Arc::new(FsLogStore::open(dir, log_options()).expect("open log"));
            (fs.clone(), Some(fs))
        }
    };
    let run = smol::block_on(ex.clone().run(async move {
        let consensus = Arc::new(LocalConsensus::new(
            store.clone(),
            Arc::new(MemSnapshotStore::new()),
        ));
        consensus.campaign().await.expect("campaign");
        let registry = Arc::new(example_registry().expect("registry"));
        let config = ExecutorConfig {
            workers: workers(),
            retention: RetentionPolicy {
                max_finished: procedures + 1,
                check_every: None,
                ..RetentionPolicy::default()
            },
            ..ExecutorConfig::default()
        };
        let executor = Arc::new(ProcedureExecutor::new(
            consensus,
            registry,
            runtime,
            Arc::new(ExampleWorld::new()),
            config,
        ));
        executor.start();
        executor.wait_running().await;
        let first_entry = store.last_index();
        let first_flush = fs.as_ref().map_or(0, |fs| fs.flush_count());
        let started = now();
        // Every client submits at once (as many admin requests would): submissions are
        // commits too, and they share flushes with the steps of procedures already running.
        let clients: Vec<_> = (0..procedures)
            .map(|i| {
                let executor = executor.clone();
                ex.spawn(async move {
                    let p = CounterProcedure::new(&format!("bench{i}"), steps);
                    let id = executor.submit(Box::new(p), None).await.expect("submit");
                    let info = executor.wait_finished(id).await.expect("finished");
                    assert_eq!(info.status, ProcedureView::Succeeded);
                })
            })
            .collect();
        for client in clients {
            client.await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let entries = store.last_index() - first_entry;
        let flushes = fs.as_ref().map_or(0, |fs| fs.flush_count()) - first_flush;
        executor.shutdown().await;
        // Each procedure commits `steps` counted steps plus its final Done.
        Run {
            steps_per_s: (procedures as f64 * f64::from(steps + 1)) / elapsed,
            entries_per_sync: if flushes == 0 {
                0.0
            } else {
                entries as f64 / flushes as f64
            },
        }
    }));
    if let Log::File(dir) = log {
        let _ = std::fs::remove_dir_all(dir);
    }
    run
}

/// Writes of one record's bytes to a preallocated file (as a log segment is), each followed
/// by fdatasync: the floor a durable step cannot beat on this disk.
fn raw_rate(dir: &Path) -> f64 {
    let path = dir.join("raw.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("open raw file");
    file.set_len(64 << 20).expect("preallocate");
    file.sync_all().expect("sync preallocated file");
    let buf = vec![0x5a; RAW_RECORD];
    let start = now();
    let mut n = 0u64;
    while start.elapsed() < RAW_FOR {
        std::os::unix::fs::FileExt::write_all_at(&file, &buf, n * buf.len() as u64).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    rate
}

fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo test --benches` runs us too: keep that short.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let rounds = env_usize("SHOAL_BENCH_ROUNDS").unwrap_or(5).max(1);
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("bench dir");
    let tmp = tempfile::tempdir_in(&root).expect("tempdir");
    let log_dir = tmp.path().join("log");
    let options = log_options();
    println!(
        "procedure_steps: {} workers, commit delay {:?}, flush linger {:?}, {rounds} interleaved rounds, dir {}",
        workers(),
        options.commit_delay,
        options.flush_linger,
        root.display()
    );
    println!(
        "round  raw fdatasync/s   file 1 proc (entries/sync)   file 1,000 procs (entries/sync)   1/raw  1000/1"
    );
    let mut rows = Vec::new();
    for r in 0..rounds {
        let raw = raw_rate(tmp.path());
        let one = measure(Log::File(&log_dir), 1, 2_000);
        let many = measure(Log::File(&log_dir), 1_000, 20);
        println!(
            "{r:>5} {raw:>16.0} {:>14.0} ({:>5.1}) {:>22.0} ({:>6.1}) {:>12.2} {:>7.1}",
            one.steps_per_s,
            one.entries_per_sync,
            many.steps_per_s,
            many.entries_per_sync,
            one.steps_per_s / raw,
            many.steps_per_s / one.steps_per_s
        );
        rows.push((raw, one, many));
    }
    let mem_one = measure(Log::Mem, 1, 20_000);
    let mem_many = measure(Log::Mem, 1_000, 50);
    println!("medians over {rounds} rounds:");
    println!(
        "raw write+fdatasync               : {:>10.0} /s",
        median(rows.iter().map(|r| r.0))
    );
    println!(
        "file log, 1 procedure             : {:>10.0} steps/s ({:.1} entries per fdatasync)",
        median(rows.iter().map(|r| r.1.steps_per_s)),
        median(rows.iter().map(|r| r.1.entries_per_sync))
    );
    println!(
        "file log, 1,000 procedures        : {:>10.0} steps/s ({:.1} entries per fdatasync)",
        median(rows.iter().map(|r| r.2.steps_per_s)),
        median(rows.iter().map(|r| r.2.entries_per_sync))
    );
    println!(
        "memory log, 1 procedure           : {:>10.0} steps/s (one run)",
        mem_one.steps_per_s
    );
    println!(
        "memory log, 1,000 procedures      : {:>10.0} steps/s (one run)",
        mem_many.steps_per_s
    );
    let verdict = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    let r1 = median(rows.iter().map(|r| r.1.steps_per_s / r.0));
    let r1000 = median(rows.iter().map(|r| r.2.steps_per_s / r.1.steps_per_s));
    println!(
        "ratio file 1 procedure / raw      : {r1:>10.2}x (target >= 0.8x) {}",
        verdict(r1 >= 0.8)
    );
    println!(
        "ratio file 1,000 / 1 procedure    : {r1000:>10.1}x (target >= 20x) {}",
        verdict(r1000 >= 20.0)
    );
}
