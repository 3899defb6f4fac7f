//! The DataNode's task journal: record types with explicit numeric codes, their encoding,
//! the typed replay error, and the writer that appends and compacts. (Replaying records into
//! the task table lives with the table, in `tasks.rs`.)
//!
//! Encoding of one record: `code: u16 BE | crc32c(code ‖ body): u32 BE | body: CBOR`. Codes
//! are assigned in [`RecordCode`] and never change meaning; an unknown code, a bad checksum
//! or a malformed body is a typed [`JournalDecodeError`], never a silently dropped record.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::api::{MaintainTaskKind, TaskStatus};
use crate::coded_enum;
use crate::model::{DataNodeLocation, Epoch, RegionId, TaskId};
use crate::runtime::Millis;
use crate::storage::{Staged, StorageError, TaskJournal};

/// Bytes before a record's CBOR body: the code and the checksum.
pub const RECORD_HEADER_LEN: usize = 6;

coded_enum! {
    /// The kind of a journal record. Stable on disk.
    pub enum RecordCode {
        /// The highest leader epoch seen rose.
        EpochSeen = 1,
        /// A maintain task was accepted (written before it starts and before Accepted).
        TaskAccepted = 2,
        /// A task reached a terminal status.
        TaskFinished = 3,
        /// A terminal result was forgotten (acked, or evicted by the retention bound).
        TaskForgotten = 4,
        /// A region is fenced against creates up to a generation (kept through compaction
        /// after the deletion that fenced it was forgotten).
        RegionFenced = 5,
    }
}

coded_enum! {
    /// The kind of a maintain task as stored. Stable on disk; new kinds take new codes.
    pub enum MaintainKindCode {
        /// [`MaintainTaskKind::DeleteRegionPeer`].
        DeleteRegionPeer = 1,
        /// [`MaintainTaskKind::CopyRegion`].
        CopyRegion = 2,
    }
}

coded_enum! {
    /// A terminal outcome as stored.
    pub enum OutcomeCode {
        /// [`TaskStatus::Success`].
        Success = 1,
        /// [`TaskStatus::Fail`].
        Fail = 2,
    }
}

coded_enum! {
    /// Why a result was forgotten.
    pub enum ForgetReason {
        /// The coordinator acked it.
        Acked = 1,
        /// The retention bound (count or age) evicted it unacked.
        Evicted = 2,
    }
}

/// A maintain task's kind in its stored form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub struct StoredTaskKind {
    pub code: MaintainKindCode,
    /// The region it operates on.
    pub region: RegionId,
    /// The creation generation a deletion covers (0 in records written before generations).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub generation: u64,
    /// The DataNode a copy pulls from (`CopyRegion` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DataNodeLocation>,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl From<&MaintainTaskKind> for StoredTaskKind {
    fn from(kind: &MaintainTaskKind) -> Self {
        match kind {
            MaintainTaskKind::DeleteRegionPeer { region, generation } => StoredTaskKind {
                code: MaintainKindCode::DeleteRegionPeer,
                region: *region,
                generation: *generation,
                source: None,
            },
            MaintainTaskKind::CopyRegion { region, source } => StoredTaskKind {
                code: MaintainKindCode::CopyRegion,
                region: *region,
                generation: 0,
                source: Some(source.clone()),
            },
        }
    }
}

impl TryFrom<&StoredTaskKind> for MaintainTaskKind {
    type Error = String;

    fn try_from(stored: &StoredTaskKind) -> Result<Self, String> {
        Ok(match stored.code {
            MaintainKindCode::DeleteRegionPeer => MaintainTaskKind::DeleteRegionPeer {
                region: stored.region,
                generation: stored.generation,
            },
            MaintainKindCode::CopyRegion => MaintainTaskKind::CopyRegion {
                region: stored.region,
                source: stored
                    .source
                    .clone()
                    .ok_or_else(|| format!("copy of {} names no source", stored.region))?,
            },
        })
    }
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum JournalRecord {
    /// The highest epoch seen is now `epoch`.
    EpochSeen {
        /// The new highest epoch.
        epoch: Epoch,
    },
    /// A task was accepted.
    TaskAccepted {
        task_id: TaskId,
        kind: StoredTaskKind,
    },
    /// A task finished.
    TaskFinished {
        task_id: TaskId,
        outcome: OutcomeCode,
        /// The failure reason (for [`OutcomeCode::Fail`]).
        reason: Option<String>,
        /// How long it ran, in clock milliseconds.
        duration_ms: Millis,
    },
    /// A terminal result was forgotten.
    TaskForgotten {
        task_id: TaskId,
        reason: ForgetReason,
    },
    /// Creates of `region` at or below `generation` are refused.
    RegionFenced {
        region: RegionId,
        /// The highest creation generation a deletion of it covered.
        generation: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct EpochBody {
    epoch: Epoch,
}

#[derive(Serialize, Deserialize)]
struct AcceptedBody {
    task_id: TaskId,
    kind: StoredTaskKind,
}

#[derive(Serialize, Deserialize)]
struct FinishedBody {
    task_id: TaskId,
    outcome: OutcomeCode,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    duration_ms: Millis,
}

#[derive(Serialize, Deserialize)]
struct ForgottenBody {
    task_id: TaskId,
    reason: ForgetReason,
}

#[derive(Serialize, Deserialize)]
struct FencedBody {
    region: RegionId,
    generation: u64,
}

/// Why journal bytes could not be decoded. Never retryable: the bytes are wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum JournalDecodeError {
    /// Fewer bytes than the header.
    #[error("record truncated: {len} bytes, header needs {RECORD_HEADER_LEN}")]
    Truncated { len: usize },
    /// The checksum does not match.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes as read.
        computed: u32,
    },
    /// A record code this build does not know.
    #[error("unknown journal record code {0}")]
    UnknownCode(u16),
    /// The body does not decode as the code's body type.
    #[error("journal record code {code} has a malformed body: {message}")]
    MalformedBody { code: u16, message: String },
}

fn checksum(code: u16, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&code.to_be_bytes()), body)
}

