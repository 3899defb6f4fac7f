//! Opening a log directory: validate every segment, truncate a torn tail, refuse damage.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Arc;

use shoal_core::storage::StorageError;

use super::flusher::{ActiveSegment, create_segment};
use super::format::{parse_segment_name, scan_segment};
use super::{LogOptions, SegmentMeta};
use crate::fsutil::{create_dir_durable, fsync_dir, io_err};

/// A torn tail found (and cut off) when the log was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment file.
    pub file: String,
    /// Offset of the first discarded byte (the new logical end).
    pub offset: u64,
    /// Bytes discarded (up to the last non-zero byte).
    pub discarded_bytes: u64,
    /// What made the tail unreadable.
    pub reason: String,
}

/// What opening the log found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use.
    pub segments: usize,
    /// First retained index.
    pub first_index: u64,
    /// Last recovered index (0 when empty).
    pub last_index: u64,
    /// The current term after recovery.
    pub term: u64,
    /// The torn tail that was truncated, if any.
    pub torn_tail: Option<TornTail>,
    /// Leftover temp files (interrupted segment creation or term update) that were removed.
    pub removed_temp_files: Vec<String>,
}

pub(super) struct Recovered {
    pub first_index: u64,
    pub entries: VecDeque<(u64, Arc<[u8]>)>,
    pub segments: Vec<SegmentMeta>,
    pub active: ActiveSegment,
    pub report: RecoveryReport,
}

/// Opens the log in `dir`: removes leftover temp files, validates every segment in order,
/// truncates a torn tail of the newest one, and refuses any other damage.
pub(super) fn recover(dir: &Path, options: &LogOptions) -> Result<Recovered, StorageError> {
    create_dir_durable(dir)?;
    let mut report = RecoveryReport::default();
    let segments = list_segments(dir, &mut report)?;
    if segments.is_empty() {
        return fresh_log(dir, options, report);
    }
    let first_index = segments[0].first_index;
    let loaded = load_segments(&segments, &mut report)?;
    let last = segments.last().map(|s| s.path.clone()).unwrap_or_default();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&last)
        .map_err(|e| io_err("open segment", &last, e))?;
    report.segments = segments.len();
    report.first_index = first_index;
    report.last_index = loaded.next_index - 1;
    Ok(Recovered {
        first_index,
        entries: loaded.entries,
        segments,
        active: ActiveSegment {
            file,
            path: last,
            offset: loaded.active_end,
        },
        report,
    })
}

/// The segment files of `dir`, oldest first; leftover temp files are removed (and noted).
fn list_segments(
    dir: &Path,
    report: &mut RecoveryReport,
) -> Result<Vec<SegmentMeta>, StorageError> {
    let mut segments = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| io_err("list log dir", dir, e))?;
    for entry in listing {
        let entry = entry.map_err(|e| io_err("list log dir", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".tmp") {
            std::fs::remove_file(entry.path()).map_err(|e| io_err("remove", &entry.path(), e))?;
            report.removed_temp_files.push(name);
        } else if let Some(first_index) = parse_segment_name(&name) {
            segments.push(SegmentMeta {
                first_index,
                path: entry.path(),
            });
        }
    }
    if !report.removed_temp_files.is_empty() {
        fsync_dir(dir)?;
    }
    segments.sort_by_key(|s| s.first_index);
    Ok(segments)
}

/// An empty log: one new segment starting at index 1.
fn fresh_log(
    dir: &Path,
    options: &LogOptions,
    mut report: RecoveryReport,
) -> Result<Recovered, StorageError> {
    let active = create_segment(dir, 1, options.segment_size)?;
    let segments = vec![SegmentMeta {
        first_index: 1,
        path: active.path.clone(),
    }];
    report.segments = 1;
    report.first_index = 1;
    Ok(Recovered {
        first_index: 1,
        entries: VecDeque::new(),
        segments,
        active,
        report,
    })
}

/// What the segments hold.
struct Loaded {
    entries: VecDeque<(u64, Arc<[u8]>)>,
    /// The index after the last entry.
    next_index: u64,
    /// The newest segment's logical end.
    active_end: u64,
}

/// Reads and validates every segment: they must chain (each starts where the previous one
/// ended) and terms never decrease; damage anywhere but the newest segment's tail, or damage
/// followed by a whole record, is `Corrupt`; a torn tail is zeroed and reported.
fn load_segments(
    segments: &[SegmentMeta],
    report: &mut RecoveryReport,
) -> Result<Loaded, StorageError> {
    let mut loaded = Loaded {
        entries: VecDeque::new(),
        next_index: segments[0].first_index,
        active_end: 0,
    };
    let mut prev_term = 0;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let file = seg.path.display().to_string();
        let bytes = std::fs::read(&seg.path).map_err(|e| io_err("read segment", &seg.path, e))?;
        let scan = scan_segment(&seg.path, &bytes, prev_term)?;
        let expected = loaded.next_index;
        if scan.first_index != seg.first_index || scan.first_index != expected {
            return Err(StorageError::Corrupt {
                file,
                offset: 16,
                reason: format!(
                    "segment starts at index {} where {expected} was expected (name says {})",
                    scan.first_index, seg.first_index
                ),
            });
        }
        if let Some(damage) = &scan.damage {
            // Only the newest segment can have a torn tail: older ones were fsynced whole
            // before the next one was created.
            if !is_last || damage.followed_by_valid_record {
                return Err(StorageError::Corrupt {
                    file,
                    offset: damage.offset,
                    reason: damage.reason.clone(),
                });
            }
        }
        loaded.next_index += scan.entries.len() as u64;
        if let Some(last) = scan.entries.last() {
            prev_term = last.term;
        }
        loaded.entries.extend(
            scan.entries
                .into_iter()
                .map(|e| (e.term, Arc::<[u8]>::from(e.payload))),
        );
        if is_last {
            loaded.active_end = scan.end_offset;
            if let Some(damage) = scan.damage {
                let torn = TornTail {
                    file,
                    offset: damage.offset,
                    discarded_bytes: damage.garbage_len,
                    reason: damage.reason,
                };
                tracing::warn!(
                    file = %torn.file,
                    offset = torn.offset,
                    discarded_bytes = torn.discarded_bytes,
                    reason = %torn.reason,
                    "log recovery truncated a torn tail"
                );
                zero_tail(&seg.path, damage.offset, bytes.len() as u64)?;
                report.torn_tail = Some(torn);
            }
        }
    }
    Ok(loaded)
}

/// Replaces everything from `offset` with zeroes (truncate, then extend back to the
/// preallocated length) and makes it durable, so stale bytes can never be mistaken for
/// records written later at the same place.
pub(super) fn zero_tail(path: &Path, offset: u64, len: u64) -> Result<(), StorageError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_err("open segment", path, e))?;
    file.set_len(offset)
        .map_err(|e| io_err("truncate torn tail", path, e))?;
    file.set_len(len.max(offset))
        .map_err(|e| io_err("re-extend segment", path, e))?;
    file.sync_all()
        .map_err(|e| io_err("fsync segment", path, e))
}
