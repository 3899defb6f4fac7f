//! The `CopyRegion` maintain task: pull a region's data from a replica on another DataNode
//! into the local replica, in checksummed chunks.
//!
//! Protocol (the target drives it; the source only answers reads):
//! 1. The local replica must exist (the ConfigNode created it, footprint first).
//! 2. Resume: if it already holds `n > 0` bytes (an earlier task, or this one before a
//!    crash), its digest of `[0, n)` is compared with the source's digest of the same prefix.
//!    Equal: the copy carries on at `n`. Different (a torn write, or a source that was not
//!    the one copied from): the local data is discarded and the copy starts over.
//! 3. Stream: `read_region(offset, chunk)` until a chunk comes back empty at the source's
//!    end; each chunk's crc32c is checked before it is written at its offset. Reads go out
//!    `copy_window` chunks at a time, and the next window is in flight while one is
//!    written. Local writes are made durable every
//!    `copy_checkpoint_bytes` and at the end.
//! 4. A source that fails to answer (unreachable, timeout, a retryable error, a chunk whose
//!    checksum does not match) is retried from the same offset with backoff; a copy that
//!    makes no progress for `copy_stall_timeout` fails (the ConfigNode resubmits under a new
//!    id, perhaps from another source, and the new task resumes). Non-retryable answers fail
//!    at once.
//!
//! `Success` means every byte the source held when the last chunk was read is durable here;
//! the ConfigNode then compares whole-replica digests before it publishes the copy.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{ApiError, DataNodeApi, RegionChunk, RegionDigest, TaskStatus};
use crate::model::{DataNodeLocation, RegionId};
use crate::storage::{RegionStore, StorageError};

use super::Inner;

/// Bytes read per step when checksumming a local replica.
const DIGEST_READ_BYTES: usize = 4 << 20;

/// crc32c of the first `len` bytes of `region` in `store` (all of it with `None`).
pub(crate) async fn local_digest(
    store: &dyn RegionStore,
    region: RegionId,
    len: Option<u64>,
) -> Result<RegionDigest, StorageError> {
    let region_len = store
        .size(region)
        .await?
        .ok_or(StorageError::RegionNotFound(region))?;
    let len = len.map_or(region_len, |len| len.min(region_len));
    let mut crc = 0u32;
    let mut offset = 0u64;
    while offset < len {
        let want = usize::try_from(len - offset)
            .unwrap_or(usize::MAX)
            .min(DIGEST_READ_BYTES);
        let bytes = store.read_at(region, offset, want).await?;
        if bytes.is_empty() {
            // Shrunk while being read: the digest covers what was there.
            break;
        }
        crc = crc32c::crc32c_append(crc, &bytes);
        offset += bytes.len() as u64;
    }
    Ok(RegionDigest {
        len: offset,
        crc32c: crc,
        region_len,
    })
}

/// Why a copy stopped: the task's `Fail` reason.
struct CopyFailed(String);

/// Runs one `CopyRegion` task to a terminal status.
pub(crate) async fn copy_region(
    inner: &Inner,
    region: RegionId,
    source: &DataNodeLocation,
) -> TaskStatus {
    match run(inner, region, source).await {
        Ok(bytes) => {
            tracing::info!(data_node = %inner.id_label(), %region, source = %source.id,
                bytes, "region copied");
            TaskStatus::Success
        }
        Err(CopyFailed(reason)) => TaskStatus::Fail(reason),
    }
}

