//! Small file-system helpers shared by every store: error mapping, directory fsync, atomic
//! replacement of a small file, and running blocking I/O off the async executor.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use shoal_core::storage::StorageError;

/// Maps an I/O error to [`StorageError::Io`].
pub(crate) fn io_err(op: &'static str, path: &Path, err: std::io::Error) -> StorageError {
    StorageError::Io {
        op,
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

/// Makes the directory entry changes (create, rename, unlink) inside `dir` durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    let handle = File::open(dir).map_err(|e| io_err("open dir", dir, e))?;
    handle.sync_all().map_err(|e| io_err("fsync dir", dir, e))
}

/// Group commit of directory fsyncs: each caller's directory changes (renames) finished
/// before it calls [`DirSyncGroup::sync`]; a round fsyncs every directory of the group and
/// covers every caller that arrived before it started, so concurrent callers share one round
/// instead of paying one each. Blocking (callers are on the blocking pool).
#[derive(Debug)]
pub(crate) struct DirSyncGroup {
    dirs: Vec<PathBuf>,
    state: std::sync::Mutex<DirSyncState>,
    done: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct DirSyncState {
    /// Callers so far (each caller's number).
    requested: u64,
    /// Every caller up to this number is covered by a finished round.
    completed: u64,
    running: bool,
    /// The last failed round: callers up to this number get its error.
    failed: Option<(u64, StorageError)>,
}

impl DirSyncGroup {
    pub(crate) fn new(dirs: Vec<PathBuf>) -> Self {
        Self {
            dirs,
            state: std::sync::Mutex::new(DirSyncState::default()),
            done: std::sync::Condvar::new(),
        }
    }

    /// Returns once a round that started after this call fsynced every directory.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        let lock = || self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = lock();
        st.requested += 1;
        let mine = st.requested;
        loop {
            if st.completed >= mine {
                return Ok(());
            }
            if let Some((upto, error)) = &st.failed
                && *upto >= mine
            {
                return Err(error.clone());
            }
            if st.running {
                st = self.done.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.running = true;
            let upto = st.requested;
            drop(st);
            let result = self.dirs.iter().try_for_each(|dir| fsync_dir(dir));
            st = lock();
            st.running = false;
            match result {
                Ok(()) => st.completed = upto,
                Err(error) => st.failed = Some((upto, error)),
            }
            self.done.notify_all();
        }
    }
}

/// Creates `dir` (and parents) and makes its entry durable in its parent.
pub(crate) fn create_dir_durable(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| io_err("create dir", dir, e))?;
    if let Some(parent) = dir.parent() {
        fsync_dir(parent)?;
    }
    Ok(())
}

/// The temp name used while `path` is being replaced.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically: a crash leaves either the old or the new file,
/// whole. Temp file, fsync, rename, fsync of the directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| io_err("create", &tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| io_err("write", &tmp, e))?;
    file.sync_all().map_err(|e| io_err("fsync", &tmp, e))?;
    drop(file);
    fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fsync_dir(dir)
}

/// Reads a whole file; `Ok(None)` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path, e)),
    }
}

/// Runs blocking file-system work on smol's blocking thread pool, never on an executor
/// thread.
pub(crate) async fn unblock<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    blocking::unblock(f).await
}

/// A framed blob: `magic (8) | len u32 LE | crc32c(payload) u32 LE | payload`. Used for the
/// small files that are always replaced atomically (term, region config).
pub(crate) fn frame_blob(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks and strips a [`frame_blob`] frame. Damage is [`StorageError::Corrupt`]: these files
/// are replaced atomically, so a bad one was damaged after it was written.
pub(crate) fn unframe_blob<'a>(
    magic: &[u8; 8],
    bytes: &'a [u8],
    path: &Path,
) -> Result<&'a [u8], StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        file: path.display().to_string(),
        offset: 0,
        reason,
    };
    if bytes.len() < 16 || &bytes[..8] != magic {
        return Err(corrupt("bad magic or short header".into()));
    }
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    let crc = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    let payload = &bytes[16..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "length {} but header says {len}",
            payload.len()
        )));
    }
    if crc32c::crc32c(payload) != crc {
        return Err(corrupt("checksum mismatch".into()));
    }
    Ok(payload)
}
