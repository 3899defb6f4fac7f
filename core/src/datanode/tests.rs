//! DataNode behaviour: the task protocol against in-memory and fault-injecting stores, on a
//! single-threaded smol executor driven by the test and a [`ManualClock`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::future;
use smol::Executor;

use super::journal::{JournalRecord, RecordCode, ReplayError};
use super::{DataNode, DataNodeConfig, DataNodeError, TaskCounts};
use crate::api::{
    ApiError, CreateRegionRequest, DataNodeApi, MaintainTask, MaintainTaskKind, SubmitOutcome,
    TaskStatus,
};
use crate::model::{DataNodeId, DatabaseName, Epoch, RegionId, RegionKind, TaskId};
use crate::runtime::{BoxFuture, Clock, ManualClock, Runtime, SeededRng, Spawner};
use crate::storage::faulty::{FaultyRegionStore, FaultyTaskJournal, StoreOp};
use crate::storage::{MemRegionStore, MemTaskJournal, RegionStore, StorageError, TaskJournal};

const E1: Epoch = Epoch(1);

struct ExecutorSpawner(Arc<Executor<'static>>);

impl Spawner for ExecutorSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

/// One DataNode's stores, clock and executor; a "restart" opens a new DataNode over them.
struct Harness {
    ex: Arc<Executor<'static>>,
    clock: ManualClock,
    mem: MemRegionStore,
    store: FaultyRegionStore,
    journal: MemTaskJournal,
    faulty_journal: FaultyTaskJournal,
}

impl Harness {
    fn new() -> Self {
        let clock = ManualClock::new();
        let mem = MemRegionStore::new(Arc::new(clock.clone())).with_delete_chunk(1000);
        let store = FaultyRegionStore::new(Arc::new(mem.clone()), Arc::new(clock.clone()));
        let journal = MemTaskJournal::new();
        let faulty_journal = FaultyTaskJournal::new(Arc::new(journal.clone()));
        Self {
            ex: Arc::new(Executor::new()),
            clock,
            mem,
            store,
            journal,
            faulty_journal,
        }
    }

    fn runtime(&self) -> Runtime {
        Runtime {
            clock: Arc::new(self.clock.clone()),
            spawner: Arc::new(ExecutorSpawner(self.ex.clone())),
            rng: Arc::new(SeededRng::new(7)),
        }
    }

    async fn try_open(&self, config: DataNodeConfig) -> Result<DataNode, DataNodeError> {
        // Opening again is a process restart: what was staged and never synced is gone.
        self.journal.crash();
        DataNode::open(
            self.runtime(),
            Arc::new(self.store.clone()),
            // Each open is a fresh handle: a poisoned one stays with the node it failed.
            Arc::new(self.faulty_journal.reopen()),
            config,
        )
        .await
    }

    async fn open(&self) -> DataNode {
        self.open_with(DataNodeConfig::default()).await
    }

    async fn open_with(&self, config: DataNodeConfig) -> DataNode {
        match self.try_open(config).await {
            Ok(node) => node,
            Err(error) => panic!("open failed: {error}"),
        }
    }

    /// Runs `test` on this harness's executor, on the current thread.
    fn run<T>(&self, test: impl Future<Output = T>) -> T {
        smol::block_on(self.ex.run(test))
    }

    fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> smol::Task<T> {
        self.ex.spawn(future)
    }
}

/// Yields to the executor until `condition` holds (bounded by a step count, not time).
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..100_000 {
        if condition() {
            return;
        }
        future::yield_now().await;
    }
    panic!("gave up waiting for {what}");
}

/// Lets every runnable task make progress.
async fn settle() {
    for _ in 0..200 {
        future::yield_now().await;
    }
}

fn region(id: u32) -> RegionId {
    RegionId::new(RegionKind::Data, id)
}

fn create_request(id: u32, peers: &[u32]) -> CreateRegionRequest {
    CreateRegionRequest {
        region: region(id),
        database: DatabaseName::new("db1").expect("valid name"),
        peers: peers.iter().map(|p| DataNodeId(*p)).collect(),
        // Above every deletion `delete_task` makes: these creates are never stale.
        generation: 2,
    }
}

fn delete_task(task: u64, region_id: u32) -> MaintainTask {
    MaintainTask {
        task_id: TaskId(task),
        kind: MaintainTaskKind::DeleteRegionPeer {
            region: region(region_id),
            generation: 1,
        },
    }
}

async fn create_with_data(node: &DataNode, id: u32, bytes: usize) {
    node.create_region(E1, create_request(id, &[1, 2, 3]))
        .await
        .expect("create");
    if bytes > 0 {
        node.write_region(region(id), vec![7; bytes])
            .await
            .expect("write");
    }
}

async fn submit(node: &DataNode, task: MaintainTask) {
    assert_eq!(
        node.submit_task(E1, task).await,
        Ok(SubmitOutcome::Accepted)
    );
}

async fn status(node: &DataNode, task: u64) -> TaskStatus {
    node.task_result(TaskId(task), None).await.expect("status")
}

