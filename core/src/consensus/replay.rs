//! [`ReplayDecoder`]: how replay turns a batch of log entries into plans.
//!
//! Decoding is most of a recovery's work and each entry decodes on its own, so a deployment
//! may spread a batch over threads. Core starts none itself (everything in core also runs in
//! the simulator, where threads come only through the runtime seam): [`SequentialDecoder`]
//! is the default, and the `shoal` binary passes one that uses its cores. Only decoding is
//! handed out; plans are applied in index order by [`super::LocalConsensus`] alone.

use crate::plan::{ConfigPlan, PlanDecodeError};
use crate::storage::LogEntry;

#[cfg(any(test, feature = "testing"))]
mod adversarial;
#[cfg(any(test, feature = "testing"))]
pub use adversarial::adversarial_history;

/// Decodes a batch of log entries for replay.
pub trait ReplayDecoder: Send + Sync + 'static {
    /// The plan of every entry of `entries`, in the same order: the `i`-th result is
    /// [`ConfigPlan::decode`] of `entries[i].payload`, whichever thread computed it.
    fn decode_batch(&self, entries: &[LogEntry]) -> Vec<Result<ConfigPlan, PlanDecodeError>>;
}

/// Decodes on the calling thread, one entry after another.
#[derive(Debug, Clone, Copy, Default)]
pub struct SequentialDecoder;

impl ReplayDecoder for SequentialDecoder {
    fn decode_batch(&self, entries: &[LogEntry]) -> Vec<Result<ConfigPlan, PlanDecodeError>> {
        decode_entries(entries)
    }
}

/// [`ConfigPlan::decode`] of each entry, in order (the building block of every decoder).
pub fn decode_entries(entries: &[LogEntry]) -> Vec<Result<ConfigPlan, PlanDecodeError>> {
    entries
        .iter()
        .map(|entry| ConfigPlan::decode(&entry.payload))
        .collect()
}
