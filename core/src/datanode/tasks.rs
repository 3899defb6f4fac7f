//! The task-result map: every accepted task, running or terminal, until it is acked or
//! evicted by the retention bound. Plain data behind the DataNode's state mutex; nothing
//! here awaits.

use std::collections::BTreeMap;
use std::time::Duration;

use super::journal::{ForgetReason, JournalRecord, OutcomeCode, ReplayError, StoredTaskKind};
use crate::api::{MaintainTaskKind, TaskStatus};
use crate::model::{Epoch, RegionId, TaskId};
use crate::runtime::Millis;

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TaskState {
    /// Accepted, queued or running.
    Running,
    /// Terminal; `seq` orders results by finish for eviction.
    Finished {
        status: TaskStatus,
        finished_ms: Millis,
        seq: u64,
    },
}

/// One task in the map.
#[derive(Debug, Clone)]
pub(crate) struct TaskEntry {
    pub kind: MaintainTaskKind,
    /// Acceptance order: resumption and compaction keep it.
    pub accept_seq: u64,
    pub state: TaskState,
}

/// How a submission relates to what the map already holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission {
    /// A new id.
    New,
    /// The same id and kind: already accepted; run nothing.
    Duplicate,
    /// The same id was used for a different task.
    Conflict(MaintainTaskKind),
    /// The id finished and was acked: a late duplicate submission, never run again.
    Acked,
}

/// What an ack found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckFound {
    /// A terminal result, to forget.
    Terminal,
    /// A task still running (cannot be forgotten).
    Running,
    /// Nothing (never submitted, or already forgotten).
    Unknown,
}

/// The task-result map.
#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    tasks: BTreeMap<TaskId, TaskEntry>,
    /// Terminal results by finish order, oldest first.
    finished: BTreeMap<u64, TaskId>,
    /// Ids acked and forgotten, with when: a duplicate submission that arrives late (after
    /// the ack) is refused, so a task id never runs twice. Bounded like results.
    acked: BTreeMap<TaskId, Millis>,
    /// Per region, the highest creation generation a deletion covered, and when: creates at
    /// or below it were sent before that deletion and are refused. Bounded like results.
    fences: BTreeMap<RegionId, (u64, Millis)>,
    next_seq: u64,
}

impl TaskTable {
    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// How a submission of `id` for `kind` relates to the map.
    pub(crate) fn admission(&self, id: TaskId, kind: &MaintainTaskKind) -> Admission {
        match self.tasks.get(&id) {
            None if self.acked.contains_key(&id) => Admission::Acked,
            None => Admission::New,
            Some(entry) if entry.kind == *kind => Admission::Duplicate,
            Some(entry) => Admission::Conflict(entry.kind.clone()),
        }
    }

    /// Records `id` as accepted and running.
    pub(crate) fn insert_running(&mut self, id: TaskId, kind: MaintainTaskKind, now: Millis) {
        // A deletion fences its region from the moment it is accepted: a create of an
        // older generation still in flight must not land after it.
        let MaintainTaskKind::DeleteRegionPeer { region, generation } = &kind;
        self.fence(*region, *generation, now);
        let accept_seq = self.seq();
        if let Some(TaskEntry {
            state: TaskState::Finished { seq, .. },
            ..
        }) = self.tasks.get(&id)
        {
            self.finished.remove(seq);
        }
        self.tasks.insert(
            id,
            TaskEntry {
                kind,
                accept_seq,
                state: TaskState::Running,
            },
        );
    }

    /// Makes `id` terminal with `status`; false if the map does not hold `id`.
    pub(crate) fn finish(&mut self, id: TaskId, status: TaskStatus, now: Millis) -> bool {
        let seq = self.seq();
        let Some(entry) = self.tasks.get_mut(&id) else {
            return false;
        };
        if let TaskState::Finished { seq: old, .. } = entry.state {
            self.finished.remove(&old);
        }
        entry.state = TaskState::Finished {
            status,
            finished_ms: now,
            seq,
        };
        self.finished.insert(seq, id);
        true
    }