/// Polls without a clock wait until the task is terminal.
async fn finished(node: &DataNode, task: u64) -> TaskStatus {
    for _ in 0..100_000 {
        let status = status(node, task).await;
        if status.is_terminal() {
            return status;
        }
        future::yield_now().await;
    }
    panic!("task-{task} never finished");
}

#[test]
fn failed_delete_is_never_reported_success() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 500).await;
        h.store.fail_next(StoreOp::Delete, 1);
        submit(&node, delete_task(10, 1)).await;
        let result = finished(&node, 10).await;
        assert!(
            matches!(&result, TaskStatus::Fail(reason) if reason.contains("injected")),
            "got {result:?}"
        );
        settle().await;
        // Still Fail, the data is still there, and nothing retried it behind our back.
        assert!(matches!(status(&node, 10).await, TaskStatus::Fail(_)));
        assert_eq!(h.mem.size(region(1)).await, Ok(Some(500)));
        assert_eq!(h.store.delete_calls(region(1)), 1);
    });
}

#[test]
fn failed_peer_removal_stops_before_deleting_data() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 500).await;
        h.store.fail_next(StoreOp::SetPeers, 1);
        submit(&node, delete_task(10, 1)).await;
        assert!(matches!(finished(&node, 10).await, TaskStatus::Fail(_)));
        assert_eq!(h.store.delete_calls(region(1)), 0);
        assert_eq!(h.mem.size(region(1)).await, Ok(Some(500)));
    });
}

#[test]
fn delete_of_missing_region_is_success() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        submit(&node, delete_task(10, 42)).await;
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);
        assert_eq!(h.store.deletions_executed(region(42)), 1);
    });
}

#[test]
fn delete_region_peer_removes_peer_and_data() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 2500).await;
        submit(&node, delete_task(10, 1)).await;
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
        assert_eq!(h.mem.list().await, Ok(vec![]));
    });
}

#[test]
fn resubmitted_task_id_runs_once() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        h.store.hold_deletes();
        submit(&node, delete_task(10, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;

        // While running: accepted, nothing new runs.
        submit(&node, delete_task(10, 1)).await;
        settle().await;
        assert_eq!(status(&node, 10).await, TaskStatus::Processing);
        assert_eq!(h.store.delete_calls(region(1)), 1);

        h.store.release_deletes();
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);

        // After finishing: accepted, the result stands, nothing new runs.
        submit(&node, delete_task(10, 1)).await;
        settle().await;
        assert_eq!(status(&node, 10).await, TaskStatus::Success);
        assert_eq!(h.store.delete_calls(region(1)), 1);
        assert_eq!(h.store.deletions_executed(region(1)), 1);
    });
}

#[test]
fn reused_task_id_for_a_different_task_is_rejected() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        submit(&node, delete_task(10, 1)).await;
        let outcome = node.submit_task(E1, delete_task(10, 2)).await;
        assert!(
            matches!(outcome, Ok(SubmitOutcome::Rejected(_))),
            "{outcome:?}"
        );
        finished(&node, 10).await;
        assert_eq!(h.store.delete_calls(region(2)), 0);
    });
}

#[test]
fn unknown_task_id_is_not_exist() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        assert_eq!(status(&node, 99).await, TaskStatus::NotExist);
        // A long-poll on an unknown id answers at once, without waiting on the clock.
        let polled = node
            .task_result(TaskId(99), Some(Duration::from_secs(60)))
            .await;
        assert_eq!(polled, Ok(TaskStatus::NotExist));
        assert_eq!(h.clock.now_ms(), 0);
    });
}

#[test]
fn finished_and_unfinished_tasks_survive_a_restart_and_the_unfinished_one_completes() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        create_with_data(&node, 2, 100).await;
        submit(&node, delete_task(10, 1)).await;
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);
        h.store.fail_next(StoreOp::Delete, 1);
        submit(&node, delete_task(11, 9)).await;
        assert!(matches!(finished(&node, 11).await, TaskStatus::Fail(_)));

        h.store.hold_deletes();
        submit(&node, delete_task(12, 2)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;

        // Crash: the running deletion stops mid-way; nothing more is journaled.
        node.halt();
        until("the halted task to stop", || h.store.held_deletes() == 0).await;
        assert_eq!(h.mem.size(region(2)).await, Ok(Some(100)));

        let restarted = h.open().await;
        assert_eq!(status(&restarted, 10).await, TaskStatus::Success);
        assert!(matches!(status(&restarted, 11).await, TaskStatus::Fail(_)));
        assert_eq!(status(&restarted, 12).await, TaskStatus::Processing);
        until("the resumed delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        h.store.release_deletes();
        assert_eq!(finished(&restarted, 12).await, TaskStatus::Success);
        assert_eq!(h.mem.size(region(2)).await, Ok(None));
        assert_eq!(h.store.deletions_executed(region(2)), 1);
        // The finished task was not run again.
        assert_eq!(h.store.delete_calls(region(1)), 1);
    });
}

#[test]
fn calls_to_a_halted_datanode_are_refused_as_unreachable() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        node.halt();
        let outcome = node.submit_task(E1, delete_task(1, 1)).await;
        assert!(
            matches!(outcome, Err(ApiError::Unreachable(_))),
            "{outcome:?}"
        );
        assert!(h.journal.is_empty());
    });
}

