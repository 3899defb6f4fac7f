//! The task-result map: every accepted task, running or terminal, until it is acked or
//! evicted by the retention bound. Plain data behind the DataNode's state mutex; nothing
//! here awaits.

use std::collections::{BTreeMap, BTreeSet};
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
    /// The same results by finish time (`finished_ms`, then `seq`): expiry by age pops from
    /// the front instead of scanning every result.
    finished_by_age: BTreeSet<(Millis, u64)>,
    /// Ids acked and forgotten, with when: a duplicate submission that arrives late (after
    /// the ack) is refused, so a task id never runs twice. Bounded like results.
    acked: BTreeMap<TaskId, Millis>,
    /// `acked` by age, oldest first (pruning is a pop, not a scan).
    acked_by_age: BTreeSet<(Millis, TaskId)>,
    /// Per region, the highest creation generation a deletion covered, and when: creates at
    /// or below it were sent before that deletion and are refused. Bounded like results.
    fences: BTreeMap<RegionId, (u64, Millis)>,
    /// `fences` by age, oldest first.
    fences_by_age: BTreeSet<(Millis, RegionId)>,
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
        if let MaintainTaskKind::DeleteRegionPeer { region, generation } = &kind {
            self.fence(*region, *generation, now);
        }
        let accept_seq = self.seq();
        if let Some(TaskEntry {
            state: TaskState::Finished {
                seq, finished_ms, ..
            },
            ..
        }) = self.tasks.get(&id)
        {
            self.finished.remove(seq);
            self.finished_by_age.remove(&(*finished_ms, *seq));
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
        if let TaskState::Finished {
            seq: old,
            finished_ms: old_ms,
            ..
        } = entry.state
        {
            self.finished.remove(&old);
            self.finished_by_age.remove(&(old_ms, old));
        }
        entry.state = TaskState::Finished {
            status,
            finished_ms: now,
            seq,
        };
        self.finished.insert(seq, id);
        self.finished_by_age.insert((now, seq));
        true
    }

    /// Fences `region` against creates at or below `generation` (never lowers a fence).
    pub(crate) fn fence(&mut self, region: RegionId, generation: u64, now: Millis) {
        match self.fences.get_mut(&region) {
            None => {
                self.fences.insert(region, (generation, now));
                self.fences_by_age.insert((now, region));
            }
            Some(entry) if generation >= entry.0 => {
                self.fences_by_age.remove(&(entry.1, region));
                *entry = (generation, now);
                self.fences_by_age.insert((now, region));
            }
            Some(_) => {}
        }
    }

    /// The highest creation generation a deletion of `region` covered, if any.
    pub(crate) fn fenced(&self, region: RegionId) -> Option<u64> {
        self.fences.get(&region).map(|(generation, _)| *generation)
    }

    /// Remembers that `id` was acked (see `acked`).
    pub(crate) fn remember_acked(&mut self, id: TaskId, now: Millis) {
        if let Some(was) = self.acked.insert(id, now) {
            self.acked_by_age.remove(&(was, id));
        }
        self.acked_by_age.insert((now, id));
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
        // Amortised O(log n) per forgotten marker: both indexes are ordered by age.
        let max_age_ms = max_age.map(|age| age.as_millis() as Millis);
        let expired = |at: Millis| max_age_ms.is_some_and(|age| now.saturating_sub(at) > age);
        while let Some(&(at, id)) = self.acked_by_age.first() {
            if self.acked.len() <= max_each && !expired(at) {
                break;
            }
            self.acked_by_age.pop_first();
            self.acked.remove(&id);
        }
        while let Some(&(at, region)) = self.fences_by_age.first() {
            if self.fences.len() <= max_each && !expired(at) {
                break;
            }
            self.fences_by_age.pop_first();
            self.fences.remove(&region);
        }
    }

    /// Acked ids and region fences kept (they count as live records for compaction).
    pub(crate) fn markers_len(&self) -> usize {
        self.acked.len() + self.fences.len()
    }

    /// Forgets `id` whatever its state.
    pub(crate) fn remove(&mut self, id: TaskId) {
        if let Some(TaskEntry {
            state: TaskState::Finished {
                seq, finished_ms, ..
            },
            ..
        }) = self.tasks.remove(&id)
        {
            self.finished.remove(&seq);
            self.finished_by_age.remove(&(finished_ms, seq));
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
        // Only the front of each index is looked at: O(evicted · log n), not a scan of
        // every result on every call.
        let excess = self.finished.len().saturating_sub(max_results);
        let mut evict: BTreeSet<u64> = self.finished.keys().take(excess).copied().collect();
        if let Some(age) = max_age.map(|age| age.as_millis() as Millis) {
            evict.extend(
                self.finished_by_age
                    .iter()
                    .take_while(|(finished_ms, _)| now.saturating_sub(*finished_ms) > age)
                    .map(|(_, seq)| *seq),
            );
        }
        evict.into_iter().map(|seq| self.finished[&seq]).collect()
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
                let kind = MaintainTaskKind::try_from(&kind)
                    .map_err(|reason| ReplayError::Inconsistent { index, reason })?;
                out.table.insert_running(task_id, kind, now);
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

#[cfg(test)]
mod retention_tests {
    //! The age indexes make retention incremental; these check it still forgets exactly
    //! what a full scan of every marker and result would.

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use proptest::prelude::*;

    use super::TaskTable;
    use crate::api::{MaintainTaskKind, TaskStatus};
    use crate::model::{RegionId, RegionKind, TaskId};
    use crate::runtime::Millis;

    #[derive(Debug, Clone)]
    enum Op {
        /// Accept task `id` (a deletion of `region`, which fences it), at `dt` ms later.
        Accept {
            id: u64,
            region: u64,
            dt: u64,
        },
        Finish {
            id: u64,
            dt: u64,
        },
        Ack {
            id: u64,
            dt: u64,
        },
        Prune {
            dt: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..40u64, 0..8u64, 0..30u64).prop_map(|(id, region, dt)| Op::Accept {
                id,
                region,
                dt
            }),
            (0..40u64, 0..30u64).prop_map(|(id, dt)| Op::Finish { id, dt }),
            (0..40u64, 0..30u64).prop_map(|(id, dt)| Op::Ack { id, dt }),
            (0..30u64).prop_map(|dt| Op::Prune { dt }),
        ]
    }

    /// What the retention rules say, by scanning everything.
    #[derive(Default)]
    struct Model {
        finished: BTreeMap<u64, (u64, Millis)>, // seq -> (id, finished_ms)
        acked: BTreeMap<u64, Millis>,
        fences: BTreeMap<u64, (u64, Millis)>,
    }

    impl Model {
        fn over_retention(&self, now: Millis, max: usize, age: Millis) -> Vec<u64> {
            let excess = self.finished.len().saturating_sub(max);
            self.finished
                .values()
                .enumerate()
                .filter(|(i, (_, at))| *i < excess || now.saturating_sub(*at) > age)
                .map(|(_, (id, _))| *id)
                .collect()
        }

        fn prune(&mut self, now: Millis, max: usize, age: Millis) {
            self.acked.retain(|_, at| now.saturating_sub(*at) <= age);
            while self.acked.len() > max {
                let oldest = self.acked.iter().map(|(id, at)| (*at, *id)).min().unwrap();
                self.acked.remove(&oldest.1);
            }
            self.fences
                .retain(|_, (_, at)| now.saturating_sub(*at) <= age);
            while self.fences.len() > max {
                let oldest = self
                    .fences
                    .iter()
                    .map(|(r, (_, at))| (*at, *r))
                    .min()
                    .unwrap();
                self.fences.remove(&oldest.1);
            }
        }
    }

    proptest! {
        #[test]
        fn incremental_retention_forgets_what_a_full_scan_would(
            ops in proptest::collection::vec(op(), 1..200),
            max in 1..6usize,
            age in 20..120u64,
        ) {
            let (mut table, mut model) = (TaskTable::default(), Model::default());
            let mut seq_of: BTreeMap<u64, u64> = BTreeMap::new();
            let mut now: Millis = 0;
            let max_age = Some(Duration::from_millis(age));
            for op in ops {
                match op {
                    Op::Accept { id, region, dt } => {
                        now += dt;
                        let kind = MaintainTaskKind::DeleteRegionPeer {
                            region: RegionId::new(RegionKind::Data, region as u32),
                            generation: id,
                        };
                        if table.tasks.contains_key(&TaskId(id)) || table.acked.contains_key(&TaskId(id)) {
                            continue;
                        }
                        table.insert_running(TaskId(id), kind, now);
                        let fence = model.fences.entry(region).or_insert((id, now));
                        if id >= fence.0 {
                            *fence = (id, now);
                        }
                    }
                    Op::Finish { id, dt } => {
                        now += dt;
                        if table.finish(TaskId(id), TaskStatus::Success, now) {
                            if let Some(old) = seq_of.remove(&id) {
                                model.finished.remove(&old);
                            }
                            let seq = table.next_seq;
                            seq_of.insert(id, seq);
                            model.finished.insert(seq, (id, now));
                        }
                    }
                    Op::Ack { id, dt } => {
                        now += dt;
                        if let Some(seq) = seq_of.remove(&id) {
                            model.finished.remove(&seq);
                            table.remove(TaskId(id));
                            table.remember_acked(TaskId(id), now);
                            model.acked.insert(id, now);
                        }
                    }
                    Op::Prune { dt } => {
                        now += dt;
                        let got: Vec<u64> = table
                            .over_retention(now, max, max_age)
                            .into_iter()
                            .map(|t| t.0)
                            .collect();
                        prop_assert_eq!(&got, &model.over_retention(now, max, age));
                        for id in got {
                            table.remove(TaskId(id));
                            model.finished.remove(&seq_of.remove(&id).unwrap());
                        }
                        table.prune_markers(now, max, max_age);
                        model.prune(now, max, age);
                    }
                }
                let acked: BTreeSet<u64> = table.acked.keys().map(|t| t.0).collect();
                prop_assert_eq!(acked, model.acked.keys().copied().collect::<BTreeSet<_>>());
                let fences: BTreeMap<u64, u64> =
                    table.fences.iter().map(|(r, (g, _))| (u64::from(r.id), *g)).collect();
                prop_assert_eq!(
                    fences,
                    model.fences.iter().map(|(r, (g, _))| (*r, *g)).collect::<BTreeMap<_, _>>()
                );
                prop_assert_eq!(table.acked_by_age.len(), table.acked.len());
                prop_assert_eq!(table.fences_by_age.len(), table.fences.len());
                prop_assert_eq!(table.finished_by_age.len(), table.finished.len());
            }
        }
    }
}
