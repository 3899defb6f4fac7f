//! [`FsTaskJournal`]: the DataNode's append-only journal of task records.
//!
//! ```text
//! file   = "SHOALJNL" | version u32 | 0 u32 | record*
//! record = len u32 | crc32c(len ‖ payload) u32 | payload        (little-endian)
//! ```
//!
//! Group commit: `stage` puts a record in an in-memory buffer, in order, and `sync(ticket)`
//! makes it durable. Whichever `sync` caller finds its record not yet durable and no flush in
//! progress starts one on a `blocking` pool thread (the *flush*): it takes the whole buffer,
//! writes it at the acknowledged end and `fdatasync`s it **without holding the journal's
//! lock**, so records staged meanwhile join the next flush, which the same thread runs at
//! once. Every other caller waits for the `synced` event. So N concurrent tasks' records share
//! about one fdatasync, as in the log's flusher (`log/flusher.rs`). `append` is stage + sync.
//! A record is acknowledged (and `load` returns it) only once its flush's fdatasync returned.
//! A failed write or fdatasync **poisons** the journal: the bytes past the acknowledged end
//! are unknown, so that append and every later `append` or `rewrite` fail with
//! [`StorageError::Unavailable`] until the journal is opened again. `load` still reads the
//! acknowledged records.
//!
//! `rewrite` replaces the file atomically (temp, fsync, rename, directory fsync) and keeps
//! appending through the temp file's own handle, which after the rename is the journal. A
//! failure before the rename leaves the old journal in use (a retryable error); a failure
//! from the rename on poisons.
//!
//! Opening tells a torn tail from damage. Damage with no whole, checksum-valid record
//! anywhere after it is a torn tail (the last append never completed): it is truncated,
//! logged at WARN and reported by [`FsTaskJournal::torn_tail`]. Damage followed by any whole
//! record is [`StorageError::Corrupt`] naming the file and the damage's offset, and the file
//! is left exactly as it was: truncating would drop acknowledged records.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use async_trait::async_trait;
use event_listener::Event;
use shoal_core::metrics::{self, MetricEvent, SyncedFile};
use shoal_core::storage::{Staged, StorageError, TaskJournal};

use crate::fsutil::{create_dir_durable, fsync_dir, io_err, temp_path, unblock};
use crate::log::TornTail;

const MAGIC: &[u8; 8] = b"SHOALJNL";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const RECORD_HEADER_LEN: usize = 8;
const MAX_RECORD: usize = 64 << 20;

/// File-backed [`TaskJournal`]. Clones share the open file, and so its poisoning; only a
/// fresh [`FsTaskJournal::open`] clears it.
#[derive(Debug, Clone)]
pub struct FsTaskJournal {
    path: PathBuf,
    shared: Arc<Shared>,
    torn_tail: Option<TornTail>,
}

