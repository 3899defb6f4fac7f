//! [`FsLogStore`]: the ConfigNode's consensus log on disk.
//!
//! `append` only encodes the record into an in-memory buffer (and the read cache) and assigns
//! its index. `sync` makes it durable by leader/follower group commit (see [`flusher`]): the
//! first caller that finds no flush in progress writes the whole buffer and `fdatasync`s it
//! (on a blocking thread), callers that arrive meanwhile are covered by the next flush, so one
//! proposer pays one write + fdatasync per entry and N concurrent proposers share about one
//! fdatasync per round. No `sync` returns before an fdatasync that covers its entry returned.
//! A failed write or fsync poisons the log: every later call fails with
//! [`StorageError::Unavailable`] and the node must reopen (and so recover) the log.

mod flusher;
pub(crate) mod format;
mod recovery;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use async_trait::async_trait;
use event_listener::{Event, EventListener, Listener};
use shoal_core::storage::{LogEntry, LogStore, StorageError};

use crate::fsutil::{atomic_write, fsync_dir, io_err, unblock};
use flusher::{ActiveSegment, Batch, FlushJob};
pub use recovery::{RecoveryReport, TornTail};

/// Tuning of an [`FsLogStore`].
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Bytes preallocated per segment; a segment holds records until the next would not fit.
    pub segment_size: u64,
    /// After a flush that left nobody waiting, the flush leader keeps the log this long,
    /// blocked until the next `sync` notifies it, before handing it back. A proposer that
    /// syncs again within the window is flushed by the same thread without a new flush job.
    /// Zero disables it.
    pub flush_linger: std::time::Duration,
    /// When a flush woke several proposers, the leader waits (blocked) at most this long for
    /// as many new syncs before taking the next batch, so they share the next fdatasync.
    /// Trades at most this much latency for larger batches under load; it ends as soon as
    /// they are all back. Zero disables it.
    pub commit_delay: std::time::Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_size: 64 << 20,
            flush_linger: std::time::Duration::from_micros(100),
            commit_delay: std::time::Duration::from_micros(50),
        }
    }
}

/// A closed or active segment, oldest first.
#[derive(Debug, Clone)]
pub(crate) struct SegmentMeta {
    pub first_index: u64,
    pub path: PathBuf,
}

/// State shared by appenders, `sync` callers and the flush leader.
#[derive(Debug)]
pub(crate) struct LogState {
    term: u64,
    /// The highest term claimed through [`LogStore::claim_term`] (the term file). `term` is
    /// this or the last entry's term; truncation falls back to it.
    claimed: u64,
    first_index: u64,
    /// Every retained entry, from `first_index` (the read cache; bounded by compaction).
    entries: VecDeque<(u64, Arc<[u8]>)>,
    /// Encoded records not yet taken by a flush leader.
    pub pending: Vec<u8>,
    /// `(index, end offset in pending)` per buffered record.
    pub pending_bounds: Vec<(u64, usize)>,
    /// Highest index some `sync` caller waits for.
    pub sync_requested: u64,
    /// Sync requests registered so far (a counter the flush leader waits on).
    pub requests: u64,
    /// Set while the flush leader is blocked on [`Shared::leader_wake`]: it wants to be
    /// woken once `requests` reaches this. A `sync` caller notifies only then, so a flush
    /// leader that is busy (or absent) costs callers no wake-up call.
    pub leader_waits_for: Option<u64>,
    /// Async `sync` callers waiting, with the index each needs: a flush wakes exactly those
    /// it covered (waking all would make every later waiter re-register, per flush).
    pub waiters: Vec<(u64, std::task::Waker)>,
    /// Highest index known durable: an fdatasync covering it has returned.
    pub durable: u64,
    /// The segment being appended to; `None` while a flush leader holds it, so `None` (on an
    /// unpoisoned log) means "a flush is in progress".
    pub segment: Option<ActiveSegment>,
    pub poisoned: Option<String>,
    pub segments: Vec<SegmentMeta>,
}

