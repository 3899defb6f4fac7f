//! Log append throughput next to a raw `write` + `fdatasync` loop on the same disk.
//!
//! Run: `cargo bench -p shoal-storage-fs`. Set `SHOAL_BENCH_DIR` to bench another disk
//! (default: a temp dir under `target/`). Targets: 1 proposer >= 0.8x raw; 64 proposers
//! >= 20x the 1-proposer rate.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, LogOptions};

const PAYLOAD: usize = 200;
/// Length of one measurement.
const RUN_FOR: Duration = Duration::from_millis(500);
/// The cases are interleaved this many times, so drift in a shared disk's load hits all.
const ROUNDS: usize = 4;

fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

/// Appends of `PAYLOAD` bytes, each followed by fdatasync, to a plain file; with `prealloc`
/// the file is first sized with `set_len` (as the log's segments are) so the length never
/// changes.
fn raw_rate(dir: &Path, prealloc: bool) -> f64 {
    let path = dir.join("raw.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("open raw file");
    if prealloc {
        file.set_len(64 << 20).expect("preallocate");
    }
    let buf = vec![0x5a; PAYLOAD + 24];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_FOR {
        std::os::unix::fs::FileExt::write_all_at(&file, &buf, n * buf.len() as u64).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `proposers` concurrent tasks, each appending and syncing one entry at a time.
fn log_rate(dir: &Path, proposers: usize) -> (f64, u64) {
    let log_dir = dir.join(format!("log-{proposers}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let log = Arc::new(FsLogStore::open(&log_dir, LogOptions::default()).expect("open log"));
    let payload = vec![0xa5u8; PAYLOAD];
    let start = Instant::now();
    let total: u64 = smol::block_on(async {
        let tasks: Vec<_> = (0..proposers)
            .map(|_| {
                let (log, payload) = (log.clone(), payload.clone());
                smol::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < RUN_FOR {
                        let index = log.append(1, &payload).expect("append");
                        log.sync(index).await.expect("sync");
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await;
        }
        total
    });
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let flushes = log.flush_count();
    drop(log);
    let _ = std::fs::remove_dir_all(&log_dir);
    (rate, flushes)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us too: keep that short.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let root = bench_root();
    std::fs::create_dir_all(&root).expect("bench dir");
    let dir = tempfile::tempdir_in(&root).expect("tempdir");
    println!(
        "log_append: {PAYLOAD}-byte entries, {ROUNDS} interleaved rounds of {RUN_FOR:?} per case, dir {}",
        root.display()
    );
    let (mut raw_append, mut raw_pre, mut one, mut many) = (0.0, 0.0, 0.0, 0.0);
    let (mut one_flushes, mut many_flushes) = (0, 0);
    for _ in 0..ROUNDS {
        raw_append += raw_rate(dir.path(), false) / ROUNDS as f64;
        raw_pre += raw_rate(dir.path(), true) / ROUNDS as f64;
        let (rate, flushes) = log_rate(dir.path(), 1);
        one += rate / ROUNDS as f64;
        one_flushes += flushes;
        let (rate, flushes) = log_rate(dir.path(), 64);
        many += rate / ROUNDS as f64;
        many_flushes += flushes;
    }
    println!("raw write+fdatasync        : {raw_append:>10.0} ops/s (growing file)");
    println!("raw write+fdatasync        : {raw_pre:>10.0} ops/s (preallocated file)");
    println!("log, 1 proposer            : {one:>10.0} appends/s ({one_flushes} flushes)");
    println!("log, 64 proposers          : {many:>10.0} appends/s ({many_flushes} flushes)");
    // Compare against the faster baseline: the honest one.
    let raw = raw_append.max(raw_pre);
    let r1 = one / raw;
    let r64 = many / one;
    println!(
        "ratio 1 proposer / raw     : {r1:>10.2}x (target >= 0.8x) {}",
        if r1 >= 0.8 { "ok" } else { "BELOW TARGET" }
    );
    println!(
        "ratio 64 / 1 proposer      : {r64:>10.2}x (target >= 20x) {}",
        if r64 >= 20.0 { "ok" } else { "BELOW TARGET" }
    );
}