/// What every clone of one open journal shares.
#[derive(Debug)]
struct Shared {
    file: Mutex<JournalFile>,
    /// Notified whenever a flush ends (durable or poisoned): async `sync` callers re-check.
    synced: Event,
    /// Notified when `flushing` turns false: a blocking `rewrite` waits on it.
    idle: Condvar,
    /// Completed flushes (one fdatasync each).
    flushes: AtomicU64,
    #[cfg(any(test, feature = "testing"))]
    flush_gate: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

/// The open journal file and what this handle knows about it.
#[derive(Debug)]
struct JournalFile {
    /// Shared with a flush in progress, which writes through it without the lock.
    file: Arc<File>,
    /// End of the last acknowledged record: where the next flush writes, and how far `load`
    /// reads.
    end: u64,
    /// Framed records staged after `end` and not yet taken by a flush.
    buffer: Vec<u8>,
    /// Ticket of the last staged record (tickets count up from 1 and never restart).
    staged: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A flush is writing or syncing (it owns the bytes past `end` until it ends).
    flushing: bool,
    /// Set by the first failure that leaves the file's contents or the handle in doubt.
    poisoned: Option<StorageError>,
    #[cfg(any(test, feature = "testing"))]
    fault: Option<JournalFault>,
}

/// A failure [`FsTaskJournal::inject_fault`] arms for the next call it applies to (test hook).
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalFault {
    /// The next append writes only the first `written` bytes of its record, then fails as a
    /// full disk would.
    PartialAppend {
        /// Bytes of the framed record that reach the file.
        written: usize,
    },
    /// The next append writes its whole record, then its `fdatasync` fails.
    AppendSync,
    /// The next rewrite renames its new file into place, then the directory fsync fails.
    RewriteAfterRename,
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

fn encode_record(out: &mut Vec<u8>, payload: &[u8]) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The payload range of the record framed at `off`: `Ok(None)` at the end of `bytes`,
/// `Err(reason)` for anything damaged or cut short.
fn record_at(bytes: &[u8], off: usize) -> Result<Option<Range<usize>>, String> {
    let rest = &bytes[off..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < RECORD_HEADER_LEN {
        return Err("record header cut short".into());
    }
    let len = u32_at(rest, 0) as usize;
    let crc = u32_at(rest, 4);
    if len > MAX_RECORD {
        return Err(format!("implausible record length {len}"));
    }
    if rest.len() < RECORD_HEADER_LEN + len {
        return Err(format!("record of {len} bytes cut short"));
    }
    let payload = off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + len;
    if crc32c::crc32c_append(crc32c::crc32c(&rest[..4]), &bytes[payload.clone()]) != crc {
        return Err("record checksum mismatch".into());
    }
    Ok(Some(payload))
}

/// Where the first whole, checksum-valid record after the damage at `damage` starts, if any.
/// Every byte offset is tried: damage inside a record leaves no length field to trust for
/// where the next one starts. It runs only over a damaged tail at open, and most offsets
/// fail the length bound before any checksum is computed.
fn whole_record_after(bytes: &[u8], damage: usize) -> Option<usize> {
    let last_start = bytes.len().checked_sub(RECORD_HEADER_LEN)?;
    (damage + 1..=last_start).find(|&at| matches!(record_at(bytes, at), Ok(Some(_))))
}

/// A journal file's records, the end of the last whole one, and the torn tail after it.
struct Parsed {
    records: Vec<Vec<u8>>,
    end: usize,
    /// Offset and reason of damage with no whole record after it.
    torn: Option<(usize, String)>,
}

/// Reads `bytes` as a journal file. Damage followed by a whole record is
/// [`StorageError::Corrupt`] at the damage's offset; damage with nothing whole after it is
/// returned as the torn tail.
fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, StorageError> {
    let corrupt = |offset: usize, reason: String| StorageError::Corrupt {
        file: path.display().to_string(),
        offset: offset as u64,
        reason,
    };
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(corrupt(0, "bad journal header".into()));
    }
    let mut off = HEADER_LEN;
    let mut records = Vec::new();
    loop {
        match record_at(bytes, off) {
            Ok(None) => {
                return Ok(Parsed {
                    records,
                    end: off,
                    torn: None,
                });
            }
            Ok(Some(payload)) => {
                off = payload.end;
                records.push(bytes[payload].to_vec());
            }
            Err(reason) => {
                if let Some(next) = whole_record_after(bytes, off) {
                    return Err(corrupt(
                        off,
                        format!("{reason}, and a whole record follows at offset {next}"),
                    ));
                }
                return Ok(Parsed {
                    records,
                    end: off,
                    torn: Some((off, reason)),
                });
            }
        }
    }
}

impl FsTaskJournal {
    /// Opens (or creates) the journal file at `path`, truncating a torn tail. Damage followed
    /// by a whole record fails with [`StorageError::Corrupt`] and changes nothing. Blocking.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        create_dir_durable(&dir)?;
        if !path.exists() {
            write_whole(&path, &[])?;
        }
        let bytes = std::fs::read(&path).map_err(|e| io_err("read journal", &path, e))?;
        // Refuse damage before touching anything.
        let parsed = parse(&path, &bytes)?;
        // A leftover temp file is an interrupted rewrite; the journal itself is the old one.
        let tmp = temp_path(&path);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| io_err("remove temp journal", &tmp, e))?;
        }
        let torn_tail = parsed.torn.map(|(offset, reason)| TornTail {
            file: path.display().to_string(),
            offset: offset as u64,
            discarded_bytes: (bytes.len() - parsed.end) as u64,
            reason,
        });
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open journal", &path, e))?;
        if let Some(torn) = &torn_tail {
            tracing::warn!(file = %torn.file, offset = torn.offset,
                discarded_bytes = torn.discarded_bytes, reason = %torn.reason,
                "task journal recovery truncated a torn tail");
            file.set_len(parsed.end as u64)
                .map_err(|e| io_err("truncate journal", &path, e))?;
            file.sync_all()
                .map_err(|e| io_err("fsync journal", &path, e))?;
        }
        Ok(Self {
            path,
            shared: Arc::new(Shared {
                file: Mutex::new(JournalFile {
                    file: Arc::new(file),
                    end: parsed.end as u64,
                    buffer: Vec::new(),
                    staged: 0,
                    durable: 0,
                    flushing: false,
                    poisoned: None,
                    #[cfg(any(test, feature = "testing"))]
                    fault: None,
                }),
                synced: Event::new(),
                idle: Condvar::new(),
                flushes: AtomicU64::new(0),
                #[cfg(any(test, feature = "testing"))]
                flush_gate: Mutex::new(None),
            }),
            torn_tail,
        })
    }

    /// Flushes completed so far (one fdatasync each): with concurrent appends, fewer than
    /// the records appended.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Acquire)
    }

    /// Records staged so far (tickets handed out).
    pub fn staged(&self) -> u64 {
        lock(&self.shared.file).staged
    }

    /// Test hook: from now on every flush waits, before taking the buffer, for one message
    /// on the returned sender; dropping the sender lets every flush through again.
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

    /// The torn tail cut off when the journal was opened, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// Test hook: arms `fault` for the next append or rewrite it applies to.
    #[cfg(any(test, feature = "testing"))]
    pub fn inject_fault(&self, fault: JournalFault) {
        lock(&self.shared.file).fault = Some(fault);
    }
}