#[test]
fn stale_epoch_is_rejected_and_the_fence_survives_a_restart() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        assert_eq!(
            node.submit_task(Epoch(5), delete_task(1, 1)).await,
            Ok(SubmitOutcome::Accepted)
        );
        let stale = ApiError::StaleLeader {
            request: Epoch(4),
            seen: Epoch(5),
        };
        assert_eq!(
            node.submit_task(Epoch(4), delete_task(2, 1)).await,
            Err(stale.clone())
        );
        assert_eq!(
            node.create_region(Epoch(4), create_request(1, &[1])).await,
            Err(stale.clone())
        );
        assert_eq!(
            node.delete_region(Epoch(4), region(1)).await,
            Err(stale.clone())
        );
        assert_eq!(node.heartbeat(Epoch(4)).await, Err(stale.clone()));
        assert_eq!(node.ack_task(Epoch(4), TaskId(1)).await, Err(stale.clone()));
        assert!(!stale.is_retryable());
        assert_eq!(status(&node, 2).await, TaskStatus::NotExist);
        finished(&node, 1).await;
        node.halt();

        let restarted = h.open().await;
        assert_eq!(restarted.highest_epoch(), Epoch(5));
        assert_eq!(
            restarted.submit_task(Epoch(4), delete_task(2, 1)).await,
            Err(stale)
        );
        assert!(restarted.heartbeat(Epoch(6)).await.is_ok());
        assert_eq!(restarted.highest_epoch(), Epoch(6));
    });
}

#[test]
fn journal_failure_on_submit_accepts_nothing_raises_no_epoch_and_halts_the_node() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        h.faulty_journal.fail_next_appends(1);
        let outcome = node.submit_task(Epoch(3), delete_task(1, 1)).await;
        assert!(
            matches!(&outcome, Err(ApiError::Unreachable(_))),
            "callers wait out a failed node: {outcome:?}"
        );
        // The raise could not be journaled, so it did not happen; the node serves nothing.
        assert_eq!(node.highest_epoch(), Epoch(0));
        assert!(matches!(
            node.heartbeat(Epoch(3)).await,
            Err(ApiError::Unreachable(_))
        ));
        assert!(matches!(
            node.wait_failed().await,
            DataNodeError::JournalFailed(StorageError::Unavailable(_))
        ));

        // The restart reopens the journal. Now the acceptance record fails.
        let restarted = h.open().await;
        assert_eq!(restarted.highest_epoch(), Epoch(0));
        assert!(restarted.heartbeat(Epoch(3)).await.is_ok());
        h.faulty_journal.fail_next_appends(1);
        let outcome = restarted.submit_task(Epoch(3), delete_task(1, 1)).await;
        assert!(
            matches!(&outcome, Err(ApiError::Unreachable(_))),
            "{outcome:?}"
        );
        settle().await;
        assert_eq!(h.store.delete_calls(region(1)), 0, "nothing ran");

        let again = h.open().await;
        assert_eq!(again.highest_epoch(), Epoch(3));
        assert_eq!(status(&again, 1).await, TaskStatus::NotExist);
        assert_eq!(
            again.task_counts(),
            TaskCounts {
                running: 0,
                terminal: 0
            }
        );
        // The same id resubmitted runs.
        assert_eq!(
            again.submit_task(Epoch(3), delete_task(1, 1)).await,
            Ok(SubmitOutcome::Accepted)
        );
        assert_eq!(finished(&again, 1).await, TaskStatus::Success);
    });
}

/// How many `TaskFinished` records the journal holds for `task`.
async fn finished_records(journal: &MemTaskJournal, task: u64) -> usize {
    let records = journal.load().await.expect("load");
    records
        .iter()
        .map(|bytes| JournalRecord::decode(bytes).expect("decodes"))
        .filter(|record| {
            matches!(record, JournalRecord::TaskFinished { task_id, .. } if *task_id == TaskId(task))
        })
        .count()
}

#[test]
fn failed_result_append_halts_the_node_without_reporting_the_result() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        h.store.hold_deletes();
        submit(&node, delete_task(1, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        let poll = {
            let node = node.clone();
            h.spawn(async move {
                node.task_result(TaskId(1), Some(Duration::from_secs(60)))
                    .await
            })
        };
        h.faulty_journal.fail_next_appends(1);
        h.store.release_deletes();
        assert!(matches!(
            node.wait_failed().await,
            DataNodeError::JournalFailed(_)
        ));
        // The deletion ran but its result is not durable: nobody is told it finished.
        assert_eq!(h.store.deletions_executed(region(1)), 1);
        let polled = poll.await;
        assert!(
            matches!(polled, Err(ApiError::Unreachable(_))),
            "{polled:?}"
        );
        let now = node.task_result(TaskId(1), None).await;
        assert!(matches!(now, Err(ApiError::Unreachable(_))), "{now:?}");
        let submitted = node.submit_task(E1, delete_task(2, 2)).await;
        assert!(
            matches!(submitted, Err(ApiError::Unreachable(_))),
            "{submitted:?}"
        );
        assert_eq!(finished_records(&h.journal, 1).await, 0);

        // The restart resumes the task (journaled as accepted, not finished); the deletion
        // runs again, finds nothing, and the result is journaled and reported once.
        let restarted = h.open().await;
        assert_eq!(finished(&restarted, 1).await, TaskStatus::Success);
        assert_eq!(h.store.deletions_executed(region(1)), 2);
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
        assert_eq!(finished_records(&h.journal, 1).await, 1);
    });
}

