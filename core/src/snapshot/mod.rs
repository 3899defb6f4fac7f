//! Snapshot codec: [`ClusterState`] to bytes and back.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "SHOALSNP" (8) | version u16 | body_len u64 | crc32c(version ‖ body_len ‖ body) u32 | body
//! ```
//!
//! The body is CBOR of the version's body struct. Version 3 is current (v3 added the
//! replica footprints and names queued tasks' DataNodes by id). Every older version stays
//! readable forever, upgraded step by step (v1 → v2 → v3); committed fixtures of each are
//! loaded by tests.

mod v1;
mod v2;

use serde::{Deserialize, Serialize};

use crate::cbor::CborError;
use crate::state::ClusterState;

/// First bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"SHOALSNP";
/// The format version [`encode`] writes.
pub const CURRENT_VERSION: u16 = 3;
/// Bytes before the body.
pub const HEADER_LEN: usize = 8 + 2 + 8 + 4;

/// Why bytes could not be decoded into a snapshot. Never retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum SnapshotError {
    /// Shorter than the header, or than the length the header declares.
    #[error("snapshot truncated: {len} bytes, need {needed}")]
    Truncated { len: usize, needed: u64 },
    /// Not a Shoal snapshot.
    #[error("bad snapshot magic")]
    BadMagic,
    /// Written by a newer Shoal (or garbage).
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u16),
    /// Bytes after the declared body.
    #[error("{0} trailing bytes after snapshot body")]
    TrailingBytes(usize),
    /// The checksum does not match: the bytes were damaged.
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes as read.
        computed: u32,
    },
    /// The body does not decode as its version's body.
    #[error("snapshot v{version} body is malformed: {message}")]
    MalformedBody { version: u16, message: String },
    /// The state could not be encoded.
    #[error("snapshot encode failed: {0}")]
    Encode(String),
}

/// A decoded snapshot: the state after applying every log entry up to `last_index`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct Snapshot {
    /// Index of the last log entry the state includes.
    pub last_index: u64,
    /// Term (epoch) of that entry.
    pub last_term: u64,
    pub state: ClusterState,
}

/// Encodes `snapshot` in the current format.
pub fn encode(snapshot: &Snapshot) -> Result<Vec<u8>, SnapshotError> {
    let mut body = Vec::new();
    ciborium::into_writer(snapshot, &mut body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(frame(CURRENT_VERSION, &body))
}

/// Decodes a snapshot of any supported version into the current state shape.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let (version, body) = unframe(bytes)?;
    let malformed = |message: String| SnapshotError::MalformedBody { version, message };
    match version {
        1 => {
            let legacy: v1::SnapshotV1 = decode_exact(body).map_err(malformed)?;
            Ok(legacy.upgrade().upgrade())
        }
        2 => {
            let legacy: v2::SnapshotV2 = decode_exact(body).map_err(malformed)?;
            Ok(legacy.upgrade())
        }
        3 => decode_exact(body).map_err(malformed),
        other => Err(SnapshotError::UnsupportedVersion(other)),
    }
}

/// Wraps a body in the header for `version`.
fn frame(version: u16, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&(body.len() as u64).to_be_bytes());
    let crc = checksum(&out[8..18], body);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn unframe(bytes: &[u8]) -> Result<(u16, &[u8]), SnapshotError> {
    if bytes.len() < HEADER_LEN {
        return Err(SnapshotError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN as u64,
        });
    }
    if &bytes[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[10..18]);
    let body_len = u64::from_be_bytes(len_bytes);
    let stored = u32::from_be_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]);
    // Check the checksum before trusting any header field: a damaged length or version is
    // then reported as damage, not as a truncation or a future format.
    let body = &bytes[HEADER_LEN..];
    let computed = checksum(&bytes[8..18], body);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }
    let available = body.len() as u64;
    if available < body_len {
        return Err(SnapshotError::Truncated {
            len: bytes.len(),
            needed: HEADER_LEN as u64 + body_len,
        });
    }
    if available > body_len {
        return Err(SnapshotError::TrailingBytes(
            (available - body_len) as usize,
        ));
    }
    if version == 0 || version > CURRENT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    Ok((version, body))
}

fn checksum(header: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(header), body)
}

fn decode_exact<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    crate::cbor::decode_exact(body).map_err(|e| match e {
        CborError::Malformed(message) => message,
        CborError::TrailingBytes(n) => format!("{n} trailing bytes in body"),
    })
}

#[cfg(any(test, feature = "testing"))]
pub use v1::{ClusterStateV1, SnapshotV1};
#[cfg(any(test, feature = "testing"))]
pub use v2::{ClusterStateV2, RegionMaintainTaskV2, SnapshotV2};

/// Encodes a legacy v1 snapshot (fixture generation and upgrade tests only).
#[cfg(any(test, feature = "testing"))]
pub fn encode_v1(snapshot: &SnapshotV1) -> Result<Vec<u8>, SnapshotError> {
    let mut body = Vec::new();
    ciborium::into_writer(snapshot, &mut body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(frame(1, &body))
}

/// Encodes a legacy v2 snapshot (fixture generation and upgrade tests only).
#[cfg(any(test, feature = "testing"))]
pub fn encode_v2(snapshot: &SnapshotV2) -> Result<Vec<u8>, SnapshotError> {
    let mut body = Vec::new();
    ciborium::into_writer(snapshot, &mut body).map_err(|e| SnapshotError::Encode(e.to_string()))?;
    Ok(frame(2, &body))
}

#[cfg(test)]
mod tests;
