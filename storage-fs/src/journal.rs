//! [`FsTaskJournal`]: the DataNode's append-only journal of task records.
//!
//! ```text
//! file   = "SHOALJNL" | version u32 | 0 u32 | record*
//! record = len u32 | crc32c(len ‖ payload) u32 | payload        (little-endian)
//! ```
//!
//! `append` writes one record and `fdatasync`s before returning. Opening truncates a torn
//! last record (logged at WARN); a bad record followed by more data is
//! [`StorageError::Corrupt`]. `rewrite` replaces the file atomically (temp, fsync, rename,
//! directory fsync).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use shoal_core::storage::{StorageError, TaskJournal};

use crate::fsutil::{create_dir_durable, fsync_dir, io_err, temp_path, unblock};
use crate::log::TornTail;

const MAGIC: &[u8; 8] = b"SHOALJNL";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 16;
const RECORD_HEADER_LEN: usize = 8;
const MAX_RECORD: usize = 64 << 20;

/// File-backed [`TaskJournal`].
#[derive(Debug, Clone)]
pub struct FsTaskJournal {
    path: PathBuf,
    file: Arc<Mutex<File>>,
    torn_tail: Option<TornTail>,
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

/// Parsed journal: the records, the end of the last good one, and the first damage.
struct Parsed {
    records: Vec<Vec<u8>>,
    end: usize,
    damage: Option<(usize, String, bool)>,
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Parsed, StorageError> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(StorageError::Corrupt {
            file: path.display().to_string(),
            offset: 0,
            reason: "bad journal header".into(),
        });
    }
    let mut off = HEADER_LEN;
    let mut records = Vec::new();
    let record_at = |off: usize| -> Result<Option<(Vec<u8>, usize)>, String> {
        let rest = &bytes[off..];
        if rest.is_empty() {
            return Ok(None);
        }
        if rest.len() < RECORD_HEADER_LEN {
            return Err("record header cut short".into());
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        if len > MAX_RECORD {
            return Err(format!("implausible record length {len}"));
        }
        if rest.len() < RECORD_HEADER_LEN + len {
            return Err(format!("record of {len} bytes cut short"));
        }
        let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
        if crc32c::crc32c_append(crc32c::crc32c(&rest[..4]), payload) != crc {
            return Err("record checksum mismatch".into());
        }
        Ok(Some((payload.to_vec(), off + RECORD_HEADER_LEN + len)))
    };
    loop {
        match record_at(off) {
            Ok(None) => {
                return Ok(Parsed {
                    records,
                    end: off,
                    damage: None,
                });
            }
            Ok(Some((payload, next))) => {
                records.push(payload);
                off = next;
            }
            Err(reason) => {
                // A believable frame with a whole record after it is damage, not a torn write.
                let len = u32::from_le_bytes(
                    bytes[off..]
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .unwrap_or([0xff; 4]),
                ) as usize;
                let next = off + RECORD_HEADER_LEN + len;
                let followed = len <= MAX_RECORD
                    && next < bytes.len()
                    && matches!(record_at(next), Ok(Some(_)));
                return Ok(Parsed {
                    records,
                    end: off,
                    damage: Some((off, reason, followed)),
                });
            }
        }
    }
}

impl FsTaskJournal {
    /// Opens (or creates) the journal file at `path`, truncating a torn last record. Blocking.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        let dir = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .to_path_buf();
        create_dir_durable(&dir)?;
        let tmp = temp_path(&path);
        if tmp.exists() {
            std::fs::remove_file(&tmp).map_err(|e| io_err("remove temp journal", &tmp, e))?;
        }
        if !path.exists() {
            write_whole(&path, &[])?;
        }
        let bytes = std::fs::read(&path).map_err(|e| io_err("read journal", &path, e))?;
        let parsed = parse(&path, &bytes)?;
        let mut torn_tail = None;
        if let Some((offset, reason, followed)) = parsed.damage {
            if followed {
                return Err(StorageError::Corrupt {
                    file: path.display().to_string(),
                    offset: offset as u64,
                    reason,
                });
            }
            let torn = TornTail {
                file: path.display().to_string(),
                offset: offset as u64,
                discarded_bytes: (bytes.len() - parsed.end) as u64,
                reason,
            };
            tracing::warn!(file = %torn.file, offset = torn.offset,
                discarded_bytes = torn.discarded_bytes, reason = %torn.reason,
                "task journal recovery truncated a torn tail");
            torn_tail = Some(torn);
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| io_err("open journal", &path, e))?;
        if torn_tail.is_some() {
            file.set_len(parsed.end as u64)
                .map_err(|e| io_err("truncate journal", &path, e))?;
            file.sync_all()
                .map_err(|e| io_err("fsync journal", &path, e))?;
        }
        Ok(Self {
            path,
            file: Arc::new(Mutex::new(file)),
            torn_tail,
        })
    }

    /// The torn tail cut off when the journal was opened, if any.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }
}

fn write_whole(path: &Path, records: &[Vec<u8>]) -> Result<File, StorageError> {
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
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename journal", path, e))?;
    fsync_dir(path.parent().unwrap_or_else(|| Path::new(".")))?;
    Ok(file)
}

#[async_trait]
impl TaskJournal for FsTaskJournal {
    async fn append(&self, record: Vec<u8>) -> Result<(), StorageError> {
        let file = self.file.clone();
        let path = self.path.clone();
        unblock(move || {
            let mut bytes = Vec::with_capacity(RECORD_HEADER_LEN + record.len());
            encode_record(&mut bytes, &record);
            let f = file.lock().unwrap_or_else(|p| p.into_inner());
            let end = f
                .metadata()
                .map_err(|e| io_err("stat journal", &path, e))?
                .len();
            use std::os::unix::fs::FileExt;
            f.write_all_at(&bytes, end)
                .map_err(|e| io_err("append journal", &path, e))?;
            f.sync_data()
                .map_err(|e| io_err("fdatasync journal", &path, e))
        })
        .await
    }

    async fn load(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let file = self.file.clone();
        let path = self.path.clone();
        unblock(move || {
            // Hold the lock so no append is half-written while we read.
            let _guard = file.lock().unwrap_or_else(|p| p.into_inner());
            let bytes = std::fs::read(&path).map_err(|e| io_err("read journal", &path, e))?;
            let parsed = parse(&path, &bytes)?;
            match parsed.damage {
                Some((offset, reason, _)) => Err(StorageError::Corrupt {
                    file: path.display().to_string(),
                    offset: offset as u64,
                    reason,
                }),
                None => Ok(parsed.records),
            }
        })
        .await
    }

    async fn rewrite(&self, records: Vec<Vec<u8>>) -> Result<(), StorageError> {
        let file = self.file.clone();
        let path = self.path.clone();
        unblock(move || {
            let mut guard = file.lock().unwrap_or_else(|p| p.into_inner());
            write_whole(&path, &records)?;
            *guard = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err("open journal", &path, e))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