/// How many `TaskAccepted` records the journal holds for `task`.
async fn accepted_records(journal: &MemTaskJournal, task: u64) -> usize {
    let records = journal.load().await.expect("load");
    records
        .iter()
        .map(|bytes| JournalRecord::decode(bytes).expect("decodes"))
        .filter(|record| {
            matches!(record, JournalRecord::TaskAccepted { task_id, .. } if *task_id == TaskId(task))
        })
        .count()
}

#[test]
fn an_acceptance_lost_in_a_crash_before_its_sync_was_never_answered_and_a_resubmit_runs_once() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        // The epoch is durable already: only the acceptance is staged below.
        node.heartbeat(E1).await.expect("heartbeat");
        h.journal.hold_syncs(true);
        let first = {
            let node = node.clone();
            h.spawn(async move { node.submit_task(E1, delete_task(1, 1)).await })
        };
        until("the acceptance to be staged", || h.journal.staged() == 1).await;
        // A duplicate arriving in the window waits for the same record.
        let duplicate = {
            let node = node.clone();
            h.spawn(async move { node.submit_task(E1, delete_task(1, 1)).await })
        };
        settle().await;
        assert!(
            !first.is_finished(),
            "Accepted only once the record is durable"
        );
        assert!(!duplicate.is_finished());
        assert_eq!(
            h.store.delete_calls(region(1)),
            0,
            "not started before durable"
        );

        // The process crashes before the flush: the staged acceptance is lost.
        node.halt();
        assert_eq!(h.journal.crash(), 1);
        for answer in [first.await, duplicate.await] {
            assert!(
                matches!(&answer, Err(ApiError::Unreachable(_))),
                "never Accepted: {answer:?}"
            );
        }
        settle().await;
        assert_eq!(h.store.delete_calls(region(1)), 0, "the task never started");
        assert_eq!(accepted_records(&h.journal, 1).await, 0);

        h.journal.hold_syncs(false);
        let restarted = h.open().await;
        assert_eq!(status(&restarted, 1).await, TaskStatus::NotExist);
        // The ConfigNode treats NotExist as "resubmit" under the same id: it runs once.
        submit(&restarted, delete_task(1, 1)).await;
        assert_eq!(finished(&restarted, 1).await, TaskStatus::Success);
        submit(&restarted, delete_task(1, 1)).await;
        settle().await;
        assert_eq!(h.store.delete_calls(region(1)), 1);
        assert_eq!(h.store.deletions_executed(region(1)), 1);
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
        assert_eq!(accepted_records(&h.journal, 1).await, 1);
    });
}

#[test]
fn a_result_lost_in_a_crash_before_its_sync_was_never_reported_and_the_task_runs_again() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        h.store.hold_deletes();
        submit(&node, delete_task(1, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        h.journal.hold_syncs(true);
        h.store.release_deletes();
        until("the result to be staged", || h.journal.staged() == 1).await;
        settle().await;
        assert_eq!(h.store.deletions_executed(region(1)), 1);
        assert_eq!(
            status(&node, 1).await,
            TaskStatus::Processing,
            "a result is visible only once durable"
        );

        node.halt();
        assert_eq!(h.journal.crash(), 1);
        h.journal.hold_syncs(false);
        assert_eq!(finished_records(&h.journal, 1).await, 0);

        // The restart resumes the accepted task; the deletion finds nothing and succeeds.
        let restarted = h.open().await;
        assert_eq!(finished(&restarted, 1).await, TaskStatus::Success);
        assert_eq!(h.store.deletions_executed(region(1)), 2);
        assert_eq!(finished_records(&h.journal, 1).await, 1);
        assert_eq!(accepted_records(&h.journal, 1).await, 1);
    });
}

#[test]
fn journal_failure_stops_a_running_deletion_and_the_reopened_node_runs_it_exactly_once() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        h.store.hold_deletes();
        submit(&node, delete_task(1, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        // A new leader's epoch cannot be journaled while the deletion waits.
        h.faulty_journal.fail_next_appends(1);
        let heartbeat = node.heartbeat(Epoch(2)).await;
        assert!(
            matches!(heartbeat, Err(ApiError::Unreachable(_))),
            "{heartbeat:?}"
        );
        assert!(matches!(
            node.wait_failed().await,
            DataNodeError::JournalFailed(_)
        ));
        until("the halted task to stop", || h.store.held_deletes() == 0).await;
        assert_eq!(h.store.deletions_executed(region(1)), 0);
        assert_eq!(h.mem.size(region(1)).await, Ok(Some(100)));

        let restarted = h.open().await;
        assert_eq!(restarted.highest_epoch(), E1);
        assert_eq!(status(&restarted, 1).await, TaskStatus::Processing);
        until("the resumed delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        h.store.release_deletes();
        assert_eq!(finished(&restarted, 1).await, TaskStatus::Success);
        assert_eq!(h.store.deletions_executed(region(1)), 1);
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
        assert_eq!(finished_records(&h.journal, 1).await, 1);
    });
}