impl LogState {
    fn last_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64 - 1
    }

    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(reason) => Err(StorageError::Unavailable(format!(
                "log poisoned by an earlier failure: {reason}"
            ))),
            None => Ok(()),
        }
    }

    /// Removes the async waiters a flush has satisfied (every one once poisoned).
    pub(crate) fn ready_waiters(&mut self) -> Vec<std::task::Waker> {
        let durable = self.durable;
        let all = self.poisoned.is_some();
        let mut ready = Vec::new();
        self.waiters.retain(|(index, waker)| {
            let done = all || *index <= durable;
            if done {
                ready.push(waker.clone());
            }
            !done
        });
        ready
    }

    /// Counts one sync request; says whether the waiting flush leader must be woken for it.
    pub(crate) fn note_request(&mut self) -> bool {
        self.requests += 1;
        match self.leader_waits_for {
            Some(want) if self.requests >= want => {
                self.leader_waits_for = None;
                true
            }
            _ => false,
        }
    }

    /// Takes everything buffered for one flush.
    pub(crate) fn take_batch(&mut self) -> Batch {
        Batch {
            bytes: std::mem::take(&mut self.pending),
            bounds: std::mem::take(&mut self.pending_bounds),
        }
    }
}

/// What a `sync` caller does next.
enum SyncStep {
    /// Its entry is durable.
    Done,
    /// It must wait for the `synced` event (registered before the state was checked, so no
    /// notification is missed) and check again; with a job, it leads that flush first.
    Wait(EventListener, Option<FlushJob>),
}

/// Everything the store and a flush leader (possibly on a blocking thread) share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub options: LogOptions,
    state: Mutex<LogState>,
    /// Where a flush leader between flushes blocks (lingering for the next sync, or giving
    /// proposers it just woke a moment to join the next batch); see
    /// [`LogState::leader_waits_for`]. Never a spin: the leader sleeps until notified or
    /// its window ends.
    pub leader_wake: Condvar,
    /// Notified after every flush and on poisoning.
    pub synced: Event,
    /// Test hook: the next flush fails as if fdatasync had failed.
    fail_next_flush: AtomicBool,
    /// Test hook: while set, each flush waits for one message before writing.
    #[cfg(any(test, feature = "testing"))]
    flush_gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    /// Completed flush rounds (one fdatasync each, plus one per segment roll).
    pub flushes: AtomicU64,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        // The state is plain data; a panic elsewhere does not make it unreadable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Blocks the flush leader on [`Shared::leader_wake`] for at most `timeout`.
    pub(crate) fn wait_leader_wake<'a>(
        &self,
        guard: MutexGuard<'a, LogState>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, LogState> {
        match self.leader_wake.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }

    pub(crate) fn take_injected_failure(&self) -> bool {
        self.fail_next_flush.swap(false, Ordering::AcqRel)
    }

    /// Test hook: blocks the flush leader until the test lets this flush through.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn pass_flush_gate(&self) {
        let gate = self.flush_gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = gate.as_ref() {
            // A closed gate (sender dropped) lets every flush through.
            let _ = rx.recv();
        }
    }

    /// One step of a `sync(index)` caller; see [`SyncStep`]. Becomes the flush leader when
    /// the entry is not durable and no flush is in progress.
    fn sync_step(self: &Arc<Self>, index: u64, pooled: bool) -> Result<SyncStep, StorageError> {
        let mut st = self.lock();
        // Durable before a later failure stays durable: answer that before the poison check.
        if st.durable >= index {
            return Ok(SyncStep::Done);
        }
        st.check_usable()?;
        // Nothing past the last appended entry can become durable; don't wait for it.
        let target = index.min(st.last_index());
        if st.durable >= target {
            return Ok(SyncStep::Done);
        }
        st.sync_requested = st.sync_requested.max(target);
        if st.note_request() {
            self.leader_wake.notify_one();
        }
        let listener = self.synced.listen();
        // No flush in progress: lead one. Every entry past `durable` is buffered when no flush
        // runs, so the batch holds `target`.
        let job = st.segment.take().map(|segment| FlushJob {
            shared: self.clone(),
            segment,
            batch: st.take_batch(),
            pooled,
        });
        Ok(SyncStep::Wait(listener, job))
    }
}

const TERM_FILE: &str = "term";
const TERM_MAGIC: &[u8; 8] = b"SHOALTRM";

/// The file-backed consensus log. Open with [`FsLogStore::open`]; dropping it waits for a
/// running flush and writes and syncs what is still buffered (blocking).
#[derive(Debug)]
pub struct FsLogStore {
    shared: Arc<Shared>,
    claim_lock: async_lock::Mutex<()>,
    report: RecoveryReport,
}

