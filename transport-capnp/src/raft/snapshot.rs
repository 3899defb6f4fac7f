//! Snapshots in checksummed chunks: how a sender cuts one ([`chunks`]) and how a receiver
//! puts it back together ([`Assembly`]), refusing any chunk that is damaged, out of order or
//! from another transfer, and the whole when its length or checksum is wrong.

use shoal_core::api::ApiError;

/// One chunk of a snapshot transfer (the wire's `SnapshotChunk`, owned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    /// Names the transfer.
    pub transfer_id: String,
    /// Where `data` starts in the snapshot.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// crc32c of `data`.
    pub data_crc: u32,
    /// The whole snapshot's length.
    pub total_length: u64,
    /// crc32c of the whole snapshot.
    pub total_crc: u32,
    /// The final chunk.
    pub last: bool,
}

/// Cuts `bytes` into chunks of at most `chunk_size` bytes (at least one chunk, even for an
/// empty snapshot), all naming `transfer_id`.
pub(crate) fn chunks(transfer_id: &str, bytes: &[u8], chunk_size: usize) -> Vec<Chunk> {
    let total_crc = crc32c::crc32c(bytes);
    let total_length = bytes.len() as u64;
    let size = chunk_size.max(1);
    let mut out: Vec<Chunk> = bytes
        .chunks(size)
        .scan(0u64, |offset, data| {
            let chunk = Chunk {
                transfer_id: transfer_id.to_string(),
                offset: *offset,
                data: data.to_vec(),
                data_crc: crc32c::crc32c(data),
                total_length,
                total_crc,
                last: false,
            };
            *offset += data.len() as u64;
            Some(chunk)
        })
        .collect();
    if out.is_empty() {
        out.push(Chunk {
            transfer_id: transfer_id.to_string(),
            offset: 0,
            data: Vec::new(),
            data_crc: crc32c::crc32c(&[]),
            total_length,
            total_crc,
            last: false,
        });
    }
    if let Some(last) = out.last_mut() {
        last.last = true;
    }
    out
}

/// A transfer being received.
#[derive(Debug)]
pub(crate) struct Assembly {
    transfer_id: String,
    total_length: u64,
    total_crc: u32,
    bytes: Vec<u8>,
}

fn retry(message: String) -> ApiError {
    ApiError::Remote {
        message,
        retryable: true,
    }
}

impl Assembly {
    /// Takes `chunk` into the transfer in `slot`: a chunk at offset 0 starts a new one; any
    /// other must continue the transfer in `slot` exactly where it ends. Returns the whole
    /// snapshot once the last chunk checks out. Any refusal clears `slot` (the sender starts
    /// over); a snapshot longer than `max_length` is refused outright.
    pub(crate) fn accept(
        slot: &mut Option<Assembly>,
        chunk: Chunk,
        max_length: u64,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        let outcome = Self::accept_inner(slot, chunk, max_length);
        if outcome.is_err() {
            *slot = None;
        }
        outcome
    }

