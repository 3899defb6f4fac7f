//! The status API's view of a procedure.

use crate::coded_enum;
use crate::model::{DatabaseName, ProcedureId};
use crate::state::{LockResource, ProcedureRecord, ProcedureStatus};

use super::ProcedureRegistry;

coded_enum! {
    /// A procedure's status as the status API reports it.
    pub enum ProcedureView {
        /// Runnable: running a step or queued for a worker.
        Running = 1,
        /// Sleeping (a requested wait, a retry backoff) or waiting for locks.
        Waiting = 2,
        /// Waiting for its children.
        Suspended = 3,
        /// Running its rollback.
        RollingBack = 4,
        /// Finished with success.
        Succeeded = 10,
        /// Finished with an error.
        Failed = 11,
        /// Finished after rolling back.
        RolledBack = 12,
        /// Its type code is unknown to this build (or its data does not decode): kept, never
        /// run, never deleted.
        Unreadable = 20,
    }
}

impl ProcedureView {
    /// Whether a procedure in this status will never run again.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            ProcedureView::Succeeded | ProcedureView::Failed | ProcedureView::RolledBack
        )
    }
}

/// One procedure as the status API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct ProcedureInfo {
    pub id: ProcedureId,
    pub type_code: u32,
    pub type_name: String,
    pub state_code: u32,
    pub state_name: String,
    pub status: ProcedureView,
    /// Parent, if a child.
    pub parent: Option<ProcedureId>,
    /// Children, in spawn order.
    pub children: Vec<ProcedureId>,
    /// Submission time (ms, submitting leader's clock).
    pub submitted_at_ms: u64,
    /// Last transition time (ms, that leader's clock).
    pub updated_at_ms: u64,
    /// Submission time, wall clock (Unix ms; 0 when unknown).
    pub submitted_unix_ms: u64,
    /// Last transition time, wall clock (Unix ms; 0 when unknown).
    pub updated_unix_ms: u64,
    /// Failed attempts of the current step.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// What it waits for, in words.
    pub waiting_for: Option<String>,
    /// Output, if it succeeded.
    pub output: Option<Vec<u8>>,
    /// The client request key it was submitted with.
    pub request_key: Option<String>,
    /// The database it works in (from its database lock; `None` for procedures that lock
    /// none, such as a child removing one region group: see its parent's).
    pub database: Option<DatabaseName>,
    /// What an operator should know beyond the status (e.g. replicas whose deletion was
    /// abandoned on a DataNode removed for good); filled in by the ConfigNode's admin API.
    pub notes: Vec<String>,
}

impl ProcedureInfo {
    /// Whether it will never run again.
    pub const fn is_finished(&self) -> bool {
        self.status.is_finished()
    }
}

/// The status of `record` from its durable fields alone (the executor adds volatile detail
/// such as lock waits).
pub fn procedure_info(record: &ProcedureRecord, registry: &ProcedureRegistry) -> ProcedureInfo {
    let status = if !registry.contains(record.type_code) {
        ProcedureView::Unreadable
    } else {
        match record.status {
            ProcedureStatus::Runnable if record.wake_at_ms.is_some() => ProcedureView::Waiting,
            ProcedureStatus::Runnable => ProcedureView::Running,
            ProcedureStatus::Waiting => ProcedureView::Waiting,
            ProcedureStatus::Suspended => ProcedureView::Suspended,
            ProcedureStatus::RollingBack => ProcedureView::RollingBack,
            ProcedureStatus::Succeeded => ProcedureView::Succeeded,
            ProcedureStatus::Failed => ProcedureView::Failed,
            ProcedureStatus::RolledBack => ProcedureView::RolledBack,
        }
    };
    let waiting_for = match status {
        ProcedureView::Unreadable => Some(format!(
            "a build that knows procedure type code {}",
            record.type_code
        )),
        ProcedureView::Suspended if record.waiting_for.is_none() => {
            Some(format!("{} children", record.children.len()))
        }
        _ => record.waiting_for.clone(),
    };
    ProcedureInfo {
        id: record.id,
        type_code: record.type_code,
        type_name: record.type_name.clone(),
        state_code: record.state_code,
        state_name: record.state_name.clone(),
        status,
        parent: record.parent,
        children: record.children.clone(),
        submitted_at_ms: record.submitted_at_ms,
        updated_at_ms: record.updated_at_ms,
        submitted_unix_ms: record.submitted_unix_ms,
        updated_unix_ms: record.updated_unix_ms,
        attempts: record.attempts,
        last_error: record.last_error.clone(),
        waiting_for,
        output: record.output.as_ref().map(|o| o.to_vec()),
        request_key: record.request_key.clone(),
        database: record.lock_keys.iter().find_map(|key| match &key.resource {
            LockResource::Database(name) => Some(name.clone()),
            _ => None,
        }),
        notes: Vec::new(),
    }
}