impl FsLogStore {
    /// Opens (or creates) the log in `dir`, recovering it: a torn tail is truncated and
    /// reported; damage anywhere else fails with [`StorageError::Corrupt`]. Blocking.
    pub fn open(dir: impl AsRef<Path>, options: LogOptions) -> Result<Self, StorageError> {
        let dir = dir.as_ref().to_path_buf();
        let recovered = recovery::recover(&dir, &options)?;
        let term_path = dir.join(TERM_FILE);
        let stored_term = match crate::fsutil::read_optional(&term_path)? {
            Some(bytes) => {
                let body = crate::fsutil::unframe_blob(TERM_MAGIC, &bytes, &term_path)?;
                let arr: [u8; 8] = body.try_into().map_err(|_| StorageError::Corrupt {
                    file: term_path.display().to_string(),
                    offset: 16,
                    reason: "term body is not 8 bytes".into(),
                })?;
                u64::from_le_bytes(arr)
            }
            None => 0,
        };
        let last_term = recovered.entries.back().map_or(0, |(t, _)| *t);
        let mut report = recovered.report;
        let last_index = recovered.first_index + recovered.entries.len() as u64 - 1;
        report.term = stored_term.max(last_term);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            options,
            state: Mutex::new(LogState {
                term: stored_term.max(last_term),
                claimed: stored_term,
                first_index: recovered.first_index,
                entries: recovered.entries,
                pending: Vec::new(),
                pending_bounds: Vec::new(),
                sync_requested: 0,
                requests: 0,
                leader_waits_for: None,
                waiters: Vec::new(),
                durable: last_index,
                segment: Some(recovered.active),
                poisoned: None,
                segments: recovered.segments,
            }),
            synced: Event::new(),
            leader_wake: Condvar::new(),
            fail_next_flush: AtomicBool::new(false),
            #[cfg(any(test, feature = "testing"))]
            flush_gate: Mutex::new(None),
            flushes: AtomicU64::new(0),
        });
        Ok(Self {
            shared,
            claim_lock: async_lock::Mutex::new(()),
            report,
        })
    }

    /// What recovery found and repaired when this log was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Completed flush rounds so far. With group commit this grows far slower than the
    /// number of synced appends under concurrency (a metric, and what tests check).
    pub fn flush_count(&self) -> u64 {
        self.shared.flushes.load(Ordering::Acquire)
    }

    /// Test hook: the next flush fails as if `fdatasync` had returned an error.
    #[cfg(any(test, feature = "testing"))]
    pub fn inject_flush_failure(&self) {
        self.shared.fail_next_flush.store(true, Ordering::Release);
    }

    /// Test hook: from now on every flush waits, before writing, for one message on the
    /// returned sender; dropping the sender lets all flushes through again.
    #[cfg(any(test, feature = "testing"))]
    pub fn gate_flushes(&self) -> std::sync::mpsc::Sender<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        *self
            .shared
            .flush_gate
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(rx);
        tx
    }

    /// [`LogStore::sync`] for a caller on a thread that may block (never an async executor
    /// thread): the same group commit, but a leader writes and fdatasyncs on this thread, so
    /// a lone proposer pays no thread hand-off at all.
    pub fn sync_blocking(&self, index: u64) -> Result<(), StorageError> {
        loop {
            match self.shared.sync_step(index, false)? {
                SyncStep::Done => return Ok(()),
                SyncStep::Wait(listener, job) => {
                    if let Some(job) = job {
                        job.run();
                    }
                    listener.wait();
                }
            }
        }
    }

    fn fenced_if_stale(st: &LogState, term: u64) -> Result<(), StorageError> {
        if term < st.term {
            return Err(StorageError::Fenced {
                term,
                current: st.term,
            });
        }
        Ok(())
    }
}

impl Drop for FsLogStore {
    fn drop(&mut self) {
        let last = self.shared.lock().last_index();
        // A clean shutdown keeps what was appended; a failure here has poisoned the log and
        // been logged, and recovery on the next open deals with whatever reached the disk.
        if let Err(err) = self.sync_blocking(last) {
            tracing::warn!(error = %err, "log not flushed on close");
        }
    }
}

#[async_trait]
impl LogStore for FsLogStore {
    fn current_term(&self) -> u64 {
        self.shared.lock().term
    }