#[test]
fn a_halted_node_does_not_resolve_wait_failed() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        node.halt();
        assert!(
            future::poll_once(node.wait_failed()).await.is_none(),
            "a deliberate halt is not a failure"
        );
    });
}

#[test]
fn compaction_failing_before_replacing_the_journal_is_retried_later() {
    let h = Harness::new();
    h.run(async {
        let config = DataNodeConfig {
            compact_threshold: 8,
            // Acked ids and region fences are kept through compaction; few here.
            max_markers: 2,
            ..DataNodeConfig::default()
        };
        let node = h.open_with(config).await;
        h.faulty_journal.fail_next_rewrites(1);
        for task in 1..=30 {
            submit(&node, delete_task(task, task as u32)).await;
            finished(&node, task).await;
            node.ack_task(E1, TaskId(task)).await.expect("ack");
        }
        assert!(future::poll_once(node.wait_failed()).await.is_none());
        assert!(
            h.journal.len() <= 16,
            "a later compaction ran: {} records",
            h.journal.len()
        );
    });
}

/// Submits `task`, waits for its result and acks it; the first error ends it.
async fn submit_finish_ack(node: &DataNode, task: u64) -> Result<(), ApiError> {
    node.submit_task(E1, delete_task(task, task as u32)).await?;
    for _ in 0..100_000 {
        if node.task_result(TaskId(task), None).await?.is_terminal() {
            return node.ack_task(E1, TaskId(task)).await;
        }
        future::yield_now().await;
    }
    panic!("task-{task} never finished");
}

#[test]
fn compaction_failing_after_replacing_the_journal_halts_the_node() {
    let h = Harness::new();
    h.run(async {
        let config = DataNodeConfig {
            compact_threshold: 8,
            // Acked ids and region fences are kept through compaction; few here.
            max_markers: 2,
            ..DataNodeConfig::default()
        };
        let node = h.open_with(config.clone()).await;
        h.faulty_journal.fail_next_rewrites_after_replace(1);
        let mut acked = 0;
        let error = loop {
            assert!(acked < 30, "the compaction never ran");
            match submit_finish_ack(&node, acked + 1).await {
                Ok(()) => acked += 1,
                Err(error) => break error,
            }
        };
        assert!(matches!(error, ApiError::Unreachable(_)), "{error:?}");
        assert!(future::poll_once(node.wait_failed()).await.is_some());

        let restarted = h.open_with(config).await;
        assert_eq!(restarted.highest_epoch(), E1);
        for task in 1..=acked {
            assert_eq!(status(&restarted, task).await, TaskStatus::NotExist);
        }
        submit(&restarted, delete_task(100, 100)).await;
        assert_eq!(finished(&restarted, 100).await, TaskStatus::Success);
    });
}

#[test]
fn create_during_a_running_delete_of_the_same_region_waits_then_succeeds() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 800).await;
        h.store.hold_deletes();
        submit(&node, delete_task(10, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;

        let creator = node.clone();
        let create = h.spawn(async move {
            creator
                .create_region(E1, create_request(1, &[4, 5, 6]))
                .await
        });
        settle().await;
        assert!(!create.is_finished(), "create ran during the deletion");
        assert_eq!(h.mem.size(region(1)).await, Ok(Some(800)));

        h.store.release_deletes();
        assert_eq!(create.await, Ok(()));
        assert_eq!(status(&node, 10).await, TaskStatus::Success);
        // Created afresh after the deletion: empty, with the new configuration.
        assert_eq!(h.mem.size(region(1)).await, Ok(Some(0)));
        let listed = h.mem.list().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(
            listed[0].peers,
            vec![DataNodeId(4), DataNodeId(5), DataNodeId(6)]
        );
    });
}

#[test]
fn maintain_tasks_on_one_region_run_one_at_a_time() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 100).await;
        h.store.hold_deletes();
        submit(&node, delete_task(10, 1)).await;
        submit(&node, delete_task(11, 1)).await;
        submit(&node, delete_task(12, 2)).await;
        until("both regions' deletes to reach the store", || {
            h.store.held_deletes() == 2
        })
        .await;
        settle().await;
        // Region 1's second task queues behind the first instead of reaching the store.
        assert_eq!(h.store.delete_calls(region(1)), 1);
        assert_eq!(h.store.delete_calls(region(2)), 1);
        h.store.release_deletes();
        for task in [10, 11, 12] {
            assert_eq!(finished(&node, task).await, TaskStatus::Success);
        }
        assert_eq!(h.store.delete_calls(region(1)), 2);
        // Every region's queue is gone once its work is done.
        assert!(node.inner.guards.busy_regions().is_empty());
    });
}

