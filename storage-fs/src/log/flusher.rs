//! The flusher thread: writes buffered records to segments and makes them durable. All
//! `sync` callers that arrive while one flush runs share the next one (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_core::storage::StorageError;

use super::format::{SEGMENT_HEADER_LEN, encode_segment_header, segment_path};
use super::{SegmentMeta, Shared};
use crate::fsutil::{fsync_dir, io_err, temp_path};

/// The segment being appended to. Owned by the flusher thread.
pub(crate) struct ActiveSegment {
    pub file: File,
    pub path: PathBuf,
    /// Logical end: where the next record goes.
    pub offset: u64,
}

/// Creates a preallocated segment durably: header, length, fsync, rename, directory fsync.
pub(crate) fn create_segment(
    dir: &Path,
    first_index: u64,
    capacity: u64,
) -> Result<ActiveSegment, StorageError> {
    let path = segment_path(dir, first_index);
    let tmp = temp_path(&path);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("create segment", &tmp, e))?;
    file.write_all(&encode_segment_header(first_index))
        .map_err(|e| io_err("write segment header", &tmp, e))?;
    // Logical preallocation: the file is its full size from the start, so appends never
    // change its length (zeroes read back as "no record here").
    file.set_len(capacity.max(SEGMENT_HEADER_LEN as u64))
        .map_err(|e| io_err("preallocate segment", &tmp, e))?;
    file.sync_all()
        .map_err(|e| io_err("fsync segment", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_err("rename segment", &path, e))?;
    fsync_dir(dir)?;
    Ok(ActiveSegment {
        file,
        path,
        offset: SEGMENT_HEADER_LEN as u64,
    })
}

/// One batch taken from the append buffer.
struct Batch {
    bytes: Vec<u8>,
    /// `(index, end offset in bytes)` of each record, in order.
    bounds: Vec<(u64, usize)>,
}

/// Runs until shutdown or the first I/O failure (which poisons the log).
pub(crate) fn run(shared: Arc<Shared>, mut active: ActiveSegment) {
    loop {
        let batch = {
            let mut st = shared.lock();
            loop {
                if st.poisoned.is_some() {
                    return;
                }
                let durable = shared.durable.load(Ordering::Acquire);
                let wanted = st.sync_requested > durable || st.shutdown;
                if !st.pending_bounds.is_empty() && wanted {
                    break;
                }
                if st.shutdown {
                    return;
                }
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            Batch {
                bytes: std::mem::take(&mut st.pending),
                bounds: std::mem::take(&mut st.pending_bounds),
            }
        };
        match write_batch(&shared, &mut active, &batch) {
            Ok(last) => {
                shared.flushes.fetch_add(1, Ordering::AcqRel);
                shared.durable.store(last, Ordering::Release);
                shared.synced.notify(usize::MAX);
            }
            Err(err) => {
                // The page cache state after a failed write or fsync is unknown: stop
                // instead of pretending later syncs cover it.
                tracing::error!(error = %err, "log flush failed; the log is poisoned");
                shared.poison(err.to_string());
                return;
            }
        }
    }
}

fn write_batch(
    shared: &Shared,
    active: &mut ActiveSegment,
    batch: &Batch,
) -> Result<u64, StorageError> {
    let capacity = shared.options.segment_size;
    let mut chunk_start = 0usize;
    let mut prev_end = 0usize;
    let mut last_index = 0;
    for &(index, end) in &batch.bounds {
        let record_len = (end - prev_end) as u64;
        let chunk_len = (prev_end - chunk_start) as u64;
        let used = active.offset + chunk_len;
        if used + record_len > capacity && used > SEGMENT_HEADER_LEN as u64 {
            write_at(active, &batch.bytes[chunk_start..prev_end])?;
            // The old segment is complete: make it durable before the next one exists, so
            // recovery never sees a later segment after a hole.
            active
                .file
                .sync_data()
                .map_err(|e| io_err("fdatasync", &active.path, e))?;
            *active = create_segment(&shared.dir, index, capacity)?;
            shared.lock().segments.push(SegmentMeta {
                first_index: index,
                path: active.path.clone(),
            });
            chunk_start = prev_end;
        }
        prev_end = end;
        last_index = index;
    }
    write_at(active, &batch.bytes[chunk_start..prev_end])?;
    if shared.take_injected_failure() {
        return Err(StorageError::Injected(format!(
            "fdatasync of {}",
            active.path.display()
        )));
    }
    active
        .file
        .sync_data()
        .map_err(|e| io_err("fdatasync", &active.path, e))?;
    Ok(last_index)
}

fn write_at(active: &mut ActiveSegment, bytes: &[u8]) -> Result<(), StorageError> {
    if bytes.is_empty() {
        return Ok(());
    }
    active
        .file
        .write_all_at(bytes, active.offset)
        .map_err(|e| io_err("write", &active.path, e))?;
    active.offset += bytes.len() as u64;
    Ok(())
}
