//! The durable procedure framework: resumable state machines that survive crashes, retries
//! and leader changes.
//!
//! # Model
//!
//! A [`Procedure`] is a state machine with a stable type code ([`ProcedureType::TYPE_CODE`]),
//! persistent data (one serde value, CBOR-encoded into [`ProcedureRecord::data`]), a current
//! state with an explicit numeric code ([`StateId`]), lock keys, and an async
//! [`Procedure::step`]. Everything that must survive a restart is in the persistent data;
//! anything rebuilt after a crash (clients, deadlines, caches) is reached through the
//! [`ProcedureContext`] (the embedding application's typed environment) and never persisted.
//!
//! A step returns a [`Step`]:
//! - [`Step::Continue`]: the new data/state is committed, then the next step runs;
//! - [`Step::Wait`]: committed as `Waiting` with a wake time; the procedure sleeps as a timer,
//!   holding no worker;
//! - [`Step::SpawnChildren`]: the parent's transition to `Suspended` and every child record are
//!   committed in ONE log entry; the parent's next step runs once every child finished, and
//!   reads their outcomes from [`ProcedureContext::children`];
//! - [`Step::Done`]: committed as `Succeeded` with an output.
//!
//! # Guarantees (what the executor promises)
//!
//! - **Persist before act.** A transition is committed through [`Consensus::propose`] (under
//!   the executor's epoch) before the next step runs. A failed commit is an error for that
//!   step: the procedure is reloaded from the committed record and the step is retried.
//!   Transitions are compare-and-set on the record's version, so a transition whose commit
//!   outcome was unknown is never applied twice (and never spawns its children twice).
//! - **Steps must be idempotent.** After a crash a step may run again from the last committed
//!   state, even if its side effects already happened. On any step error the in-memory
//!   procedure is discarded and rebuilt from the committed record.
//! - **No success after a stop.** A step that is running when the executor stops (leadership
//!   lost, shutdown, or a test kill) is dropped and records nothing; the next leader re-runs
//!   it. After [`ProcedureExecutor::shutdown`] returns, nothing more is committed.
//! - **Errors.** [`ProcedureError::is_retryable`] decides: retryable errors back off
//!   exponentially with jitter ([`BackoffPolicy`]); each failed attempt is recorded (attempts,
//!   last error). Non-retryable errors (or exhausted retries) start the rollback
//!   ([`Procedure::rollback`], status `RollingBack`, itself persisted step by step) where
//!   [`Procedure::supports_rollback`], else the procedure is `Failed` with the error recorded.
//! - **Leadership.** The [`ProcedureExecutor`] runs only while its node leads. On leadership
//!   at epoch E it reloads every unfinished procedure from [`ClusterState::procedures`],
//!   restores locks and parent/child links, and resumes them. Waiting procedures keep their
//!   remaining wait (bounded by the originally requested duration, since clock origins differ
//!   between nodes).
//! - **Locks.** [`LockKey`]s (shared/exclusive on a database, region group, DataNode or named
//!   resource) are taken all at once for the procedure's life. The grant rule is a pure
//!   function of the unfinished procedures: a procedure holds its locks iff no unfinished
//!   procedure with a smaller id (other than its own ancestors) conflicts with it. That is
//!   FIFO by id, deadlock-free, and recovery restores exactly the grants held before a crash.
//!   Children inherit their ancestors' locks (a conflict with an ancestor is no conflict).
//! - **Unknown type codes** are never run and never deleted; they show as `Unreadable` in the
//!   status API and keep holding their lock keys (their resources may be half-changed).
//! - **Retention.** Finished root procedures (with their finished descendants) stay queryable
//!   until a count/age bound ([`RetentionPolicy`]), then are deleted through the log.
//!
//! # Crash testing
//!
//! With the `testing` feature, `procedure::testing` provides persist hooks (kill just before
//! or after every commit) and generic harnesses that run any procedure to completion while
//! restarting the executor, changing the leader, or aborting and interrupting the rollback at
//! every step, comparing the end state with an uninterrupted run.
//!
//! [`Consensus::propose`]: crate::consensus::Consensus::propose
//! [`ClusterState::procedures`]: crate::state::ClusterState::procedures
//! [`ProcedureRecord::data`]: crate::state::ProcedureRecord::data
//! [`LockKey`]: crate::state::LockKey