#[test]
fn long_poll_returns_when_the_task_finishes_not_at_the_end_of_its_wait() {
    let h = Harness::new();
    h.mem.set_delete_rate(1000);
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 3000).await;
        submit(&node, delete_task(10, 1)).await;
        let poller = node.clone();
        let poll = h.spawn(async move {
            poller
                .task_result(TaskId(10), Some(Duration::from_secs(60)))
                .await
        });
        until("the deletion to sleep on the clock", || {
            h.clock.next_deadline() == Some(1000)
        })
        .await;
        while !poll.is_finished() {
            settle().await;
            if !poll.is_finished() {
                assert!(h.clock.advance_to_next_deadline());
                assert!(h.clock.now_ms() <= 3000, "the poll outlived the task");
            }
        }
        assert_eq!(poll.await, Ok(TaskStatus::Success));
        assert_eq!(h.clock.now_ms(), 3000);
    });
}

#[test]
fn long_poll_ends_with_processing_when_its_wait_ends_on_the_clock() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        h.store.hold_deletes();
        submit(&node, delete_task(10, 1)).await;
        let poller = node.clone();
        let poll = h.spawn(async move {
            poller
                .task_result(TaskId(10), Some(Duration::from_millis(250)))
                .await
        });
        until("the poll to wait on the clock", || {
            h.clock.next_deadline() == Some(250)
        })
        .await;
        h.clock.advance(Duration::from_millis(249));
        settle().await;
        assert!(!poll.is_finished());
        h.clock.advance(Duration::from_millis(1));
        assert_eq!(poll.await, Ok(TaskStatus::Processing));
        h.store.release_deletes();
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);
    });
}

#[test]
fn rate_limited_delete_takes_size_over_rate_on_the_clock() {
    let h = Harness::new();
    h.mem.set_delete_rate(1000);
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 5000).await;
        submit(&node, delete_task(10, 1)).await;
        until("the deletion to sleep on the clock", || {
            h.clock.next_deadline().is_some()
        })
        .await;
        h.clock.advance(Duration::from_millis(2000));
        settle().await;
        // Detached at once, deleted progressively: 2 s at 1000 B/s removed 2000 bytes.
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
        assert_eq!(h.mem.total_bytes(), 3000);
        assert_eq!(h.mem.regions_being_deleted(), [region(1)]);
        assert_eq!(status(&node, 10).await, TaskStatus::Processing);
        h.clock.advance(Duration::from_millis(2999));
        settle().await;
        assert_eq!(status(&node, 10).await, TaskStatus::Processing);
        h.clock.advance(Duration::from_millis(1));
        assert_eq!(finished(&node, 10).await, TaskStatus::Success);
        assert_eq!(h.clock.now_ms(), 5000);
        assert_eq!(h.mem.total_bytes(), 0);
        assert!(h.mem.regions_being_deleted().is_empty());
    });
}

#[test]
fn acked_results_are_forgotten_durably() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        h.store.hold_deletes();
        submit(&node, delete_task(1, 1)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        assert!(matches!(
            node.ack_task(E1, TaskId(1)).await,
            Err(ApiError::Refused(_))
        ));
        h.store.release_deletes();
        finished(&node, 1).await;
        assert_eq!(node.ack_task(E1, TaskId(1)).await, Ok(()));
        assert_eq!(status(&node, 1).await, TaskStatus::NotExist);
        assert_eq!(node.ack_task(E1, TaskId(1)).await, Ok(()));
        assert_eq!(
            node.task_counts(),
            TaskCounts {
                running: 0,
                terminal: 0
            }
        );
        node.halt();
        assert_eq!(status(&h.open().await, 1).await, TaskStatus::NotExist);
    });
}

#[test]
fn unacked_results_are_bounded_by_count_oldest_first() {
    let h = Harness::new();
    h.run(async {
        let config = DataNodeConfig {
            max_retained_results: 3,
            ..DataNodeConfig::default()
        };
        let node = h.open_with(config.clone()).await;
        for task in 1..=10 {
            submit(&node, delete_task(task, task as u32)).await;
            finished(&node, task).await;
        }
        assert_eq!(
            node.task_counts(),
            TaskCounts {
                running: 0,
                terminal: 3
            }
        );
        for task in 1..=7 {
            assert_eq!(
                status(&node, task).await,
                TaskStatus::NotExist,
                "task-{task}"
            );
        }
        for task in 8..=10 {
            assert_eq!(
                status(&node, task).await,
                TaskStatus::Success,
                "task-{task}"
            );
        }
        node.halt();
        let restarted = h.open_with(config).await;
        assert_eq!(restarted.task_counts().terminal, 3);
    });
}

#[test]
fn unacked_results_older_than_the_retention_age_are_evicted() {
    let h = Harness::new();
    h.run(async {
        let config = DataNodeConfig {
            result_retention: Some(Duration::from_secs(10)),
            ..DataNodeConfig::default()
        };
        let node = h.open_with(config).await;
        submit(&node, delete_task(1, 1)).await;
        finished(&node, 1).await;
        h.clock.advance(Duration::from_secs(11));
        submit(&node, delete_task(2, 2)).await;
        finished(&node, 2).await;
        assert_eq!(status(&node, 1).await, TaskStatus::NotExist);
        assert_eq!(status(&node, 2).await, TaskStatus::Success);
    });
}

