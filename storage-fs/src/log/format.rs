//! On-disk format of log segments and the scan that recovery runs over them.
//!
//! ```text
//! segment  = header (32) | record* | zeroes (preallocated, unused)
//! header   = "SHOALLOG" | version u32 | 0 u32 | first_index u64 | crc32c(bytes 0..24) u32 | 0 u32
//! record   = len u32 | crc u32 | index u64 | term u64 | payload (len bytes)
//! crc      = crc32c(len ‖ index ‖ term ‖ payload)      (all integers little-endian)
//! ```
//!
//! Indexes are never 0, so an all-zero record header marks the logical end of a segment
//! (the rest is preallocated space).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use shoal_core::storage::StorageError;

use crate::fsutil::io_err;

/// Magic at the start of every segment.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"SHOALLOG";
/// Segment format version.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// Bytes of the segment header.
pub(crate) const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of a record header.
pub(crate) const RECORD_HEADER_LEN: usize = 24;
/// Largest payload accepted; a larger length field is damage, not data.
pub(crate) const MAX_PAYLOAD: usize = 256 << 20;

/// The file name of the segment whose first entry is `first_index`.
pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}.seg"))
}

/// Parses a segment file name back into its first index.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// The 32-byte header of a segment starting at `first_index`.
pub(crate) fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Appends one encoded record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, index: u64, term: u64, payload: &[u8]) {
    let len = payload.len() as u32;
    let crc = record_crc(len, index, term, payload);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(payload);
}

