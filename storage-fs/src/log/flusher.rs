//! Writing buffered records to segments and making them durable, by whichever `sync` caller
//! leads the current flush (leader/follower group commit).
//!
//! There is no flusher thread. A `sync` caller that finds its entry not yet durable and no
//! flush in progress becomes the *leader*: it takes the whole append buffer and the active
//! segment (their absence from the shared state is what "a flush is in progress" means) and
//! runs a [`FlushJob`] — on a `blocking` pool thread from async code, inline from
//! [`super::FsLogStore::sync_blocking`]. Callers that arrive meanwhile are *followers*: they
//! record the index they need in `sync_requested` and wait for the `synced` event. When the
//! job's fdatasync returns it publishes the new durable index; if a follower still needs more,
//! the same job flushes everything buffered since (one more fdatasync for all of them), and
//! only then hands the segment back. So one proposer pays one write + fdatasync per sync, and
//! N concurrent proposers share about one fdatasync per round.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use shoal_core::metrics::{self, MetricEvent, SyncedFile};
use shoal_core::storage::StorageError;

use super::format::{SEGMENT_HEADER_LEN, encode_segment_header, segment_path};
use super::{SegmentMeta, Shared};
use crate::fsutil::{fsync_dir, io_err, temp_path};

/// The segment being appended to. Held by the log's state between flushes and by the flush
/// leader during one.
#[derive(Debug)]
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
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    /// `(index, end offset in bytes)` of each record, in order.
    pub bounds: Vec<(u64, usize)>,
}

/// The leader's work: the taken batch and segment, until no waiter needs more.
///
/// Everything that must happen after the flush (publishing the durable index, handing the
/// segment back, poisoning) happens in [`FlushJob::run`] itself, not in the `sync` future that
/// started it: a caller that drops its future mid-flush must not wedge the log.
#[derive(Debug)]
pub(crate) struct FlushJob {
    pub shared: Arc<Shared>,
    pub segment: ActiveSegment,
    pub batch: Batch,
    /// Whether this job runs on a pool thread of its own (async `sync`), where waiting a
    /// little costs nobody; an inline job (`sync_blocking`) never lingers or delays.
    pub pooled: bool,
}

impl FlushJob {
    /// Writes and fdatasyncs batches until no waiter needs an entry past the durable index;
    /// the first I/O failure poisons the log (and the segment is never handed back).
    pub(crate) fn run(self) {
        let FlushJob {
            shared,
            mut segment,
            mut batch,
            pooled,
        } = self;
        loop {
            #[cfg(any(test, feature = "testing"))]
            shared.pass_flush_gate();
            let outcome = write_batch(&shared, &mut segment, &batch);
            let mut st = shared.lock();
            match outcome {
                Ok(last) => {
                    shared.flushes.fetch_add(1, Ordering::AcqRel);
                    st.durable = last;
                }
                Err(err) => {
                    // The page cache state after a failed write or fsync is unknown: stop
                    // instead of pretending later syncs cover it.
                    tracing::error!(error = %err, "log flush failed; the log is poisoned");
                    st.poisoned = Some(err.to_string());
                    let ready = st.ready_waiters();
                    drop(st);
                    wake(&shared, ready);
                    return;
                }
            }
            // A follower waits for an entry appended during this flush: cover it now, on this
            // thread, rather than wake it only to hand the same work to another thread.
            let ready = st.ready_waiters();
            // Several proposers just woken will likely sync again together: worth a commit
            // delay before the next batch. A lone proposer is never delayed.
            let crowd = ready.len() > 1;
            if st.sync_requested <= st.durable || st.pending_bounds.is_empty() {
                drop(st);
                wake(&shared, ready);
                // Nobody waits now; linger briefly for the next sync before giving the log
                // back (a lone proposer's next sync then costs no thread hand-off).
                match linger(&shared, pooled, crowd) {
                    Some(next) => {
                        batch = next;
                        continue;
                    }
                    None => return hand_back(&shared, segment, pooled),
                }
            }
            drop(st);
            wake(&shared, ready);
            // Followers wait: give the proposers just woken by this flush a moment to append
            // again, so the next fdatasync carries them too (a commit delay, as in classic
            // group commit), then take everything buffered.
            if pooled && crowd {
                pause(shared.options.commit_delay);
            }
            batch = shared.lock().take_batch();
        }
    }
}

/// Wakes the async waiters a flush satisfied, and every blocking waiter (they re-check).
fn wake(shared: &Shared, ready: Vec<std::task::Waker>) {
    for waker in ready {
        waker.wake();
    }
    shared.synced.notify(usize::MAX);
}

/// Yields the thread for `window` (a few microseconds; never sleeps through a timer).
fn pause(window: std::time::Duration) {
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        std::thread::yield_now();
    }
}

/// Waits up to `flush_linger` for a sync request past the durable index; takes its batch
/// (after a commit delay when the last flush woke several proposers).
fn linger(shared: &Shared, pooled: bool, crowd: bool) -> Option<Batch> {
    if !pooled {
        return None;
    }
    let window = shared.options.flush_linger;
    let started = std::time::Instant::now();
    let mut seen = u64::MAX;
    loop {
        let requests = shared.requests.load(Ordering::Acquire);
        if requests == seen {
            if started.elapsed() >= window {
                return None;
            }
            std::thread::yield_now();
            continue;
        }
        seen = requests;
        {
            let mut st = shared.lock();
            if st.sync_requested > st.durable && !st.pending_bounds.is_empty() {
                if crowd {
                    // The first of several woken proposers is back: let the others join.
                    drop(st);
                    pause(shared.options.commit_delay);
                    return Some(shared.lock().take_batch());
                }
                return Some(st.take_batch());
            }
            if started.elapsed() >= window {
                return None;
            }
        }
        std::thread::yield_now();
    }
}

/// Gives the segment back: the next sync caller leads the next flush. A request that slipped
/// in after the last look is flushed here rather than left waiting for a leader. Whoever waits
/// for the segment itself (a truncation) is woken.
pub(super) fn hand_back(shared: &Arc<Shared>, segment: ActiveSegment, pooled: bool) {
    let mut st = shared.lock();
    if st.sync_requested > st.durable && !st.pending_bounds.is_empty() {
        let batch = st.take_batch();
        drop(st);
        return FlushJob {
            shared: shared.clone(),
            segment,
            batch,
            pooled,
        }
        .run();
    }
    st.segment = Some(segment);
    drop(st);
    shared.synced.notify(usize::MAX);
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
    let started = std::time::Instant::now();
    active
        .file
        .sync_data()
        .map_err(|e| io_err("fdatasync", &active.path, e))?;
    metrics::record(MetricEvent::Fsync {
        file: SyncedFile::Log,
        duration: started.elapsed(),
    });
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