async fn run(
    inner: &Inner,
    region: RegionId,
    source: &DataNodeLocation,
) -> Result<u64, CopyFailed> {
    let store = inner.store.as_ref();
    let peer = inner.peer_client(source).await.ok_or_else(|| {
        CopyFailed(format!(
            "no transport to other DataNodes was configured within {:?}",
            inner.config.copy_stall_timeout
        ))
    })?;
    let local = local_digest(store, region, None)
        .await
        .map_err(|e| CopyFailed(format!("reading local replica of {region}: {e}")))?;
    let mut offset = local.len;
    if offset > 0 {
        let theirs = with_retry(inner, source, "a digest", || {
            peer.region_digest(region, Some(offset))
        })
        .await?;
        if theirs.len == local.len && theirs.crc32c == local.crc32c {
            tracing::info!(data_node = %inner.id_label(), %region, source = %source.id,
                offset, "copy resumes after the bytes already copied");
        } else {
            tracing::warn!(data_node = %inner.id_label(), %region, source = %source.id,
                local = local.len, "local bytes differ from the source's; copy starts over");
            store
                .write_at(region, 0, Vec::new())
                .await
                .map_err(|e| CopyFailed(format!("discarding local data of {region}: {e}")))?;
            offset = 0;
        }
    }
    let chunk = inner.config.copy_chunk_bytes.max(1);
    let window = inner.config.copy_window.max(1);
    let checkpoint = inner.config.copy_checkpoint_bytes.max(1);
    let mut unsynced = 0u64;
    // `window` consecutive chunks are read at once; the next window travels while this one
    // is written. A window ends at the first chunk short of `chunk` bytes (the source's end
    // when it was read).
    let read_window = |at: u64| {
        let peer = peer.clone();
        async move {
            let reads: Vec<_> = (0..window as u64)
                .map(|i| {
                    let peer = peer.clone();
                    let at = at + i * u64::from(chunk);
                    Box::pin(with_retry(inner, source, "a chunk read", move || {
                        let peer = peer.clone();
                        async move {
                            let read = peer.read_region(region, at, chunk).await?;
                            check_chunk(&read, at)?;
                            Ok(read)
                        }
                    }))
                })
                .collect();
            let mut chunks = Vec::with_capacity(window);
            for read in crate::util::join_all(reads, window).await {
                let read = read?;
                let short = read.data.len() < chunk as usize;
                chunks.push(read);
                if short {
                    break;
                }
            }
            Ok::<_, CopyFailed>(chunks)
        }
    };
    let mut next = read_window(offset).await?;
    loop {
        let len: u64 = next.iter().map(|c| c.data.len() as u64).sum();
        if len == 0 {
            break;
        }
        let (at, chunks) = (offset, std::mem::take(&mut next));
        let write = async move {
            let mut at = at;
            for read in chunks {
                let len = read.data.len() as u64;
                store
                    .write_at(region, at, read.data)
                    .await
                    .map_err(|e| CopyFailed(format!("writing {region} at {at}: {e}")))?;
                at += len;
            }
            Ok::<(), CopyFailed>(())
        };
        let (written, following) =
            futures_lite::future::zip(write, read_window(offset + len)).await;
        written?;
        offset += len;
        unsynced += len;
        if unsynced >= checkpoint {
            sync(store, region).await?;
            unsynced = 0;
        }
        next = following?;
    }
    sync(store, region).await?;
    Ok(offset)
}

async fn sync(store: &dyn RegionStore, region: RegionId) -> Result<(), CopyFailed> {
    store
        .sync(region)
        .await
        .map_err(|e| CopyFailed(format!("syncing {region}: {e}")))
}

/// A chunk must start where it was asked for and match its checksum.
fn check_chunk(chunk: &RegionChunk, offset: u64) -> Result<(), ApiError> {
    if chunk.offset != offset {
        return Err(ApiError::Malformed(format!(
            "chunk at {} answered a read at {offset}",
            chunk.offset
        )));
    }
    let crc = crc32c::crc32c(&chunk.data);
    if crc != chunk.crc32c {
        // Damaged on the way: read it again.
        return Err(ApiError::Remote {
            message: format!(
                "chunk at {offset} has checksum {crc:#010x}, sender said {:#010x}",
                chunk.crc32c
            ),
            retryable: true,
        });
    }
    Ok(())
}

/// Runs `call` until it succeeds, retrying retryable errors with backoff while the copy has
/// made progress within `copy_stall_timeout`. Halting the node drops it (the runner races
/// the halt).
async fn with_retry<T, F, Fut>(
    inner: &Inner,
    source: &DataNodeLocation,
    what: &str,
    mut call: F,
) -> Result<T, CopyFailed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let clock = &inner.rt.clock;
    let deadline = clock
        .now_ms()
        .saturating_add(inner.config.copy_stall_timeout.as_millis() as u64);
    let mut delay = Duration::from_millis(20);
    loop {
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_retryable() && clock.now_ms() < deadline => {
                tracing::debug!(data_node = %inner.id_label(), source = %source.id,
                    "{what} failed, retrying: {error}");
                clock.sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                return Err(CopyFailed(format!(
                    "{what} from {} ({}) failed: {error}",
                    source.id, source.address
                )));
            }
        }
    }
}

impl Inner {
    /// A client of `source` once the embedding process gave this node its peer transport
    /// (waited for up to `copy_stall_timeout`: tasks resumed at start-up run before it is
    /// set).
    async fn peer_client(&self, source: &DataNodeLocation) -> Option<Arc<dyn DataNodeApi>> {
        let deadline = self
            .rt
            .clock
            .now_ms()
            .saturating_add(self.config.copy_stall_timeout.as_millis() as u64);
        loop {
            if let Some(peers) = self.peers.get() {
                return Some(peers.client(source));
            }
            let listener = self.peers_set.listen();
            if let Some(peers) = self.peers.get() {
                return Some(peers.client(source));
            }
            let now = self.rt.clock.now_ms();
            if now >= deadline {
                return None;
            }
            let timeout = self.rt.clock.sleep(Duration::from_millis(deadline - now));
            futures_lite::future::or(listener, timeout).await;
        }
    }
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