    /// Fences `region` against creates at or below `generation` (never lowers a fence).
    pub(crate) fn fence(&mut self, region: RegionId, generation: u64, now: Millis) {
        let entry = self.fences.entry(region).or_insert((generation, now));
        if generation >= entry.0 {
            *entry = (generation, now);
        }
    }

    /// The highest creation generation a deletion of `region` covered, if any.
    pub(crate) fn fenced(&self, region: RegionId) -> Option<u64> {
        self.fences.get(&region).map(|(generation, _)| *generation)
    }

    /// Remembers that `id` was acked (see `acked`).
    pub(crate) fn remember_acked(&mut self, id: TaskId, now: Millis) {
        self.acked.insert(id, now);
    }

    /// Forgets acked ids and region fences beyond `max_each` (oldest first) or older than
    /// `max_age`. A create or duplicate submission delayed longer than that is not credible
    /// (connections time out in seconds).
    pub(crate) fn prune_markers(
        &mut self,
        now: Millis,
        max_each: usize,
        max_age: Option<Duration>,
    ) {
        let max_age_ms = max_age.map(|age| age.as_millis() as Millis);
        let expired = |at: Millis| max_age_ms.is_some_and(|age| now.saturating_sub(at) > age);
        self.acked.retain(|_, at| !expired(*at));
        if self.acked.len() > max_each {
            let mut by_age: Vec<(Millis, TaskId)> =
                self.acked.iter().map(|(id, at)| (*at, *id)).collect();
            by_age.sort();
            for (_, id) in by_age.into_iter().take(self.acked.len() - max_each) {
                self.acked.remove(&id);
            }
        }
        self.fences.retain(|_, (_, at)| !expired(*at));
        if self.fences.len() > max_each {
            let mut by_age: Vec<(Millis, RegionId)> =
                self.fences.iter().map(|(r, (_, at))| (*at, *r)).collect();
            by_age.sort();
            for (_, region) in by_age.into_iter().take(self.fences.len() - max_each) {
                self.fences.remove(&region);
            }
        }
    }

    /// Acked ids and region fences kept (they count as live records for compaction).
    pub(crate) fn markers_len(&self) -> usize {
        self.acked.len() + self.fences.len()
    }

    /// Forgets `id` whatever its state.
    pub(crate) fn remove(&mut self, id: TaskId) {
        if let Some(TaskEntry {
            state: TaskState::Finished { seq, .. },
            ..
        }) = self.tasks.remove(&id)
        {
            self.finished.remove(&seq);
        }
    }

    /// What an ack of `id` would forget.
    pub(crate) fn ack_target(&self, id: TaskId) -> AckFound {
        match self.tasks.get(&id).map(|entry| &entry.state) {
            None => AckFound::Unknown,
            Some(TaskState::Running) => AckFound::Running,
            Some(TaskState::Finished { .. }) => AckFound::Terminal,
        }
    }

    /// The status reported for `id`.
    pub(crate) fn status(&self, id: TaskId) -> TaskStatus {
        match self.tasks.get(&id).map(|entry| &entry.state) {
            None => TaskStatus::NotExist,
            Some(TaskState::Running) => TaskStatus::Processing,
            Some(TaskState::Finished { status, .. }) => status.clone(),
        }
    }

    /// Running tasks in acceptance order.
    pub(crate) fn running(&self) -> Vec<(TaskId, MaintainTaskKind)> {
        let mut running: Vec<_> = self
            .tasks
            .iter()
            .filter(|(_, entry)| entry.state == TaskState::Running)
            .map(|(id, entry)| (entry.accept_seq, *id, entry.kind.clone()))
            .collect();
        running.sort_by_key(|(seq, _, _)| *seq);
        running
            .into_iter()
            .map(|(_, id, kind)| (id, kind))
            .collect()
    }