    fn accept_inner(
        slot: &mut Option<Assembly>,
        chunk: Chunk,
        max_length: u64,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        if crc32c::crc32c(&chunk.data) != chunk.data_crc {
            return Err(retry(format!(
                "snapshot chunk at offset {} of transfer {} is damaged (checksum)",
                chunk.offset, chunk.transfer_id
            )));
        }
        if chunk.total_length > max_length {
            return Err(ApiError::Refused(format!(
                "snapshot of {} bytes exceeds the {max_length}-byte limit",
                chunk.total_length
            )));
        }
        if chunk.offset == 0 {
            *slot = Some(Assembly {
                transfer_id: chunk.transfer_id.clone(),
                total_length: chunk.total_length,
                total_crc: chunk.total_crc,
                bytes: Vec::new(),
            });
        }
        let Some(assembly) = slot.as_mut() else {
            return Err(retry(format!(
                "snapshot chunk at offset {} of transfer {} arrived with no transfer under way",
                chunk.offset, chunk.transfer_id
            )));
        };
        if assembly.transfer_id != chunk.transfer_id
            || assembly.total_length != chunk.total_length
            || assembly.total_crc != chunk.total_crc
            || assembly.bytes.len() as u64 != chunk.offset
        {
            return Err(retry(format!(
                "snapshot chunk at offset {} of transfer {} is out of order (have {} bytes of {})",
                chunk.offset,
                chunk.transfer_id,
                assembly.bytes.len(),
                assembly.transfer_id
            )));
        }
        if assembly.bytes.len() as u64 + chunk.data.len() as u64 > assembly.total_length {
            return Err(retry(format!(
                "snapshot transfer {} overruns its {} bytes",
                chunk.transfer_id, assembly.total_length
            )));
        }
        assembly.bytes.extend_from_slice(&chunk.data);
        if !chunk.last {
            return Ok(None);
        }
        let Some(done) = slot.take() else {
            return Ok(None);
        };
        if done.bytes.len() as u64 != done.total_length {
            return Err(retry(format!(
                "snapshot transfer {} ended after {} of {} bytes",
                done.transfer_id,
                done.bytes.len(),
                done.total_length
            )));
        }
        if crc32c::crc32c(&done.bytes) != done.total_crc {
            return Err(retry(format!(
                "snapshot transfer {} is damaged (whole checksum)",
                done.transfer_id
            )));
        }
        Ok(Some(done.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 30;

    fn snapshot() -> Vec<u8> {
        (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn receive(chunks: Vec<Chunk>) -> Result<Option<Vec<u8>>, ApiError> {
        let mut slot = None;
        let mut out = None;
        for chunk in chunks {
            out = Assembly::accept(&mut slot, chunk, MAX)?;
        }
        Ok(out)
    }

    #[test]
    fn chunks_reassemble_to_the_snapshot() {
        let bytes = snapshot();
        let parts = chunks("t1", &bytes, 3000);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().rev().skip(1).all(|c| !c.last));
        assert_eq!(receive(parts), Ok(Some(bytes)));
        assert_eq!(receive(chunks("t0", &[], 10)), Ok(Some(Vec::new())));
    }

    #[test]
    fn a_damaged_chunk_is_refused_and_the_transfer_starts_over() {
        let bytes = snapshot();
        let mut parts = chunks("t1", &bytes, 3000);
        parts[1].data[5] ^= 1;
        let mut slot = None;
        assert_eq!(Assembly::accept(&mut slot, parts[0].clone(), MAX), Ok(None));
        let refused = Assembly::accept(&mut slot, parts[1].clone(), MAX);
        assert!(
            matches!(&refused, Err(e) if e.is_retryable()),
            "{refused:?}"
        );
        assert!(slot.is_none(), "the transfer was dropped");
        // A damaged chunk with a matching chunk checksum is caught by the whole checksum.
        let mut forged = chunks("t2", &bytes, 3000);
        forged[2].data[0] ^= 1;
        forged[2].data_crc = crc32c::crc32c(&forged[2].data);
        assert!(matches!(receive(forged), Err(e) if e.to_string().contains("whole checksum")));
    }

    #[test]
    fn out_of_order_foreign_and_oversized_chunks_are_refused() {
        let bytes = snapshot();
        let parts = chunks("t1", &bytes, 3000);
        // Skipping a chunk.
        assert!(receive(vec![parts[0].clone(), parts[2].clone()]).is_err());
        // A chunk of another transfer in the middle.
        let other = chunks("t2", &bytes, 3000);
        assert!(receive(vec![parts[0].clone(), other[1].clone()]).is_err());
        // Without its first chunk.
        assert!(receive(vec![parts[1].clone()]).is_err());
        // A restart at offset 0 replaces the old transfer.
        let mut restarted = vec![parts[0].clone(), parts[1].clone()];
        restarted.extend(other);
        assert_eq!(receive(restarted), Ok(Some(bytes.clone())));
        let mut slot = None;
        assert!(matches!(
            Assembly::accept(&mut slot, parts[0].clone(), 100),
            Err(ApiError::Refused(_))
        ));
    }
}