mod backoff;
mod config;
mod context;
mod executor;
mod host;
mod locks;
mod registry;
mod retention;
mod session;
mod status;
mod transitions;

#[cfg(any(test, feature = "testing"))]
pub mod examples;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use backoff::BackoffPolicy;
pub use config::{ExecutorConfig, RetentionPolicy};
pub use context::{ChildOutcome, Environment, ProcedureContext};
pub use executor::ProcedureExecutor;
#[cfg(test)]
pub(crate) use host::step_context;
pub use locks::LockTable;
pub use registry::{ProcedureDecoder, ProcedureRegistry};
pub use status::{ProcedureInfo, ProcedureView, procedure_info};

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::consensus::ConsensusError;
use crate::model::ProcedureId;
use crate::runtime::BoxFuture;
use crate::state::{LockKey, Rejection};

/// A procedure state's stable code and its name (for status output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateId {
    /// Stable numeric code; never reused for another state of the same type.
    pub code: u32,
    /// Human-readable name.
    pub name: &'static str,
}

/// What a forward step asks the executor to do next.
pub enum Step {
    /// Commit the new state, then run the next step.
    Continue,
    /// Commit the new state as `Waiting`, then run the next step after `after`.
    Wait {
        /// How long to sleep.
        after: Duration,
        /// What it waits for, in words (status API).
        waiting_for: String,
    },
    /// Commit the new state and these children in one entry; resume when all finished.
    SpawnChildren(Vec<Box<dyn Procedure>>),
    /// Commit `Succeeded` with this output (CBOR, owned by the procedure type).
    Done(Vec<u8>),
    /// Commit nothing, hold no worker, and run this step again once `until` resolves (e.g. a
    /// long-poll of a DataNode task). The step must not have changed its persistent data:
    /// the next run starts from the last committed record. `waiting_for` shows in the status
    /// API meanwhile (on this leader; it is not persisted). A new leader simply re-runs the
    /// step.
    Await {
        /// Resolves when the step is worth running again.
        until: BoxFuture<()>,
        /// What it waits for, in words.
        waiting_for: String,
    },
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Continue => f.write_str("Continue"),
            Step::Wait { after, waiting_for } => f
                .debug_struct("Wait")
                .field("after", after)
                .field("waiting_for", waiting_for)
                .finish(),
            Step::SpawnChildren(children) => write!(f, "SpawnChildren({})", children.len()),
            Step::Done(output) => write!(f, "Done({} bytes)", output.len()),
            Step::Await { waiting_for, .. } => f
                .debug_struct("Await")
                .field("waiting_for", waiting_for)
                .finish(),
        }
    }
}

/// What a rollback step asks the executor to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackStep {
    /// Commit the new (rollback-progress) state, then run the next rollback step.
    Continue,
    /// Commit `RolledBack`.
    Done,
}

/// Why a step (or a framework call) failed. [`ProcedureError::is_retryable`] decides what the
/// executor does with a step's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcedureError {
    /// A transient failure (unreachable peer, timeout): retried with backoff.
    #[error("retryable: {0}")]
    Retryable(String),
    /// A permanent failure: the procedure rolls back (if supported) or fails.
    #[error("{0}")]
    Abort(String),
    /// A commit through the consensus seam failed.
    #[error("commit failed: {0}")]
    Consensus(#[from] ConsensusError),
    /// A plan proposed by a step was refused by the state machine.
    #[error("plan rejected: {0}")]
    Rejected(#[from] Rejection),
    /// Persistent data could not be encoded or decoded.
    #[error("procedure data: {0}")]
    Data(String),
    /// No procedure type is registered under this code.
    #[error("unknown procedure type code {0}")]
    UnknownType(u32),
    /// No procedure with this id.
    #[error("unknown procedure {0}")]
    UnknownProcedure(ProcedureId),
    /// This node does not lead, or the executor is not running.
    #[error("not the leader")]
    NotLeader,
    /// The executor stopped (leadership lost, shutdown, or a test kill); nothing was recorded.
    #[error("executor stopped")]
    Stopped,
    /// The environment does not hold the type a procedure asked for.
    #[error("environment lacks {0}")]
    MissingEnvironment(&'static str),
    /// A peer has seen a newer leader epoch than this executor's: this leader is deposed or
    /// fenced. The session stops; the ConfigNode claims a higher epoch or steps down.
    #[error("{peer} has seen epoch {seen}, above this leader's")]
    StaleLeader {
        /// The peer that refused, in words (e.g. `dn-2`).
        peer: String,
        /// The highest epoch it has seen.
        seen: crate::model::Epoch,
    },
}

impl ProcedureError {
    /// Whether running the same step again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProcedureError::Retryable(_) => true,
            // A failed commit is retried when the consensus says a retry may succeed (an I/O
            // error, an unknown outcome); leadership loss and fatal failures stop the session.
            ProcedureError::Consensus(e) => e.is_retryable(),
            ProcedureError::Abort(_)
            | ProcedureError::Rejected(_)
            | ProcedureError::Data(_)
            | ProcedureError::UnknownType(_)
            | ProcedureError::UnknownProcedure(_)
            | ProcedureError::NotLeader
            | ProcedureError::Stopped
            | ProcedureError::MissingEnvironment(_)
            | ProcedureError::StaleLeader { .. } => false,
        }
    }

    /// Whether the error means the executor must stop (it no longer leads or was stopped).
    pub fn is_stop(&self) -> bool {
        match self {
            ProcedureError::Stopped
            | ProcedureError::NotLeader
            | ProcedureError::StaleLeader { .. } => true,
            ProcedureError::Consensus(e) => e.is_leadership_loss() || e.is_fatal(),
            _ => false,
        }
    }
}

