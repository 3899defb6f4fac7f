//! What core reports for metrics, and where it goes.
//!
//! Core emits [`MetricEvent`]s at the few places only it can see (a step's duration, a
//! commit's latency, a DataNode task's duration and outcome, an fsync's latency, an RPC's
//! outcome); everything else an operator wants (procedures by status, queue depths, the
//! epoch, DataNode status, regions and bytes) is read from the state when metrics are
//! scraped. The embedding process installs one [`MetricsSink`] (the `shoal` binary turns
//! events into Prometheus families); until it does, events go nowhere and cost one atomic
//! load.
//!
//! **Decision:** one process-wide sink rather than a handle threaded through every
//! constructor: metrics are observations, never inputs, so a global cannot change behaviour
//! (the simulator and tests never install one), and every crate (storage-fs, the transports)
//! reports through the same function without new parameters.

use std::sync::OnceLock;
use std::time::Duration;

/// How a step, task or call ended, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// It succeeded.
    Success,
    /// It failed for good.
    Failure,
    /// It will be retried (a retryable error, a wait).
    Retry,
}

impl Outcome {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Retry => "retry",
        }
    }
}

/// Which durable file an fsync covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SyncedFile {
    /// The ConfigNode's consensus log.
    Log,
    /// A DataNode's task journal.
    Journal,
}

impl SyncedFile {
    /// The label value.
    pub const fn label(self) -> &'static str {
        match self {
            SyncedFile::Log => "log",
            SyncedFile::Journal => "journal",
        }
    }
}

/// One observation.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricEvent {
    /// A procedure step ran (its commit not included).
    Step {
        /// The procedure type's name.
        procedure: &'static str,
        /// How it ended.
        outcome: Outcome,
        /// How long the step ran.
        duration: Duration,
    },
    /// A commit through the consensus seam finished.
    Commit {
        /// Whether it was committed and applied.
        ok: bool,
        /// How long it took.
        duration: Duration,
    },
    /// A DataNode maintain task finished.
    Task {
        /// The task kind's name.
        kind: &'static str,
        /// How it ended.
        outcome: Outcome,
        /// How long it ran.
        duration: Duration,
    },
    /// An fsync/fdatasync finished.
    Fsync {
        /// What was synced.
        file: SyncedFile,
        /// How long it took.
        duration: Duration,
    },
    /// An RPC call this node served finished (recorded by the server's dispatch, so every
    /// caller, the CLI included, is counted once).
    Rpc {
        /// The method's name (`Service.method`, e.g. `DataNode.submitTask`).
        method: &'static str,
        /// How it ended.
        outcome: Outcome,
    },
}

/// Where metric events go.
pub trait MetricsSink: Send + Sync + 'static {
    /// Records one event. Called on hot paths: must not block.
    fn record(&self, event: MetricEvent);
}

static SINK: OnceLock<Box<dyn MetricsSink>> = OnceLock::new();

/// Installs the process's sink; only the first call takes effect (returns whether it did).
pub fn install(sink: Box<dyn MetricsSink>) -> bool {
    SINK.set(sink).is_ok()
}

/// Records `event` in the installed sink, if any.
pub fn record(event: MetricEvent) {
    if let Some(sink) = SINK.get() {
        sink.record(event);
    }
}

/// Whether a sink is installed (callers may skip building costly events otherwise).
pub fn enabled() -> bool {
    SINK.get().is_some()
}