fn encode_body<T: Serialize>(body: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing plain structs of ids, numbers and strings into a Vec cannot fail.
    if let Err(error) = ciborium::into_writer(body, &mut out) {
        tracing::error!(%error, "journal record failed to encode");
    }
    out
}

fn decode_exact<T: serde::de::DeserializeOwned>(
    code: u16,
    body: &[u8],
) -> Result<T, JournalDecodeError> {
    let malformed = |message: String| JournalDecodeError::MalformedBody { code, message };
    let mut reader = body;
    let value = ciborium::from_reader(&mut reader).map_err(|e| malformed(e.to_string()))?;
    if !reader.is_empty() {
        return Err(malformed(format!("{} trailing bytes", reader.len())));
    }
    Ok(value)
}

impl JournalRecord {
    /// This record's code.
    pub fn code(&self) -> RecordCode {
        match self {
            JournalRecord::EpochSeen { .. } => RecordCode::EpochSeen,
            JournalRecord::TaskAccepted { .. } => RecordCode::TaskAccepted,
            JournalRecord::TaskFinished { .. } => RecordCode::TaskFinished,
            JournalRecord::TaskForgotten { .. } => RecordCode::TaskForgotten,
            JournalRecord::RegionFenced { .. } => RecordCode::RegionFenced,
        }
    }