/// A durable, resumable state machine. See the module docs for the contract.
///
/// Implementations also implement [`ProcedureType`] so a [`ProcedureRegistry`] can rebuild
/// them from their record.
#[async_trait]
pub trait Procedure: Send + 'static {
    /// Stable code of the procedure type (equal to [`ProcedureType::TYPE_CODE`]).
    fn type_code(&self) -> u32;
    /// Human-readable type name (equal to [`ProcedureType::TYPE_NAME`]).
    fn type_name(&self) -> &'static str;
    /// The current state.
    fn state(&self) -> StateId;
    /// The persistent data, encoded (usually [`encode_data`] of the data struct).
    fn encode(&self) -> Result<Vec<u8>, ProcedureError>;
    /// Locks held for the procedure's whole life. Read once, at submission.
    fn lock_keys(&self) -> Vec<LockKey>;
    /// Runs one forward step. Must be idempotent: it may run again from the same committed
    /// state after a crash, even if its side effects already happened.
    async fn step(&mut self, ctx: &ProcedureContext) -> Result<Step, ProcedureError>;
    /// Whether a non-retryable error starts [`Procedure::rollback`] (else: `Failed`).
    fn supports_rollback(&self) -> bool {
        false
    }
    /// Runs one rollback step from the last committed state (which may be any forward state,
    /// and the failed step's side effects may have happened). Idempotent, like `step`.
    async fn rollback(&mut self, ctx: &ProcedureContext) -> Result<RollbackStep, ProcedureError> {
        let _ = ctx;
        Ok(RollbackStep::Done)
    }
}

/// The static side of a procedure type: its code, name and decoder.
pub trait ProcedureType: Procedure + Sized {
    /// Stable type code; never reused for another type.
    const TYPE_CODE: u32;
    /// Human-readable type name.
    const TYPE_NAME: &'static str;
    /// Rebuilds the procedure from its persistent data.
    fn decode(data: &[u8]) -> Result<Self, ProcedureError>;
}

/// CBOR-encodes persistent data.
pub fn encode_data<T: Serialize>(value: &T) -> Result<Vec<u8>, ProcedureError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| ProcedureError::Data(e.to_string()))?;
    Ok(out)
}

/// Decodes CBOR persistent data written by [`encode_data`].
pub fn decode_data<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProcedureError> {
    ciborium::from_reader(bytes).map_err(|e| ProcedureError::Data(e.to_string()))
}

/// Sorts and deduplicates lock keys; a resource asked both shared and exclusive is exclusive.
pub fn normalize_lock_keys(mut keys: Vec<LockKey>) -> Vec<LockKey> {
    keys.sort();
    let mut out: Vec<LockKey> = Vec::with_capacity(keys.len());
    for key in keys {
        match out.last_mut() {
            Some(last) if last.resource == key.resource => {
                // `Ord` puts Shared before Exclusive for one resource: keep the stronger.
                last.mode = last.mode.max(key.mode);
            }
            _ => out.push(key),
        }
    }
    out
}

#[cfg(test)]
mod tests;
