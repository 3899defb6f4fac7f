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
//!
//! Between flushes the leader blocks on `Shared::leader_wake` (a condition variable), never
//! spins or yields: while lingering for the next sync, and while giving the proposers a flush
//! just woke a moment to come back (commit delay). It records how many sync requests it waits
//! for in `LogState::leader_waits_for`; the `sync` call that reaches that count notifies it,
//! and no other call pays for a wake-up.

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
            let ready = st.ready_waiters();
            // Proposers woken now will likely sync again together: the next batch waits (a
            // little) for them. A lone proposer is never delayed.
            let gather = (pooled && ready.len() > 1).then(|| st.requests + ready.len() as u64);
            let more_needed = st.sync_requested > st.durable && !st.pending_bounds.is_empty();
            drop(st);
            wake(&shared, ready);
            let next = if more_needed {
                // A follower waits for an entry appended during this flush: cover it now, on
                // this thread, rather than wake it only to hand the same work to another.
                if let Some(want) = gather {
                    wait_for_requests(&shared, want, shared.options.commit_delay);
                }
                Some(shared.lock().take_batch())
            } else {
                // Nobody waits now: keep the log briefly for the next sync before giving it
                // back (a lone proposer's next sync then costs no new flush job).
                linger(&shared, pooled, gather)
            };
            match next {
                Some(next) => batch = next,
                None => return hand_back(&shared, segment, pooled),
            }
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

/// Blocks (never spins) until `requests` reaches `want` or `window` has passed.
fn wait_for_requests(shared: &Shared, want: u64, window: std::time::Duration) {
    let deadline = std::time::Instant::now() + window;
    let mut st = shared.lock();
    while st.requests < want {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        st.leader_waits_for = Some(want);
        st = shared.wait_leader_wake(st, left);
    }
    st.leader_waits_for = None;
}

/// Waits up to `flush_linger`, blocked, for a sync request past the durable index and takes
/// its batch; with `gather` (the last flush woke several proposers), first waits up to
/// `commit_delay` for that many requests, so they share the batch.
fn linger(shared: &Shared, pooled: bool, gather: Option<u64>) -> Option<Batch> {
    let window = shared.options.flush_linger;
    if !pooled || window.is_zero() {
        return None;
    }
    let deadline = std::time::Instant::now() + window;
    let mut st = shared.lock();
    loop {
        if st.sync_requested > st.durable && !st.pending_bounds.is_empty() {
            st.leader_waits_for = None;
            if let Some(want) = gather {
                // The first of several woken proposers is back: let the others join.
                drop(st);
                wait_for_requests(shared, want, shared.options.commit_delay);
                return Some(shared.lock().take_batch());
            }
            return Some(st.take_batch());
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            st.leader_waits_for = None;
            return None;
        }
        st.leader_waits_for = Some(st.requests + 1);
        st = shared.wait_leader_wake(st, left);
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