    /// Encodes as `code | crc32c | CBOR body`.
    pub fn encode(&self) -> Vec<u8> {
        let body = match self {
            JournalRecord::EpochSeen { epoch } => encode_body(&EpochBody { epoch: *epoch }),
            JournalRecord::TaskAccepted { task_id, kind } => encode_body(&AcceptedBody {
                task_id: *task_id,
                kind: kind.clone(),
            }),
            JournalRecord::TaskFinished {
                task_id,
                outcome,
                reason,
                duration_ms,
            } => encode_body(&FinishedBody {
                task_id: *task_id,
                outcome: *outcome,
                reason: reason.clone(),
                duration_ms: *duration_ms,
            }),
            JournalRecord::TaskForgotten { task_id, reason } => encode_body(&ForgottenBody {
                task_id: *task_id,
                reason: *reason,
            }),
            JournalRecord::RegionFenced { region, generation } => encode_body(&FencedBody {
                region: *region,
                generation: *generation,
            }),
        };
        let code = u16::from(self.code().code());
        let mut out = Vec::with_capacity(RECORD_HEADER_LEN + body.len());
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(&checksum(code, &body).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes one record, checking its checksum.
    pub fn decode(bytes: &[u8]) -> Result<JournalRecord, JournalDecodeError> {
        if bytes.len() < RECORD_HEADER_LEN {
            return Err(JournalDecodeError::Truncated { len: bytes.len() });
        }
        let code = u16::from_be_bytes([bytes[0], bytes[1]]);
        let stored = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let body = &bytes[RECORD_HEADER_LEN..];
        let computed = checksum(code, body);
        if stored != computed {
            return Err(JournalDecodeError::Checksum { stored, computed });
        }
        let known = u8::try_from(code)
            .ok()
            .and_then(RecordCode::from_code)
            .ok_or(JournalDecodeError::UnknownCode(code))?;
        Ok(match known {
            RecordCode::EpochSeen => {
                let b: EpochBody = decode_exact(code, body)?;
                JournalRecord::EpochSeen { epoch: b.epoch }
            }
            RecordCode::TaskAccepted => {
                let b: AcceptedBody = decode_exact(code, body)?;
                JournalRecord::TaskAccepted {
                    task_id: b.task_id,
                    kind: b.kind,
                }
            }
            RecordCode::TaskFinished => {
                let b: FinishedBody = decode_exact(code, body)?;
                JournalRecord::TaskFinished {
                    task_id: b.task_id,
                    outcome: b.outcome,
                    reason: b.reason,
                    duration_ms: b.duration_ms,
                }
            }
            RecordCode::TaskForgotten => {
                let b: ForgottenBody = decode_exact(code, body)?;
                JournalRecord::TaskForgotten {
                    task_id: b.task_id,
                    reason: b.reason,
                }
            }
            RecordCode::RegionFenced => {
                let b: FencedBody = decode_exact(code, body)?;
                JournalRecord::RegionFenced {
                    region: b.region,
                    generation: b.generation,
                }
            }
        })
    }

    /// The record for a terminal `status`.
    pub(crate) fn finished(task_id: TaskId, status: &TaskStatus, duration_ms: Millis) -> Self {
        let (outcome, reason) = match status {
            TaskStatus::Fail(reason) => (OutcomeCode::Fail, Some(reason.clone())),
            _ => (OutcomeCode::Success, None),
        };
        JournalRecord::TaskFinished {
            task_id,
            outcome,
            reason,
            duration_ms,
        }
    }
}

/// Why a journal could not be replayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // Plain data: fields are named for what they hold.
pub enum ReplayError {
    /// Record `index` (0-based, in load order) does not decode.
    #[error("journal record {index} is undecodable: {source}")]
    Undecodable {
        /// Position of the record.
        index: usize,
        source: JournalDecodeError,
    },
    /// Record `index` contradicts the records before it.
    #[error("journal record {index} is inconsistent: {reason}")]
    Inconsistent {
        /// Position of the record.
        index: usize,
        reason: String,
    },
}

/// Appends records and compacts the journal; callers serialise through one async mutex so
/// a rewrite never races an append.
pub(crate) struct JournalWriter {
    journal: Arc<dyn TaskJournal>,
    /// Records in the journal now (loaded + appended since the last rewrite).
    records: usize,
    /// The ticket of the last record staged (none yet, or a journal that does not stage).
    last_ticket: Option<u64>,
}

/// A record put in the journal's order whose durability may still be on its way: the
/// effect it records may be made visible only after [`Pending::durable`] returned `Ok`.
#[derive(Clone)]
pub(crate) struct Pending {
    journal: Arc<dyn TaskJournal>,
    /// `None`: durable already (appended by a journal that does not stage).
    ticket: Option<u64>,
}

impl Pending {
    /// Resolves once the record (and every one before it) is durable. Waiting does not hold
    /// the writer: concurrent records share one flush.
    pub(crate) async fn durable(&self) -> Result<(), StorageError> {
        match self.ticket {
            Some(ticket) => self.journal.sync(ticket).await,
            None => Ok(()),
        }
    }
}

impl JournalWriter {
    pub(crate) fn new(journal: Arc<dyn TaskJournal>, records: usize) -> Self {
        Self {
            journal,
            records,
            last_ticket: None,
        }
    }

    /// Durably appends `record`.
    pub(crate) async fn append(&mut self, record: &JournalRecord) -> Result<(), StorageError> {
        self.stage(record).await?.durable().await
    }

    /// Puts `record` in the journal's order (the order of the writer's holders); its
    /// durability is awaited through the returned [`Pending`], after the writer is released.
    /// A journal that cannot stage appends it durably here.
    pub(crate) async fn stage(&mut self, record: &JournalRecord) -> Result<Pending, StorageError> {
        let ticket = match self.journal.stage(record.encode())? {
            Staged::Ticket(ticket) => Some(ticket),
            Staged::Unsupported(bytes) => {
                self.journal.append(bytes).await?;
                None
            }
        };
        self.records += 1;
        if ticket.is_some() {
            self.last_ticket = ticket;
        }
        Ok(Pending {
            journal: self.journal.clone(),
            ticket,
        })
    }

    /// Every record staged so far, as one [`Pending`]: an answer that relies on a record
    /// another caller staged waits for it.
    pub(crate) fn staged_so_far(&self) -> Pending {
        Pending {
            journal: self.journal.clone(),
            ticket: self.last_ticket,
        }
    }

    /// Whether the journal holds more than `threshold` records and at least twice the
    /// `live` records a rewrite would keep.
    pub(crate) fn wants_compaction(&self, live: usize, threshold: usize) -> bool {
        self.records > threshold && self.records >= live.saturating_mul(2)
    }

    /// Atomically replaces the journal with `records`.
    pub(crate) async fn rewrite(
        &mut self,
        records: Vec<JournalRecord>,
    ) -> Result<(), StorageError> {
        let count = records.len();
        self.journal
            .rewrite(records.iter().map(JournalRecord::encode).collect())
            .await?;
        self.records = count;
        Ok(())
    }
}
