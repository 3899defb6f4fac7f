//! Crash test: a child process (this test binary, re-executed) appends and syncs from many
//! concurrent proposers and is SIGKILLed at random moments, many times. After every kill the
//! log is reopened: every acknowledged entry must be there, whole, and nothing partial.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::runtime::{Rng, SeededRng};
use shoal_core::storage::LogStore;
use shoal_storage_fs::{FsLogStore, LogOptions};

const CHILD_ENV: &str = "SHOAL_LOG_CRASH_CHILD_DIR";
const PROPOSERS: usize = 8;

fn options() -> LogOptions {
    // Small segments so kills also land during segment rolls.
    LogOptions {
        segment_size: 256 << 10,
        ..LogOptions::default()
    }
}

/// The payload of entry `index`: its length varies so records straddle pages and segments.
fn payload(index: u64) -> Vec<u8> {
    let len = 16 + (index.wrapping_mul(2_654_435_761) % 700) as usize;
    (0..len)
        .map(|i| (index as usize).wrapping_add(i).wrapping_mul(31) as u8)
        .collect()
}

fn ack_path(dir: &Path) -> PathBuf {
    dir.join("acks")
}

/// Child side: runs only when re-executed by the parent test.
#[test]
fn crash_child_entry() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let log = Arc::new(FsLogStore::open(dir.join("log"), options()).expect("child open"));
    let acks = Arc::new(std::sync::Mutex::new(
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(ack_path(&dir))
            .expect("open acks"),
    ));
    let appender = Arc::new(std::sync::Mutex::new(()));
    smol::block_on(async {
        let tasks: Vec<_> = (0..PROPOSERS)
            .map(|_| {
                let (log, acks, appender) = (log.clone(), acks.clone(), appender.clone());
                smol::spawn(async move {
                    loop {
                        // The payload depends on the index, so pick both under one lock.
                        let index = {
                            let _one = appender.lock().expect("lock");
                            let next = log.last_index() + 1;
                            let index = log.append(1, &payload(next)).expect("append");
                            assert_eq!(index, next);
                            index
                        };
                        log.sync(index).await.expect("sync");
                        // Acknowledged only after sync returned.
                        let mut f = acks.lock().expect("lock");
                        f.write_all(&index.to_le_bytes()).expect("ack");
                    }
                })
            })
            .collect();
        // The proposers loop until the parent kills this process.
        futures_lite::future::pending::<()>().await;
        drop(tasks);
    });
}

fn max_acked(dir: &Path) -> u64 {
    let bytes = std::fs::read(ack_path(dir)).unwrap_or_default();
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .max()
        .unwrap_or(0)
}

#[test]
fn sigkilled_appender_never_loses_acknowledged_entries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("current exe");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    eprintln!("crash test seed {seed}");
    let rng = SeededRng::new(seed);
    let started = Instant::now();
    let mut kills = 0;
    let mut torn_tails = 0;
    while kills < 60 && started.elapsed() < Duration::from_secs(12) {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        std::thread::sleep(Duration::from_millis(20 + rng.next_u64() % 120));
        child.kill().expect("SIGKILL child");
        let _ = child.wait();
        kills += 1;

        let acked = max_acked(dir.path());
        let log = FsLogStore::open(dir.path().join("log"), options()).expect("reopen after kill");
        if log.recovery_report().torn_tail.is_some() {
            torn_tails += 1;
        }
        assert!(
            log.last_index() >= acked,
            "acknowledged entry {acked} lost: log ends at {} (seed {seed})",
            log.last_index()
        );
        let entries = log.read(1, usize::MAX).expect("read");
        assert_eq!(entries.len() as u64, log.last_index());
        for (entry, index) in entries.iter().zip(1..) {
            assert_eq!(entry.index, index);
            assert_eq!(entry.payload, payload(index), "entry {index} is not whole");
        }
    }
    let acked = max_acked(dir.path());
    eprintln!("{kills} kills, {acked} entries acknowledged, {torn_tails} torn tails repaired");
    assert!(kills >= 10, "too few kill rounds ran");
    assert!(acked > 0, "the child never acknowledged anything");
}
