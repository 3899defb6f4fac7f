//! A DataNode over the file journal: the journal records of concurrent tasks (acceptances,
//! terminal statuses, acks) share one fdatasync each, and each is answered only once its
//! record is durable. Syncs are counted through the journal's flush counter, and a flush gate
//! decides when each flush may run, so the counts do not depend on timing.

use std::sync::Arc;
use std::time::Duration;

use crate::{FsRegionStore, FsTaskJournal, RegionStoreOptions};
use shoal_core::api::{DataNodeApi, MaintainTask, MaintainTaskKind, SubmitOutcome, TaskStatus};
use shoal_core::datanode::{DataNode, DataNodeConfig};
use shoal_core::model::{Epoch, RegionId, RegionKind, TaskId};

const TASKS: u64 = 16;

fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn concurrent_tasks_share_journal_fdatasyncs_and_answer_only_after_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = shoal_runtime_smol::smol_runtime();
    let store = FsRegionStore::open(
        dir.path(),
        RegionStoreOptions {
            delete_rate: None,
            clock: rt.clock.clone(),
        },
    )
    .expect("store");
    let journal = FsTaskJournal::open(dir.path().join("tasks.journal")).expect("journal");
    let node = Arc::new(
        smol::block_on(DataNode::open(
            rt,
            Arc::new(store),
            Arc::new(journal.clone()),
            DataNodeConfig::default(),
        ))
        .expect("open"),
    );
    let epoch = Epoch(1);
    // Raise the epoch first (its record is synced on its own, under the writer).
    smol::block_on(node.heartbeat(epoch)).expect("heartbeat");
    let base_flushes = journal.flushes();
    let base_staged = journal.staged();
    let gate = journal.gate_flushes();

    let submits: Vec<_> = (1..=TASKS)
        .map(|i| {
            let node = node.clone();
            smol::spawn(async move {
                let task = MaintainTask {
                    task_id: TaskId(i),
                    kind: MaintainTaskKind::DeleteRegionPeer {
                        region: RegionId::new(RegionKind::Data, i as u32),
                        generation: 1,
                    },
                };
                node.submit_task(epoch, task).await
            })
        })
        .collect();
    wait_until("every acceptance staged", || {
        journal.staged() == base_staged + TASKS
    });
    std::thread::sleep(Duration::from_millis(20));
    assert!(
        submits.iter().all(|s| !s.is_finished()),
        "no submission is answered before its record is durable"
    );
    assert_eq!(
        smol::block_on(node.task_result(TaskId(1), None)).expect("status"),
        TaskStatus::Processing,
        "not started before its acceptance is durable"
    );
    gate.send(()).expect("release the first flush");
    for submit in submits {
        assert_eq!(
            smol::block_on(submit).expect("submit"),
            SubmitOutcome::Accepted
        );
    }
    // Each runner deletes a missing region (Success) and stages its terminal status.
    wait_until("every terminal status staged", || {
        journal.staged() == base_staged + 2 * TASKS
    });
    std::thread::sleep(Duration::from_millis(20));
    for i in 1..=TASKS {
        assert_eq!(
            smol::block_on(node.task_result(TaskId(i), None)).expect("status"),
            TaskStatus::Processing,
            "a terminal status is visible only once durable"
        );
    }
    gate.send(()).expect("release the second flush");
    for i in 1..=TASKS {
        let status = smol::block_on(node.task_result(TaskId(i), Some(Duration::from_secs(30))));
        assert_eq!(status.expect("status"), TaskStatus::Success);
    }
    let acks: Vec<_> = (1..=TASKS)
        .map(|i| {
            let node = node.clone();
            smol::spawn(async move { node.ack_task(epoch, TaskId(i)).await })
        })
        .collect();
    wait_until("every ack staged", || {
        journal.staged() == base_staged + 3 * TASKS
    });
    gate.send(()).expect("release the third flush");
    for ack in acks {
        smol::block_on(ack).expect("ack");
    }
    drop(gate);
    assert_eq!(
        journal.flushes() - base_flushes,
        3,
        "{} records, one fdatasync per kind of record",
        3 * TASKS
    );
}
