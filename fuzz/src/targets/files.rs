//! Files as nodes open them after a crash: the task journal, consensus-log segments
//! (recovery), and the snapshot directory. Each input is written as the file, then opened
//! and read through storage-fs exactly as a restarting node does.

use std::path::{Path, PathBuf};

use shoal_core::datanode::journal::{JournalRecord, OutcomeCode};
use shoal_core::model::{Epoch, TaskId};
use shoal_core::storage::{LogStore, SnapshotStore, TaskJournal};
use shoal_storage_fs::{FsLogStore, FsSnapshotStore, FsTaskJournal, LogOptions};
use shoal_tests::fixtures;

use crate::Target;

/// Small segments, so a whole segment file is a reasonable input.
fn log_options() -> LogOptions {
    LogOptions {
        segment_size: 4096,
        flush_linger: std::time::Duration::ZERO,
        commit_delay: std::time::Duration::ZERO,
    }
}

fn scratch(name: &str) -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix(&format!("shoal-fuzz-{name}-"))
        .tempdir()
        .map_err(|e| format!("cannot make a scratch dir: {e}"))
}

/// Empties `dir` (everything in it was made by this target).
fn reset(dir: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("scratch dir: {e}"))
}

/// A journal written by storage-fs with one record of each kind.
fn journal_seed(dir: &Path) -> Option<Vec<u8>> {
    let path = dir.join("seed.journal");
    let journal = FsTaskJournal::open(&path).ok()?;
    let records = [
        JournalRecord::EpochSeen { epoch: Epoch(3) },
        JournalRecord::TaskFinished {
            task_id: TaskId(9),
            outcome: OutcomeCode::Success,
            reason: None,
            duration_ms: 12,
        },
        JournalRecord::EpochSeen { epoch: Epoch(4) },
    ];
    smol::block_on(async {
        for record in &records {
            journal.append(record.encode()).await.ok()?;
        }
        Some(())
    })?;
    drop(journal);
    std::fs::read(&path).ok()
}

/// The task journal file: `FsTaskJournal::open` (torn-tail scan), `load`, and every record
/// through `JournalRecord::decode`.
pub fn journal_file() -> Target {
    let dir = scratch("journal");
    let seeds = dir
        .as_ref()
        .ok()
        .and_then(|d| journal_seed(d.path()))
        .into_iter()
        .collect();
    Target {
        name: "journal_file",
        seeds,
        run: Box::new(move |bytes| {
            let dir = dir.as_ref().map_err(Clone::clone)?;
            let work = dir.path().join("case");
            reset(&work)?;
            let path = work.join("tasks.journal");
            std::fs::write(&path, bytes).map_err(|e| format!("write: {e}"))?;
            if let Ok(journal) = FsTaskJournal::open(&path) {
                if let Ok(records) = smol::block_on(journal.load()) {
                    for record in records {
                        let _ = JournalRecord::decode(&record);
                    }
                }
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// A log written by storage-fs: a few plans in small segments; returns each segment.
fn log_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let log_dir = dir.join("seed-log");
    let Ok(log) = FsLogStore::open(&log_dir, log_options()) else {
        return Vec::new();
    };
    let plans: Vec<Vec<u8>> = fixtures::legacy_log()
        .iter()
        .filter_map(|p| p.encode().ok())
        .collect();
    let written = smol::block_on(async {
        log.claim_term(1).await.ok()?;
        let mut last = 0;
        for plan in &plans {
            last = log.append(1, plan).ok()?;
        }
        log.sync(last).await.ok()
    });
    drop(log);
    if written.is_none() {
        return Vec::new();
    }
    segments(&log_dir)
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "seg"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Consensus-log recovery: the input is the first segment (`...0001.seg`); opening scans,
/// checks and truncates it, then every entry is read back.
pub fn log_recovery() -> Target {
    let dir = scratch("log");
    let seeds = dir
        .as_ref()
        .map(|d| log_seeds(d.path()))
        .unwrap_or_default();
    Target {
        name: "log_recovery",
        seeds,
        run: Box::new(move |bytes| {
            let dir = dir.as_ref().map_err(Clone::clone)?;
            let work = dir.path().join("case");
            reset(&work)?;
            let segment = work.join(format!("{:020}.seg", 1));
            std::fs::write(&segment, bytes).map_err(|e| format!("write: {e}"))?;
            if let Ok(log) = FsLogStore::open(&work, log_options()) {
                let (first, last) = (log.first_index(), log.last_index());
                let mut next = first;
                while next <= last {
                    match log.read(next, 64) {
                        Ok(entries) if !entries.is_empty() => next += entries.len() as u64,
                        _ => break,
                    }
                }
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}

/// The snapshot directory: the input is `snap-...0009.bin`, loaded (with its fallback) and
/// decoded as the ConfigNode does at start.
pub fn snapshot_file() -> Target {
    let dir = scratch("snapshots");
    let seeds: Vec<Vec<u8>> = dir
        .as_ref()
        .ok()
        .and_then(|d| {
            let store = FsSnapshotStore::open(d.path().join("seed"), 2).ok()?;
            let bytes = shoal_core::snapshot::encode(&fixtures::snapshot_v3()).ok()?;
            smol::block_on(store.save(9, bytes)).ok()?;
            let path = d.path().join("seed").join(format!("snap-{:020}.bin", 9));
            std::fs::read(path).ok()
        })
        .into_iter()
        .collect();
    Target {
        name: "snapshot_file",
        seeds,
        run: Box::new(move |bytes| {
            let dir = dir.as_ref().map_err(Clone::clone)?;
            let work = dir.path().join("case");
            reset(&work)?;
            std::fs::write(work.join(format!("snap-{:020}.bin", 9)), bytes)
                .map_err(|e| format!("write: {e}"))?;
            if let Ok(store) = FsSnapshotStore::open(&work, 2) {
                if let Ok(Some(bytes)) = smol::block_on(store.load_latest()) {
                    let _ = shoal_core::snapshot::decode(&bytes);
                }
            }
            Ok(())
        }),
        counters: Vec::new(),
    }
}