    async fn claim_term(&self, term: u64) -> Result<(), StorageError> {
        let _one_claim_at_a_time = self.claim_lock.lock().await;
        {
            let st = self.shared.lock();
            st.check_usable()?;
            if st.term >= term {
                return Err(StorageError::Fenced {
                    term,
                    current: st.term,
                });
            }
        }
        let path = self.shared.dir.join(TERM_FILE);
        let bytes = crate::fsutil::frame_blob(TERM_MAGIC, &term.to_le_bytes());
        // Durable before it takes effect: a restarted node must never reuse a claimed term.
        unblock(move || atomic_write(&path, &bytes)).await?;
        let mut st = self.shared.lock();
        st.term = st.term.max(term);
        st.claimed = st.claimed.max(term);
        Ok(())
    }

    fn append(&self, term: u64, payload: &[u8]) -> Result<u64, StorageError> {
        let mut st = self.shared.lock();
        st.check_usable()?;
        Self::fenced_if_stale(&st, term)?;
        let index = st.last_index() + 1;
        format::encode_record(&mut st.pending, index, term, payload);
        let end = st.pending.len();
        st.pending_bounds.push((index, end));
        st.entries.push_back((term, Arc::from(payload)));
        Ok(index)
    }

    async fn sync(&self, index: u64) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        std::future::poll_fn(move |cx| {
            let mut st = shared.lock();
            // Durable before a later failure stays durable: answer that first.
            if st.durable >= index {
                return std::task::Poll::Ready(Ok(()));
            }
            if let Err(e) = st.check_usable() {
                return std::task::Poll::Ready(Err(e));
            }
            // Nothing past the last appended entry can become durable; don't wait for it.
            let target = index.min(st.last_index());
            if st.durable >= target {
                return std::task::Poll::Ready(Ok(()));
            }
            st.sync_requested = st.sync_requested.max(target);
            if st.note_request() {
                shared.leader_wake.notify_one();
            }
            // One entry per task: a future polled again (woken by anything) must not count
            // twice among the proposers a flush wakes, or the next flush waits the whole
            // commit delay for a proposer that does not exist. Two syncs of one task share
            // the lower index: the wake is a hint, and each re-checks when polled.
            match st.waiters.iter_mut().find(|(_, w)| w.will_wake(cx.waker())) {
                Some(entry) => entry.0 = entry.0.min(target),
                None => st.waiters.push((target, cx.waker().clone())),
            }
            // No flush in progress: lead one. Never block the executor: the write + fdatasync
            // runs on a blocking thread, detached, so dropping this future mid-flush still
            // lets the job publish its result and hand the segment back.
            if let Some(segment) = st.segment.take() {
                let job = FlushJob {
                    shared: shared.clone(),
                    segment,
                    batch: st.take_batch(),
                    pooled: true,
                };
                drop(st);
                blocking::unblock(move || job.run()).detach();
            }
            std::task::Poll::Pending
        })
        .await
    }

    fn read(&self, from: u64, max: usize) -> Result<Vec<LogEntry>, StorageError> {
        let st = self.shared.lock();
        st.check_usable()?;
        let skip = from.saturating_sub(st.first_index) as usize;
        Ok(st
            .entries
            .iter()
            .enumerate()
            .skip(skip)
            .take(max)
            .map(|(i, (term, payload))| LogEntry {
                index: st.first_index + i as u64,
                term: *term,
                payload: payload.to_vec(),
            })
            .collect())
    }

    fn first_index(&self) -> u64 {
        self.shared.lock().first_index
    }

    fn last_index(&self) -> u64 {
        self.shared.lock().last_index()
    }

    async fn compact(&self, index: u64) -> Result<(), StorageError> {
        if index > self.last_index() {
            return self.reset_after(index).await;
        }
        let removed: Vec<SegmentMeta> = {
            let mut st = self.shared.lock();
            st.check_usable()?;
            // Whole segments only, never the active (last) one, and only those whose every
            // entry is <= index: the next segment must start at or before index + 1.
            let mut n = 0;
            while n + 1 < st.segments.len() && st.segments[n + 1].first_index <= index + 1 {
                n += 1;
            }
            let removed: Vec<SegmentMeta> = st.segments.drain(..n).collect();
            let new_first = st
                .segments
                .first()
                .map_or(st.first_index, |s| s.first_index);
            let dropped = new_first.saturating_sub(st.first_index) as usize;
            let dropped = dropped.min(st.entries.len());
            st.entries.drain(..dropped);
            st.first_index = new_first.max(st.first_index);
            removed
        };
        if removed.is_empty() {
            return Ok(());
        }
        let dir = self.shared.dir.clone();
        // Oldest first: a crash part-way leaves a contiguous suffix of segments.
        unblock(move || {
            for seg in &removed {
                std::fs::remove_file(&seg.path)
                    .map_err(|e| io_err("remove segment", &seg.path, e))?;
            }
            fsync_dir(&dir)
        })
        .await
    }

    async fn truncate_after(&self, index: u64) -> Result<(), StorageError> {
        // Take the active segment: no flush runs while it is held, so the buffer holds every
        // entry that is not durable, and nothing writes where the cut goes.
        let (segment, cut, waiters) = loop {
            let listener = {
                let mut st = self.shared.lock();
                st.check_usable()?;
                if index >= st.last_index() {
                    return Ok(());
                }
                if index + 1 < st.first_index {
                    return Err(StorageError::Unavailable(format!(
                        "cannot truncate after {index}: entries before {} are compacted",
                        st.first_index
                    )));
                }
                match st.segment.take() {
                    Some(segment) => {
                        let cut = Self::cut_locked(&mut st, index);
                        // Waiters re-check: one waiting for a discarded entry now waits for
                        // nothing past the new last index.
                        let waiters: Vec<std::task::Waker> =
                            st.waiters.drain(..).map(|(_, waker)| waker).collect();
                        break (segment, cut, waiters);
                    }
                    None => self.shared.synced.listen(),
                }
            };
            listener.await;
        };
        for waker in waiters {
            waker.wake();
        }
        self.shared.synced.notify(usize::MAX);
        let Some(cut) = cut else {
            // Only buffered entries were cut: nothing on disk changes.
            flusher::hand_back(&self.shared, segment, true);
            return Ok(());
        };
        let shared = self.shared.clone();
        unblock(move || {
            let mut segment = segment;
            match cut.apply(&shared.dir, &mut segment) {
                Ok(()) => {
                    flusher::hand_back(&shared, segment, true);
                    Ok(())
                }
                Err(err) => {
                    tracing::error!(error = %err, "log truncation failed; the log is poisoned");
                    let mut st = shared.lock();
                    st.poisoned = Some(err.to_string());
                    let ready = st.ready_waiters();
                    drop(st);
                    for waker in ready {
                        waker.wake();
                    }
                    shared.synced.notify(usize::MAX);
                    Err(err)
                }
            }
        })
        .await
    }
}

