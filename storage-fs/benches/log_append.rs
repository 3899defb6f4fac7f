//! Log append throughput next to a raw `write` + `fdatasync` loop on the same disk.
//!
//! Run: `cargo bench -p shoal-storage-fs`. Set `SHOAL_BENCH_DIR` to bench another disk
//! (default: a temp dir under `target/`). Targets: 1 proposer >= 0.8x raw; 64 proposers
//! >= 20x the 1-proposer rate.
//!
//! The machine and disk are shared, so one measurement says little: every case runs once per
//! round, rounds are interleaved, and the report is the median over rounds. Ratios are the
//! median of per-round ratios (the cases of one round run back to back, under similar load).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, LogOptions};

const PAYLOAD: usize = 200;
/// Bytes of a log record header, so raw writes are as long as the log's.
const RECORD_HEADER: usize = 24;
/// Length of one measurement.
const RUN_FOR: Duration = Duration::from_millis(400);
/// Rounds of all cases (odd, so the median is one round's value).
const ROUNDS: usize = 7;

fn bench_root() -> PathBuf {
    std::env::var_os("SHOAL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp"))
}

/// Appends of one record's bytes, each followed by fdatasync, to a fresh plain file. With
/// `prealloc` the file is first sized and synced as a log segment is, so its length never
/// changes during the loop.
fn raw_rate(dir: &Path, prealloc: bool) -> f64 {
    let path = dir.join(if prealloc { "raw-pre.bin" } else { "raw.bin" });
    let _ = std::fs::remove_file(&path);
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .expect("open raw file");
    if prealloc {
        file.set_len(64 << 20).expect("preallocate");
        file.sync_all().expect("sync preallocated file");
    }
    let buf = vec![0x5a; PAYLOAD + RECORD_HEADER];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < RUN_FOR {
        std::os::unix::fs::FileExt::write_all_at(&file, &buf, n * buf.len() as u64).expect("write");
        file.sync_data().expect("fdatasync");
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    rate
}

/// How the proposers wait for durability.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// `LogStore::sync` from tasks on smol's executor (the ConfigNode's path).
    Async,
    /// `FsLogStore::sync_blocking` from the bench's own thread.
    Blocking,
}

/// `proposers` concurrent proposers, each appending and syncing one entry at a time.
/// Returns the rate and the number of flushes.
fn log_rate(dir: &Path, proposers: usize, mode: Mode) -> (f64, u64) {
    let log_dir = dir.join(format!("log-{proposers}"));
    let _ = std::fs::remove_dir_all(&log_dir);
    let log = Arc::new(FsLogStore::open(&log_dir, LogOptions::default()).expect("open log"));
    let payload = vec![0xa5u8; PAYLOAD];
    let start = Instant::now();
    let total: u64 = match mode {
        Mode::Blocking => {
            assert_eq!(proposers, 1, "the blocking case has one proposer");
            let mut n = 0u64;
            while start.elapsed() < RUN_FOR {
                let index = log.append(1, &payload).expect("append");
                log.sync_blocking(index).expect("sync");
                n += 1;
            }
            n
        }
        Mode::Async => smol::block_on(async {
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
        }),
    };
    let rate = total as f64 / start.elapsed().as_secs_f64();
    let flushes = log.flush_count();
    drop(log);
    let _ = std::fs::remove_dir_all(&log_dir);
    (rate, flushes)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One round's measurements.
struct Round {
    raw_grow: f64,
    raw_pre: f64,
    one: f64,
    one_flushes: u64,
    one_blocking: f64,
    many: f64,
    many_flushes: u64,
}

impl Round {
    /// The faster raw baseline of this round: the honest one to compare against.
    fn raw(&self) -> f64 {
        self.raw_grow.max(self.raw_pre)
    }
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
    println!(
        "round   raw grow    raw pre   log 1 (async)  log 1 (blocking)  log 64 (flushes)  1/raw  64/1"
    );
    let mut rounds = Vec::with_capacity(ROUNDS);
    for r in 0..ROUNDS {
        let raw_grow = raw_rate(dir.path(), false);
        let raw_pre = raw_rate(dir.path(), true);
        let (one, one_flushes) = log_rate(dir.path(), 1, Mode::Async);
        let (one_blocking, _) = log_rate(dir.path(), 1, Mode::Blocking);
        let (many, many_flushes) = log_rate(dir.path(), 64, Mode::Async);
        let round = Round {
            raw_grow,
            raw_pre,
            one,
            one_flushes,
            one_blocking,
            many,
            many_flushes,
        };
        println!(
            "{r:>5} {raw_grow:>10.0} {raw_pre:>10.0} {one:>10.0} ({one_flushes:>4}) {one_blocking:>12.0} {many:>10.0} ({many_flushes:>4}) {:>6.2} {:>5.1}",
            one / round.raw(),
            many / one
        );
        rounds.push(round);
    }
    let med = |f: &dyn Fn(&Round) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    println!("medians over {ROUNDS} rounds:");
    println!(
        "raw write+fdatasync        : {:>10.0} ops/s (growing file)",
        med(&|r| r.raw_grow)
    );
    println!(
        "raw write+fdatasync        : {:>10.0} ops/s (preallocated file)",
        med(&|r| r.raw_pre)
    );
    println!(
        "log, 1 proposer (async)    : {:>10.0} appends/s ({:.0} flushes/round)",
        med(&|r| r.one),
        med(&|r| r.one_flushes as f64)
    );
    println!(
        "log, 1 proposer (blocking) : {:>10.0} appends/s",
        med(&|r| r.one_blocking)
    );
    println!(
        "log, 64 proposers (async)  : {:>10.0} appends/s ({:.0} flushes/round)",
        med(&|r| r.many),
        med(&|r| r.many_flushes as f64)
    );
    let r1 = med(&|r| r.one / r.raw());
    let r1_blocking = med(&|r| r.one_blocking / r.raw());
    let r64 = med(&|r| r.many / r.one);
    let verdict = |ok: bool| if ok { "ok" } else { "BELOW TARGET" };
    println!(
        "ratio 1 proposer / raw     : {r1:>10.2}x (target >= 0.8x) {}",
        verdict(r1 >= 0.8)
    );
    println!("ratio 1 blocking / raw     : {r1_blocking:>10.2}x (no target; no thread hand-off)");
    println!(
        "ratio 64 / 1 proposer      : {r64:>10.2}x (target >= 20x) {}",
        verdict(r64 >= 20.0)
    );
}