#[test]
fn journal_is_compacted_and_still_restores_every_live_task() {
    let h = Harness::new();
    h.run(async {
        let config = DataNodeConfig {
            compact_threshold: 8,
            // Acked ids and region fences are kept through compaction; few here.
            max_markers: 2,
            ..DataNodeConfig::default()
        };
        let node = h.open_with(config.clone()).await;
        for task in 1..=30 {
            submit(&node, delete_task(task, task as u32)).await;
            finished(&node, task).await;
            if task <= 27 {
                node.ack_task(E1, TaskId(task)).await.expect("ack");
            }
        }
        // 30 accepted + 30 finished + 27 forgotten records without compaction.
        assert!(
            h.journal.len() <= 16,
            "journal holds {} records",
            h.journal.len()
        );
        node.halt();
        let restarted = h.open_with(config).await;
        assert_eq!(restarted.highest_epoch(), E1);
        assert_eq!(
            restarted.task_counts(),
            TaskCounts {
                running: 0,
                terminal: 3
            }
        );
        for task in 28..=30 {
            assert_eq!(status(&restarted, task).await, TaskStatus::Success);
        }
    });
}

#[test]
fn undecodable_journal_record_fails_open_with_a_typed_error() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        submit(&node, delete_task(1, 1)).await;
        finished(&node, 1).await;
        node.halt();
        h.journal
            .append(vec![0, 2, 1, 2, 3, 4, 0xff])
            .await
            .expect("append");
        match h.try_open(DataNodeConfig::default()).await {
            Err(error @ DataNodeError::Journal(ReplayError::Undecodable { index: 3, .. })) => {
                assert!(!error.is_retryable());
            }
            other => panic!("expected an undecodable-record error, got {other:?}"),
        }
    });
}

#[test]
fn journal_record_with_unknown_code_fails_open() {
    let h = Harness::new();
    h.run(async {
        let body = [0xa0]; // an empty CBOR map
        let code: u16 = 999;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&code.to_be_bytes()), &body);
        let mut record = code.to_be_bytes().to_vec();
        record.extend_from_slice(&crc.to_be_bytes());
        record.extend_from_slice(&body);
        h.journal.append(record).await.expect("append");
        let opened = h.try_open(DataNodeConfig::default()).await;
        assert!(
            matches!(
                opened,
                Err(DataNodeError::Journal(ReplayError::Undecodable {
                    index: 0,
                    source: super::journal::JournalDecodeError::UnknownCode(999),
                }))
            ),
            "{opened:?}"
        );
    });
}

#[test]
fn journal_records_round_trip_under_their_stable_codes() {
    let records = [
        JournalRecord::EpochSeen { epoch: Epoch(9) },
        JournalRecord::TaskAccepted {
            task_id: TaskId(3),
            kind: (&MaintainTaskKind::DeleteRegionPeer {
                region: region(4),
                generation: 0,
            })
                .into(),
        },
        JournalRecord::finished(TaskId(3), &TaskStatus::Fail("disk".into()), 12),
        JournalRecord::TaskForgotten {
            task_id: TaskId(3),
            reason: super::journal::ForgetReason::Acked,
        },
        JournalRecord::RegionFenced {
            region: region(4),
            generation: 7,
        },
    ];
    let codes: Vec<u8> = RecordCode::ALL.iter().map(|code| code.code()).collect();
    assert_eq!(codes, vec![1, 2, 3, 4, 5]);
    for record in records {
        let bytes = record.encode();
        assert_eq!(
            u16::from_be_bytes([bytes[0], bytes[1]]),
            u16::from(record.code().code())
        );
        assert_eq!(JournalRecord::decode(&bytes), Ok(record.clone()));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(JournalRecord::decode(&flipped).is_err());
    }
}

#[test]
fn create_region_is_idempotent_and_a_conflicting_config_is_refused() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        assert_eq!(
            node.create_region(E1, create_request(1, &[1, 2])).await,
            Ok(())
        );
        assert_eq!(
            node.create_region(E1, create_request(1, &[1, 2])).await,
            Ok(())
        );
        let conflict = node.create_region(E1, create_request(1, &[3])).await;
        assert!(
            matches!(&conflict, Err(error @ ApiError::Refused(_)) if !error.is_retryable()),
            "{conflict:?}"
        );
        assert_eq!(node.write_region(region(1), vec![1; 10]).await, Ok(10));
        assert_eq!(node.write_region(region(1), vec![1; 5]).await, Ok(15));
        assert!(matches!(
            node.write_region(region(2), vec![1]).await,
            Err(ApiError::Refused(_))
        ));
        assert_eq!(node.delete_region(E1, region(1)).await, Ok(()));
        assert_eq!(node.delete_region(E1, region(1)).await, Ok(()));
        assert_eq!(h.mem.size(region(1)).await, Ok(None));
    });
}