    /// Tasks in the map, running and terminal.
    pub(crate) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Terminal results in the map.
    pub(crate) fn terminal_len(&self) -> usize {
        self.finished.len()
    }

    /// Terminal results the retention bound evicts now, oldest first: anything beyond
    /// `max_results`, and anything finished more than `max_age` ago.
    pub(crate) fn over_retention(
        &self,
        now: Millis,
        max_results: usize,
        max_age: Option<Duration>,
    ) -> Vec<TaskId> {
        let excess = self.finished.len().saturating_sub(max_results);
        let max_age_ms = max_age.map(|age| age.as_millis() as Millis);
        self.finished
            .values()
            .enumerate()
            .filter(|(position, id)| {
                *position < excess
                    || match (max_age_ms, self.tasks.get(id).map(|entry| &entry.state)) {
                        (Some(age), Some(TaskState::Finished { finished_ms, .. })) => {
                            now.saturating_sub(*finished_ms) > age
                        }
                        _ => false,
                    }
            })
            .map(|(_, id)| *id)
            .collect()
    }

    /// The records a compacted journal holds: the epoch, then every task in acceptance
    /// order, each terminal one followed by its result.
    pub(crate) fn compacted_records(&self, epoch: Epoch) -> Vec<JournalRecord> {
        let mut entries: Vec<_> = self.tasks.iter().collect();
        entries.sort_by_key(|(_, entry)| entry.accept_seq);
        let mut records = vec![JournalRecord::EpochSeen { epoch }];
        for (id, entry) in entries {
            records.push(JournalRecord::TaskAccepted {
                task_id: *id,
                kind: StoredTaskKind::from(&entry.kind),
            });
            if let TaskState::Finished { status, .. } = &entry.state {
                records.push(JournalRecord::finished(*id, status, 0));
            }
        }
        for (region, (generation, _)) in &self.fences {
            records.push(JournalRecord::RegionFenced {
                region: *region,
                generation: *generation,
            });
        }
        for id in self.acked.keys() {
            records.push(JournalRecord::TaskForgotten {
                task_id: *id,
                reason: ForgetReason::Acked,
            });
        }
        records
    }
}

/// What a replay restores.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub highest_epoch: Epoch,
    pub table: TaskTable,
}

/// Rebuilds the highest epoch and the task table from `records`. Restored terminal results
/// count their retention age from `now` (clock origins differ across restarts).
pub(crate) fn replay(records: &[Vec<u8>], now: Millis) -> Result<Replayed, ReplayError> {
    let mut out = Replayed::default();
    for (index, bytes) in records.iter().enumerate() {
        let record = JournalRecord::decode(bytes)
            .map_err(|source| ReplayError::Undecodable { index, source })?;
        match record {
            JournalRecord::EpochSeen { epoch } => {
                out.highest_epoch = out.highest_epoch.max(epoch);
            }
            JournalRecord::TaskAccepted { task_id, kind } => {
                out.table
                    .insert_running(task_id, MaintainTaskKind::from(&kind), now);
            }
            JournalRecord::RegionFenced { region, generation } => {
                out.table.fence(region, generation, now);
            }
            JournalRecord::TaskFinished {
                task_id,
                outcome,
                reason,
                ..
            } => {
                let status = match outcome {
                    OutcomeCode::Success => TaskStatus::Success,
                    OutcomeCode::Fail => TaskStatus::Fail(reason.unwrap_or_default()),
                };
                if !out.table.finish(task_id, status, now) {
                    return Err(ReplayError::Inconsistent {
                        index,
                        reason: format!("{task_id} finished but was never accepted"),
                    });
                }
            }
            JournalRecord::TaskForgotten { task_id, reason } => {
                out.table.remove(task_id);
                if reason == ForgetReason::Acked {
                    out.table.remember_acked(task_id, now);
                }
            }
        }
    }
    Ok(out)
}