fn lock(file: &Mutex<JournalFile>) -> MutexGuard<'_, JournalFile> {
    // Plain data; a panic elsewhere does not make it unreadable (poisoning is tracked
    // explicitly, not through the mutex).
    file.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes a journal holding `records` to the temp path and fsyncs it; returns the temp
/// file's handle and length. The journal itself is untouched.
fn write_temp(path: &Path, records: &[Vec<u8>]) -> Result<(File, u64), StorageError> {
    let mut bytes = header().to_vec();
    for r in records {
        encode_record(&mut bytes, r);
    }
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("create journal", &tmp, e))?;
    file.write_all(&bytes)
        .map_err(|e| io_err("write journal", &tmp, e))?;
    file.sync_all()
        .map_err(|e| io_err("fsync journal", &tmp, e))?;
    Ok((file, bytes.len() as u64))
}

/// Atomically creates or replaces the journal at `path` with `records`.
fn write_whole(path: &Path, records: &[Vec<u8>]) -> Result<(), StorageError> {
    write_temp(path, records)?;
    std::fs::rename(temp_path(path), path).map_err(|e| io_err("rename journal", path, e))?;
    fsync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
}

impl JournalFile {
    /// Fails with the poisoning error if an earlier failure poisoned this journal.
    fn check_usable(&self) -> Result<(), StorageError> {
        match &self.poisoned {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Poisons the journal because of `cause`; returns the error every later call gets.
    fn poison(&mut self, path: &Path, cause: StorageError) -> StorageError {
        let error = StorageError::Unavailable(format!(
            "task journal {} is poisoned until reopened: {cause}",
            path.display()
        ));
        self.poisoned = Some(error.clone());
        error
    }

    fn stage(&mut self, record: &[u8]) -> Result<u64, StorageError> {
        self.check_usable()?;
        encode_record(&mut self.buffer, record);
        self.staged += 1;
        Ok(self.staged)
    }

    /// Replaces the contents with `records`; the caller made sure nothing is staged or
    /// being flushed (see [`rewrite`]).
    fn rewrite(&mut self, path: &Path, records: &[Vec<u8>]) -> Result<(), StorageError> {
        self.check_usable()?;
        // A failure here leaves the old journal whole and this handle on it.
        let (file, len) = write_temp(path, records)?;
        let replaced = std::fs::rename(temp_path(path), path)
            .map_err(|e| io_err("rename journal", path, e))
            .and_then(|()| {
                // The temp file's handle is now the journal's: append through it, so no
                // reopen can fail and leave this handle on the replaced file.
                self.file = Arc::new(file);
                self.end = len;
                self.sync_dir_after_rename(path)
            });
        // A failed rename may or may not have happened; an unsynced one may be undone by a
        // crash, taking later appends with it. Either way this handle cannot go on.
        replaced.map_err(|cause| self.poison(path, cause))
    }

    fn sync_dir_after_rename(&mut self, path: &Path) -> Result<(), StorageError> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        #[cfg(any(test, feature = "testing"))]
        if self
            .take_fault(|f| matches!(f, JournalFault::RewriteAfterRename))
            .is_some()
        {
            return Err(injected("fsync dir", dir));
        }
        fsync_dir(dir)
    }

    /// Takes the armed fault if `applies` to it.
    #[cfg(any(test, feature = "testing"))]
    fn take_fault(&mut self, applies: impl Fn(&JournalFault) -> bool) -> Option<JournalFault> {
        self.fault.take_if(|f| applies(f))
    }

    /// The records up to the acknowledged end.
    fn load(&self, path: &Path) -> Result<Vec<Vec<u8>>, StorageError> {
        let bytes = std::fs::read(path).map_err(|e| io_err("read journal", path, e))?;
        // Past `end` lie only the remains of a failed append (on a poisoned journal).
        let acknowledged = usize::try_from(self.end)
            .ok()
            .and_then(|end| bytes.get(..end))
            .ok_or_else(|| StorageError::Corrupt {
                file: path.display().to_string(),
                offset: bytes.len() as u64,
                reason: format!("journal ends before its acknowledged end {}", self.end),
            })?;
        let parsed = parse(path, acknowledged)?;
        match parsed.torn {
            Some((offset, reason)) => Err(StorageError::Corrupt {
                file: path.display().to_string(),
                offset: offset as u64,
                reason,
            }),
            None => Ok(parsed.records),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, JournalFile> {
        lock(&self.file)
    }

    #[cfg(any(test, feature = "testing"))]
    fn pass_flush_gate(&self) {
        let gate = self.flush_gate.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = gate.as_ref() {
            // A closed gate (sender dropped) lets every flush through.
            let _ = rx.recv();
        }
    }
}

/// The flush: writes and fdatasyncs whatever is staged, again and again, until nothing is
/// (or the journal is poisoned); the caller set `flushing`. The lock is held only to take
/// the buffer and to publish the result, never across the write or the fdatasync.
fn flush(shared: &Shared, path: &Path) {
    loop {
        #[cfg(any(test, feature = "testing"))]
        shared.pass_flush_gate();
        let mut st = shared.lock();
        if st.buffer.is_empty() || st.poisoned.is_some() {
            st.flushing = false;
            drop(st);
            shared.idle.notify_all();
            shared.synced.notify(usize::MAX);
            return;
        }
        let bytes = std::mem::take(&mut st.buffer);
        let (upto, at, file) = (st.staged, st.end, st.file.clone());
        #[cfg(any(test, feature = "testing"))]
        let fault = st.take_fault(|f| !matches!(f, JournalFault::RewriteAfterRename));
        drop(st);
        #[cfg(any(test, feature = "testing"))]
        let outcome = write_and_sync(&file, path, at, &bytes, fault);
        #[cfg(not(any(test, feature = "testing")))]
        let outcome = write_and_sync(&file, path, at, &bytes);
        let mut st = shared.lock();
        match outcome {
            Ok(()) => {
                st.end = at + bytes.len() as u64;
                st.durable = upto;
                shared.flushes.fetch_add(1, Ordering::AcqRel);
            }
            // What reached the disk past `end` is unknown: appending after it could bury
            // acknowledged records behind garbage, so nothing is appended on this handle
            // again (the records staged meanwhile are dropped with it).
            Err(cause) => {
                st.poison(path, cause);
            }
        }
        drop(st);
        shared.synced.notify(usize::MAX);
    }
}

/// Writes `bytes` at `at` and fdatasyncs them.
fn write_and_sync(
    file: &File,
    path: &Path,
    at: u64,
    bytes: &[u8],
    #[cfg(any(test, feature = "testing"))] fault: Option<JournalFault>,
) -> Result<(), StorageError> {
    #[cfg(any(test, feature = "testing"))]
    match fault {
        Some(JournalFault::PartialAppend { written }) => {
            let part = &bytes[..written.min(bytes.len())];
            file.write_all_at(part, at)
                .map_err(|e| io_err("append journal", path, e))?;
            return Err(injected("append journal", path));
        }
        Some(JournalFault::AppendSync) => {
            file.write_all_at(bytes, at)
                .map_err(|e| io_err("append journal", path, e))?;
            return Err(injected("fdatasync journal", path));
        }
        Some(JournalFault::RewriteAfterRename) | None => {}
    }
    file.write_all_at(bytes, at)
        .map_err(|e| io_err("append journal", path, e))?;
    let started = std::time::Instant::now();
    file.sync_data()
        .map_err(|e| io_err("fdatasync journal", path, e))?;
    metrics::record(MetricEvent::Fsync {
        file: SyncedFile::Journal,
        duration: started.elapsed(),
    });
    Ok(())
}

/// Compaction: first makes every staged record durable (waiting out a flush in progress and
/// flushing the rest here), so none is lost with the old file, then replaces the file while
/// holding the lock (no record can be staged into the old file meanwhile). Blocking.
fn rewrite(shared: &Shared, path: &Path, records: &[Vec<u8>]) -> Result<(), StorageError> {
    let mut st = shared.lock();
    loop {
        while st.flushing {
            st = shared.idle.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.buffer.is_empty() || st.poisoned.is_some() {
            break;
        }
        st.flushing = true;
        drop(st);
        flush(shared, path);
        st = shared.lock();
    }
    st.rewrite(path, records)
}

#[cfg(any(test, feature = "testing"))]
fn injected(op: &'static str, path: &Path) -> StorageError {
    io_err(op, path, std::io::Error::other("injected failure"))
}

#[async_trait]
impl TaskJournal for FsTaskJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        let ticket = lock(&self.shared.file).stage(&record)?;
        self.sync(ticket).await
    }

    fn stage(&self, record: Vec<u8>) -> Result<Staged, StorageError> {
        lock(&self.shared.file).stage(&record).map(Staged::Ticket)
    }

    async fn sync(&self, ticket: u64) -> Result<(), StorageError> {
        loop {
            let listener = {
                let mut st = self.shared.lock();
                // Durable before a later failure stays durable: answer that first.
                if st.durable >= ticket {
                    return Ok(());
                }
                st.check_usable()?;
                if !st.flushing {
                    st.flushing = true;
                    drop(st);
                    let (shared, path) = (self.shared.clone(), self.path.clone());
                    // Detached: a caller that drops its future mid-flush must not leave
                    // `flushing` set with nobody flushing. Its end is announced on `synced`.
                    blocking::unblock(move || flush(&shared, &path)).detach();
                    continue;
                }
                // Listening under the lock: the flush publishes under it, then notifies.
                self.shared.synced.listen()
            };
            listener.await;
        }
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let shared = self.shared.clone();
        let path = self.path.clone();
        // Reads only up to the acknowledged end: a flush in progress writes past it.
        unblock(move || shared.lock().load(&path)).await
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let path = self.path.clone();
        unblock(move || rewrite(&shared, &path, &records)).await
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod datanode_tests;