/// What [`FsLogStore`]'s truncation must change on disk: the segments after the one holding
/// the cut are removed, and that segment is zeroed from the cut's offset.
struct DiskCut {
    /// Segments wholly after the cut, oldest first.
    removed: Vec<SegmentMeta>,
    /// The segment that becomes the active one.
    keep: PathBuf,
    /// Offset in `keep` of the first discarded record (its new logical end).
    offset: u64,
}

impl DiskCut {
    fn apply(self, dir: &Path, active: &mut flusher::ActiveSegment) -> Result<(), StorageError> {
        // Newest first: a crash part-way leaves a prefix of the old log, never a hole.
        for seg in self.removed.iter().rev() {
            std::fs::remove_file(&seg.path).map_err(|e| io_err("remove segment", &seg.path, e))?;
        }
        if !self.removed.is_empty() {
            fsync_dir(dir)?;
        }
        // Zero the tail durably before anything is written there again: stale records past a
        // later, shorter batch must never read back as entries.
        recovery::zero_tail(&self.keep, self.offset, self.segment_len()?)?;
        if active.path != self.keep {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.keep)
                .map_err(|e| io_err("open segment", &self.keep, e))?;
            *active = flusher::ActiveSegment {
                file,
                path: self.keep.clone(),
                offset: self.offset,
            };
        } else {
            active.offset = self.offset;
        }
        Ok(())
    }

    fn segment_len(&self) -> Result<u64, StorageError> {
        std::fs::metadata(&self.keep)
            .map(|m| m.len())
            .map_err(|e| io_err("stat segment", &self.keep, e))
    }
}

