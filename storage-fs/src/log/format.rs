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

use std::path::{Path, PathBuf};

use shoal_core::storage::{LogEntry, StorageError};

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

/// A record that parsed and checked out.
struct GoodRecord {
    index: u64,
    term: u64,
    payload_at: usize,
    len: usize,
}

/// Parses the record at `off`: `Ok(None)` for an all-zero header (logical end), `Err(reason)`
/// for anything damaged or cut short.
fn parse_record(bytes: &[u8], off: usize) -> Result<Option<GoodRecord>, String> {
    let rest = &bytes[off..];
    if rest.len() < RECORD_HEADER_LEN {
        return if rest.iter().all(|b| *b == 0) {
            Ok(None)
        } else {
            Err("record header cut short".into())
        };
    }
    let header = &rest[..RECORD_HEADER_LEN];
    if header.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let len = u32_at(header, 0) as usize;
    let crc = u32_at(header, 4);
    let index = u64_at(header, 8);
    let term = u64_at(header, 16);
    if len > MAX_PAYLOAD {
        return Err(format!("implausible record length {len}"));
    }
    if rest.len() < RECORD_HEADER_LEN + len {
        return Err(format!("record of {len} bytes cut short"));
    }
    let payload = &rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len];
    if record_crc(len as u32, index, term, payload) != crc {
        return Err("record checksum mismatch".into());
    }
    Ok(Some(GoodRecord {
        index,
        term,
        payload_at: off + RECORD_HEADER_LEN,
        len,
    }))
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

/// What one segment holds.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// The header's first index.
    pub first_index: u64,
    /// The valid entries, in order.
    pub entries: Vec<LogEntry>,
    /// Offset just past the last valid record.
    pub end_offset: u64,
    /// Set if something other than zeroes follows the last valid record.
    pub damage: Option<Damage>,
}

/// Scans one segment's bytes. `prev_term` is the term of the entry before the segment (terms
/// never decrease). Header damage is an error at once: a segment's header is written and
/// fsynced before the segment is renamed into place.
pub(crate) fn scan_segment(
    path: &Path,
    bytes: &[u8],
    mut prev_term: u64,
) -> Result<SegmentScan, StorageError> {
    let file = path.display().to_string();
    let corrupt = |offset: u64, reason: String| StorageError::Corrupt {
        file: file.clone(),
        offset,
        reason,
    };
    if bytes.len() < SEGMENT_HEADER_LEN {
        return Err(corrupt(0, "segment header cut short".into()));
    }
    let h = &bytes[..SEGMENT_HEADER_LEN];
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
    let mut off = SEGMENT_HEADER_LEN;
    let mut entries = Vec::new();
    let mut damage = None;
    loop {
        let bad = match parse_record(bytes, off) {
            Ok(None) => {
                // Logical end. Anything non-zero after it was never fully written.
                if let Some(last) = bytes[off..].iter().rposition(|b| *b != 0) {
                    damage = Some(Damage {
                        offset: off as u64,
                        reason: "non-zero bytes after the logical end".into(),
                        followed_by_valid_record: false,
                        garbage_len: (last + 1) as u64,
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
                entries.push(LogEntry {
                    index: rec.index,
                    term: rec.term,
                    payload: bytes[rec.payload_at..rec.payload_at + rec.len].to_vec(),
                });
                prev_term = rec.term;
                expected += 1;
                off = rec.payload_at + rec.len;
                continue;
            }
            Err(reason) => reason,
        };
        let garbage_len = bytes[off..]
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |last| (last + 1) as u64);
        damage = Some(Damage {
            offset: off as u64,
            reason: bad,
            followed_by_valid_record: valid_record_follows(bytes, off, expected),
            garbage_len,
        });
        break;
    }
    Ok(SegmentScan {
        first_index,
        entries,
        end_offset: off as u64,
        damage,
    })
}

/// Whether the bad record at `off` still has a believable frame (its length field leads to a
/// valid record with a later index). A torn write leaves nothing valid after it; a damaged
/// byte inside an otherwise whole log does.
fn valid_record_follows(bytes: &[u8], off: usize, expected: u64) -> bool {
    if bytes.len() < off + RECORD_HEADER_LEN {
        return false;
    }
    let len = u32_at(bytes, off) as usize;
    if len > MAX_PAYLOAD {
        return false;
    }
    let next = off + RECORD_HEADER_LEN + len;
    if next >= bytes.len() {
        return false;
    }
    matches!(parse_record(bytes, next), Ok(Some(rec)) if rec.index > expected)
}