#[test]
fn heartbeat_reports_regions_and_running_tasks() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 1, 10).await;
        create_with_data(&node, 2, 20).await;
        h.store.hold_deletes();
        submit(&node, delete_task(7, 2)).await;
        until("the delete to reach the store", || {
            h.store.held_deletes() == 1
        })
        .await;
        let report = node.heartbeat(E1).await.expect("heartbeat");
        let regions: Vec<_> = report.regions.iter().map(|r| (r.region, r.bytes)).collect();
        assert_eq!(regions, vec![(region(1), 10), (region(2), 20)]);
        assert_eq!(report.running_tasks, vec![TaskId(7)]);
        h.store.release_deletes();
        finished(&node, 7).await;
        let report = node.heartbeat(E1).await.expect("heartbeat");
        assert_eq!(report.regions.len(), 1);
        assert!(report.running_tasks.is_empty());
    });
}

/// Spawns onto smol's global, multi-threaded executor.
struct GlobalSmolSpawner;

impl Spawner for GlobalSmolSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        smol::spawn(future).detach();
    }
}

#[test]
#[allow(
    clippy::disallowed_methods,
    reason = "this test is about real threads racing one DataNode; no logic under test spawns them"
)]
fn concurrent_resubmits_from_many_threads_run_the_task_once() {
    let h = Harness::new();
    let rt = Runtime {
        spawner: Arc::new(GlobalSmolSpawner),
        ..h.runtime()
    };
    let node = smol::block_on(DataNode::open(
        rt,
        Arc::new(h.store.clone()),
        Arc::new(h.journal.clone()),
        DataNodeConfig::default(),
    ))
    .expect("open");
    smol::block_on(create_with_data(&node, 1, 100));
    h.store.hold_deletes();
    let submitters: Vec<_> = (0..8)
        .map(|_| {
            let node = node.clone();
            std::thread::spawn(move || smol::block_on(node.submit_task(E1, delete_task(5, 1))))
        })
        .collect();
    for submitter in submitters {
        let outcome = submitter.join().expect("submitter thread");
        assert_eq!(outcome, Ok(SubmitOutcome::Accepted));
    }
    // Real threads: wait generously (about 30 s) for the one deletion to reach the store.
    let mut waited = 0u32;
    while h.store.held_deletes() == 0 {
        waited += 1;
        assert!(waited < 30_000, "delete never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    h.store.release_deletes();
    let status = smol::block_on(async {
        loop {
            let status = status(&node, 5).await;
            if status.is_terminal() {
                break status;
            }
            smol::Timer::after(Duration::from_millis(1)).await;
        }
    });
    assert_eq!(status, TaskStatus::Success);
    assert_eq!(h.store.delete_calls(region(1)), 1);
    assert_eq!(h.store.deletions_executed(region(1)), 1);
}

#[test]
fn a_create_sent_before_a_deletion_and_arriving_after_it_is_refused() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        let stale = CreateRegionRequest {
            generation: 1,
            ..create_request(5, &[1])
        };
        node.create_region(E1, stale.clone())
            .await
            .expect("created");
        submit(&node, delete_task(50, 5)).await;
        assert_eq!(finished(&node, 50).await, TaskStatus::Success);
        // The same create, delivered late (a duplicate, or a slow one): refused, nothing made.
        let late = node.create_region(E1, stale.clone()).await;
        assert!(matches!(late, Err(ApiError::Refused(_))), "{late:?}");
        assert_eq!(
            h.mem.size(region(5)).await.unwrap(),
            None,
            "no replica came back"
        );
        // A later creation (a new generation: the node joined the footprint again) is fine.
        node.create_region(E1, create_request(5, &[1]))
            .await
            .expect("a newer generation creates");
        // The fence survives an ack, a compaction and a restart.
        node.ack_task(E1, TaskId(50)).await.expect("acked");
        node.halt();
        let restarted = h
            .open_with(DataNodeConfig {
                compact_threshold: 0,
                ..DataNodeConfig::default()
            })
            .await;
        restarted
            .ack_task(E1, TaskId(999))
            .await
            .expect("ack of an unknown id compacts nothing away");
        let late = restarted.create_region(E1, stale).await;
        assert!(matches!(late, Err(ApiError::Refused(_))), "{late:?}");
    });
}

#[test]
fn a_duplicate_submission_arriving_after_the_ack_is_refused_and_never_runs() {
    let h = Harness::new();
    h.run(async {
        let node = h.open().await;
        create_with_data(&node, 6, 100).await;
        submit(&node, delete_task(60, 6)).await;
        assert_eq!(finished(&node, 60).await, TaskStatus::Success);
        node.ack_task(E1, TaskId(60)).await.expect("acked");
        let again = node.submit_task(E1, delete_task(60, 6)).await;
        assert!(
            matches!(&again, Ok(SubmitOutcome::Rejected(reason)) if reason.contains("acknowledged")),
            "{again:?}"
        );
        // Still refused after a restart (the ack is journaled).
        node.halt();
        let restarted = h.open().await;
        let again = restarted.submit_task(E1, delete_task(60, 6)).await;
        assert!(matches!(again, Ok(SubmitOutcome::Rejected(_))), "{again:?}");
        assert_eq!(h.store.deletions_executed(region(6)), 1, "the task ran once");
    });
}