impl FsLogStore {
    /// Compaction past the last entry (a Raft follower that installed a newer snapshot):
    /// every segment goes and a new empty one starts at `index + 1`. Old segments are removed
    /// oldest first before the new one exists, so a crash leaves a suffix of the old log or
    /// nothing, never a hole; the caller (who knows it compacted) repeats the call on restart.
    async fn reset_after(&self, index: u64) -> Result<(), StorageError> {
        let (segment, removed, waiters) = loop {
            let listener = {
                let mut st = self.shared.lock();
                st.check_usable()?;
                if index <= st.last_index() {
                    // Entries were appended since the caller looked: compact normally.
                    None
                } else {
                    match st.segment.take() {
                        Some(segment) => {
                            st.entries.clear();
                            st.pending.clear();
                            st.pending_bounds.clear();
                            st.first_index = index + 1;
                            st.durable = index;
                            st.sync_requested = st.sync_requested.min(index);
                            let removed: Vec<SegmentMeta> = st.segments.drain(..).collect();
                            let waiters: Vec<std::task::Waker> =
                                st.waiters.drain(..).map(|(_, waker)| waker).collect();
                            break (segment, removed, waiters);
                        }
                        None => Some(self.shared.synced.listen()),
                    }
                }
            };
            match listener {
                Some(listener) => listener.await,
                None => return self.compact(index).await,
            }
        };
        for waker in waiters {
            waker.wake();
        }
        let shared = self.shared.clone();
        unblock(move || {
            drop(segment);
            let result = (|| {
                for seg in &removed {
                    std::fs::remove_file(&seg.path)
                        .map_err(|e| io_err("remove segment", &seg.path, e))?;
                }
                fsync_dir(&shared.dir)?;
                flusher::create_segment(&shared.dir, index + 1, shared.options.segment_size)
            })();
            match result {
                Ok(active) => {
                    shared.lock().segments.push(SegmentMeta {
                        first_index: index + 1,
                        path: active.path.clone(),
                    });
                    flusher::hand_back(&shared, active, true);
                    Ok(())
                }
                Err(err) => {
                    tracing::error!(error = %err, "log reset failed; the log is poisoned");
                    let mut st = shared.lock();
                    st.poisoned = Some(err.to_string());
                    drop(st);
                    shared.synced.notify(usize::MAX);
                    Err(err)
                }
            }
        })
        .await
    }

    /// Cuts the in-memory log after `index` (which is below the last index and not before
    /// the first retained entry minus one) and says what must change on disk, if anything.
    fn cut_locked(st: &mut LogState, index: u64) -> Option<DiskCut> {
        let keep_entries = (index + 1 - st.first_index) as usize;
        // Buffered records past the cut are dropped from the buffer.
        let kept_bounds = st
            .pending_bounds
            .iter()
            .take_while(|(i, _)| *i <= index)
            .count();
        let buffer_end = kept_bounds
            .checked_sub(1)
            .map_or(0, |last| st.pending_bounds[last].1);
        st.pending_bounds.truncate(kept_bounds);
        st.pending.truncate(buffer_end);
        let on_disk = st.durable > index;
        let cut = on_disk.then(|| {
            // The segment holding index + 1: the last one starting at or before it.
            let pos = st
                .segments
                .iter()
                .rposition(|s| s.first_index <= index + 1)
                .unwrap_or(0);
            let keep = st.segments[pos].clone();
            let removed: Vec<SegmentMeta> = st.segments.drain(pos + 1..).collect();
            let skip = keep.first_index.saturating_sub(st.first_index) as usize;
            let offset = st
                .entries
                .iter()
                .skip(skip)
                .take((index + 1).saturating_sub(keep.first_index) as usize)
                .map(|(_, payload)| (format::RECORD_HEADER_LEN + payload.len()) as u64)
                .sum::<u64>()
                + format::SEGMENT_HEADER_LEN as u64;
            DiskCut {
                removed,
                keep: keep.path,
                offset,
            }
        });
        st.entries.truncate(keep_entries);
        st.durable = st.durable.min(index);
        st.sync_requested = st.sync_requested.min(index);
        st.term = st
            .claimed
            .max(st.entries.back().map_or(0, |(term, _)| *term));
        cut
    }
}

#[cfg(test)]
mod tests;
