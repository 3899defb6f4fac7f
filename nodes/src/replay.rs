//! [`ThreadedDecoder`]: the ConfigNode's replay decodes each batch of log entries on every
//! core (recovery is mostly decoding; the plans are still applied in index order, by core).

use std::num::NonZeroUsize;

use shoal_core::consensus::{ReplayDecoder, decode_entries};
use shoal_core::plan::{ConfigPlan, PlanDecodeError};
use shoal_core::storage::LogEntry;

/// Batches smaller than this are decoded on the calling thread (a thread costs more).
const MIN_PARALLEL_BATCH: usize = 512;
/// Most threads one batch is split over.
const MAX_THREADS: usize = 8;

/// Splits each batch into contiguous chunks, one per thread (the caller's included), and
/// concatenates their results in order.
#[derive(Debug, Clone, Copy)]
pub struct ThreadedDecoder {
    threads: usize,
}

impl ThreadedDecoder {
    /// One thread per available core (at most [`MAX_THREADS`]).
    pub fn per_core() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Self::with_threads(cores)
    }

    /// Exactly `threads` threads per batch (at least 1, at most [`MAX_THREADS`]).
    pub fn with_threads(threads: usize) -> Self {
        Self {
            threads: threads.clamp(1, MAX_THREADS),
        }
    }
}

impl ReplayDecoder for ThreadedDecoder {
    fn decode_batch(&self, entries: &[LogEntry]) -> Vec<Result<ConfigPlan, PlanDecodeError>> {
        if self.threads == 1 || entries.len() < MIN_PARALLEL_BATCH {
            return decode_entries(entries);
        }
        let chunk = entries.len().div_ceil(self.threads);
        std::thread::scope(|scope| {
            let mut chunks = entries.chunks(chunk);
            let mine = chunks.next().unwrap_or_default();
            let others: Vec<_> = chunks
                .map(|c| scope.spawn(move || decode_entries(c)))
                .collect();
            let mut plans = decode_entries(mine);
            for other in others {
                // Decoding does not panic on any input; if it did, the panic is the caller's.
                match other.join() {
                    Ok(decoded) => plans.extend(decoded),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            plans
        })
    }
}

#[cfg(test)]
mod tests;