fn record_crc(len: u32, index: u64, term: u64, payload: &[u8]) -> u32 {
    let mut crc = crc32c::crc32c(&len.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &index.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &term.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Bytes read from a segment at a time during recovery: the scan holds this much (or one
/// record, if larger) of a segment in memory, never the whole preallocated file.
pub(crate) const SCAN_WINDOW: usize = 1 << 20;

/// A forward-moving window over a segment file: recovery reads a segment through it instead
/// of reading the whole (64 MiB, mostly zero) file at once.
pub(crate) struct SegmentWindow<'a> {
    file: &'a File,
    path: &'a Path,
    /// The file's length.
    len: u64,
    /// Bytes from `start` on.
    buf: Vec<u8>,
    start: u64,
}

impl<'a> SegmentWindow<'a> {
    /// A window over `file` (at `path`, for errors), `len` bytes long.
    pub(crate) fn new(file: &'a File, path: &'a Path, len: u64) -> Self {
        Self {
            file,
            path,
            len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Bytes the window's buffer can hold now (what the scan keeps in memory at most).
    #[cfg(test)]
    pub(crate) fn held_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes `[off, off + n)`, cut short at the end of the file. Reads what is not held
    /// yet; bytes before `off` are dropped when the window moves on.
    pub(crate) fn get(&mut self, off: u64, n: usize) -> Result<&[u8], StorageError> {
        let end = off.saturating_add(n as u64).min(self.len);
        let off = off.min(end);
        let held_end = self.start + self.buf.len() as u64;
        if off < self.start || end > held_end {
            if off >= self.start && off <= held_end {
                self.buf.drain(..(off - self.start) as usize);
            } else {
                self.buf.clear();
            }
            self.start = off;
            let want = ((end - off) as usize).max(SCAN_WINDOW.min((self.len - off) as usize));
            let mut filled = self.buf.len();
            self.buf.resize(want, 0);
            while filled < want {
                let read = self
                    .file
                    .read_at(&mut self.buf[filled..], self.start + filled as u64)
                    .map_err(|e| io_err("read segment", self.path, e))?;
                if read == 0 {
                    break;
                }
                filled += read;
            }
            self.buf.truncate(filled);
        }
        let from = (off - self.start) as usize;
        let to = ((end - self.start) as usize).min(self.buf.len());
        Ok(&self.buf[from..to])
    }

    /// Bytes from `off` to the last non-zero byte of the file (0 if all zero), read a window
    /// at a time.
    fn nonzero_extent(&mut self, off: u64) -> Result<u64, StorageError> {
        let mut extent = 0;
        let mut at = off;
        while at < self.len {
            let chunk = self.get(at, SCAN_WINDOW)?;
            if chunk.is_empty() {
                break;
            }
            if let Some(last) = chunk.iter().rposition(|b| *b != 0) {
                extent = at + last as u64 + 1 - off;
            }
            at += chunk.len() as u64;
        }
        Ok(extent)
    }
}

/// A record that parsed and checked out.
struct GoodRecord {
    index: u64,
    term: u64,
    payload_at: u64,
    len: usize,
}

/// Parses the record at `off`: `Ok(None)` for an all-zero header (logical end), `Err(reason)`
/// for anything damaged or cut short. An I/O error reading the file is the outer error.
fn parse_record(
    window: &mut SegmentWindow<'_>,
    off: u64,
) -> Result<Result<Option<GoodRecord>, String>, StorageError> {
    let rest = window.len().saturating_sub(off);
    let header = window.get(off, RECORD_HEADER_LEN)?;
    if header.len() < RECORD_HEADER_LEN {
        return Ok(if header.iter().all(|b| *b == 0) {
            Ok(None)
        } else {
            Err("record header cut short".into())
        });
    }
    if header.iter().all(|b| *b == 0) {
        return Ok(Ok(None));
    }
    let len = u32_at(header, 0) as usize;
    let crc = u32_at(header, 4);
    let index = u64_at(header, 8);
    let term = u64_at(header, 16);
    if len > MAX_PAYLOAD {
        return Ok(Err(format!("implausible record length {len}")));
    }
    if rest < (RECORD_HEADER_LEN + len) as u64 {
        return Ok(Err(format!("record of {len} bytes cut short")));
    }
    let payload_at = off + RECORD_HEADER_LEN as u64;
    let payload = window.get(payload_at, len)?;
    if record_crc(len as u32, index, term, payload) != crc {
        return Ok(Err("record checksum mismatch".into()));
    }
    Ok(Ok(Some(GoodRecord {
        index,
        term,
        payload_at,
        len,
    })))
}

/// Where a segment's scan stopped early.
#[derive(Debug)]
pub(crate) struct Damage {
    /// Offset of the first bad byte (the bad record's start).
    pub offset: u64,
    /// What was wrong.
    pub reason: String,
    /// Whether a valid, later record follows the damage: then it cannot be a torn tail.
    pub followed_by_valid_record: bool,
    /// Bytes from `offset` to the last non-zero byte of the file.
    pub garbage_len: u64,
}

/// What one segment holds (its entries went to the scan's callback).
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// The header's first index.
    pub first_index: u64,
    /// Valid entries found.
    pub entries: u64,
    /// The last valid entry's term (`prev_term` if there is none).
    pub last_term: u64,
    /// Offset just past the last valid record.
    pub end_offset: u64,
    /// Set if something other than zeroes follows the last valid record.
    pub damage: Option<Damage>,
}

/// Scans one segment file, streaming: each valid entry goes to `on_entry(index, term,
/// payload)` in order, and at most one window (or one record) is held in memory.
/// `prev_term` is the term of the entry before the segment (terms never decrease). Header
/// damage is an error at once: a segment's header is written and fsynced before the segment
/// is renamed into place.
pub(crate) fn scan_segment(
    window: &mut SegmentWindow<'_>,
    mut prev_term: u64,
    mut on_entry: impl FnMut(u64, u64, &[u8]),
) -> Result<SegmentScan, StorageError> {
    let file = window.path.display().to_string();
    let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
        file: file.clone(),
        offset,
        reason,
    };
    let h = window.get(0, SEGMENT_HEADER_LEN)?;
    if h.len() < SEGMENT_HEADER_LEN {
        return Err(corrupt(0, "segment header cut short".into()));
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Err(corrupt(0, "bad segment magic".into()));
    }
    if crc32c::crc32c(&h[..24]) != u32_at(h, 24) {
        return Err(corrupt(0, "segment header checksum mismatch".into()));
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_VERSION {
        return Err(corrupt(8, format!("unsupported segment version {version}")));
    }
    let first_index = u64_at(h, 16);
    let mut expected = first_index;
    let mut off = SEGMENT_HEADER_LEN as u64;
    let mut damage = None;
    loop {
        let bad = match parse_record(window, off)? {
            Ok(None) => {
                // Logical end. Anything non-zero after it was never fully written.
                let garbage_len = window.nonzero_extent(off)?;
                if garbage_len > 0 {
                    damage = Some(Damage {
                        offset: off,
                        reason: "non-zero bytes after the logical end".into(),
                        followed_by_valid_record: false,
                        garbage_len,
                    });
                }
                break;
            }
            Ok(Some(rec)) if rec.index != expected => {
                format!("index {} where {expected} was expected", rec.index)
            }
            Ok(Some(rec)) if rec.term < prev_term => {
                format!("term {} after term {prev_term}", rec.term)
            }
            Ok(Some(rec)) => {
                on_entry(rec.index, rec.term, window.get(rec.payload_at, rec.len)?);
                prev_term = rec.term;
                expected += 1;
                off = rec.payload_at + rec.len as u64;
                continue;
            }
            Err(reason) => reason,
        };
        let followed_by_valid_record = valid_record_follows(window, off, expected)?;
        let garbage_len = window.nonzero_extent(off)?;
        damage = Some(Damage {
            offset: off,
            reason: bad,
            followed_by_valid_record,
            garbage_len,
        });
        break;
    }
    Ok(SegmentScan {
        first_index,
        entries: expected - first_index,
        last_term: prev_term,
        end_offset: off,
        damage,
    })
}

/// Whether the bad record at `off` still has a believable frame (its length field leads to a
/// valid record with a later index). A torn write leaves nothing valid after it; a damaged
/// byte inside an otherwise whole log does.
fn valid_record_follows(
    window: &mut SegmentWindow<'_>,
    off: u64,
    expected: u64,
) -> Result<bool, StorageError> {
    let header = window.get(off, RECORD_HEADER_LEN)?;
    if header.len() < RECORD_HEADER_LEN {
        return Ok(false);
    }
    let len = u32_at(header, 0) as usize;
    if len > MAX_PAYLOAD {
        return Ok(false);
    }
    let next = off + (RECORD_HEADER_LEN + len) as u64;
    if next >= window.len() {
        return Ok(false);
    }
    Ok(matches!(parse_record(window, next)?, Ok(Some(rec)) if rec.index > expected))
}
