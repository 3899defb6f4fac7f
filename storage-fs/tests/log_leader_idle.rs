//! A flush leader waiting between flushes sleeps: it burns no CPU while it lingers for the
//! next sync, and the next sync still wakes it at once. Its own test binary (one test), so
//! the process's CPU time is the log's alone.

use std::time::{Duration, Instant};

use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, LogOptions};

/// utime + stime of this process, in seconds (USER_HZ is 100 on Linux).
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

#[test]
fn a_lingering_flush_leader_burns_no_cpu_and_wakes_for_the_next_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = LogOptions {
        flush_linger: Duration::from_secs(30),
        ..LogOptions::default()
    };
    let log = FsLogStore::open(dir.path(), options).expect("open");
    let first = log.append(1, b"first").expect("append");
    smol::block_on(log.sync(first)).expect("sync");
    // The leader now lingers for up to 30 s. A spinning (or yielding) leader would use
    // most of a core over the next second; a blocked one uses none.
    let before = process_cpu_seconds();
    std::thread::sleep(Duration::from_secs(1));
    let used = process_cpu_seconds() - before;
    assert!(
        used < 0.25,
        "the process used {used:.2} CPU-seconds while the leader lingered for 1 s"
    );
    let second = log.append(1, b"second").expect("append");
    let started = Instant::now();
    smol::block_on(log.sync(second)).expect("sync");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the sync must wake the lingering leader, not wait out its window"
    );
    assert_eq!(log.flush_count(), 2);
}
