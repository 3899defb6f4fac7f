use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::examples::{
    AwaitGateProcedure, CounterProcedure, ExampleWorld, GateProcedure, ParentProcedure,
    StagingMode, StagingProcedure, example_registry,
};
use super::testing::{CrashHarness, RunOutcome};
use super::*;
use crate::consensus::{Consensus, LocalConsensus};
use crate::model::ProcedureId;
use crate::plan::{self, ConfigPlan};
use crate::runtime::{BoxFuture, Clock, ManualClock, Runtime, SeededRng, Spawner};
use crate::state::{
    Applied, ClusterState, LockMode, LockResource, NewProcedure, ProcedureStatus, Rejection,
};
use crate::storage::LogStore;
use crate::storage::mem::{MemLogStore, MemSnapshotStore};

struct ExSpawner(Arc<smol::Executor<'static>>);

impl Spawner for ExSpawner {
    fn spawn(&self, _name: &str, future: BoxFuture<()>) {
        self.0.spawn(future).detach();
    }
}

/// One test's world: a single-threaded smol executor, a manual clock, a shared log.
struct Rig {
    spawner: Arc<dyn Spawner>,
    clock: ManualClock,
    runtime: Runtime,
    log: MemLogStore,
    snapshots: MemSnapshotStore,
    world: Arc<ExampleWorld>,
    registry: Arc<ProcedureRegistry>,
}

fn run<F: Future<Output = ()>>(test: impl FnOnce(Rig) -> F) {
    let ex = Arc::new(smol::Executor::new());
    let clock = ManualClock::new();
    let spawner: Arc<dyn Spawner> = Arc::new(ExSpawner(ex.clone()));
    let rig = Rig {
        spawner: spawner.clone(),
        clock: clock.clone(),
        runtime: Runtime {
            clock: Arc::new(clock),
            spawner,
            rng: Arc::new(SeededRng::new(1)),
        },
        log: MemLogStore::new(),
        snapshots: MemSnapshotStore::new(),
        world: Arc::new(ExampleWorld::new()),
        registry: Arc::new(example_registry().expect("example types register")),
    };
    smol::block_on(ex.run(test(rig)));
}

fn config(workers: usize) -> ExecutorConfig {
    ExecutorConfig {
        workers,
        retention: RetentionPolicy {
            check_every: None,
            ..RetentionPolicy::default()
        },
        ..ExecutorConfig::default()
    }
}

impl Rig {
    /// A ConfigNode over the shared log that has campaigned, with a started executor.
    async fn node(&self, config: ExecutorConfig) -> (Arc<LocalConsensus>, Arc<ProcedureExecutor>) {
        let consensus = Arc::new(LocalConsensus::new(
            Arc::new(self.log.clone()),
            Arc::new(self.snapshots.clone()),
        ));
        consensus.campaign().await.expect("campaign");
        let executor = ProcedureExecutor::new(
            consensus.clone(),
            self.registry.clone(),
            self.runtime.clone(),
            self.world.clone(),
            config,
        );
        executor.start();
        executor.wait_running().await;
        (consensus, executor)
    }

    /// Lets background tasks run, advancing the clock when nothing else happens, until
    /// `done` holds. Fails the test after many rounds.
    async fn drive(&self, mut done: impl FnMut() -> bool) {
        for _ in 0..20_000 {
            if done() {
                return;
            }
            settle().await;
            if done() {
                return;
            }
            self.clock.advance_to_next_deadline();
        }
        panic!("condition never held");
    }

    fn committed_plans(&self) -> Vec<ConfigPlan> {
        self.log
            .read(1, 100_000)
            .expect("read log")
            .iter()
            .map(|e| ConfigPlan::decode(&e.payload).expect("decodes"))
            .collect()
    }
}

async fn settle() {
    for _ in 0..64 {
        futures_lite::future::yield_now().await;
    }
}

fn status_of(executor: &ProcedureExecutor, id: ProcedureId) -> ProcedureView {
    executor.get(id).expect("recorded").status
}

fn effects(world: &ExampleWorld) -> Vec<String> {
    world.effects().into_keys().collect()
}

#[test]
fn multi_step_procedure_commits_every_transition_and_succeeds() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(2)).await;
        let id = executor
            .submit(Box::new(CounterProcedure::new("c", 3)), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Succeeded);
        assert_eq!(
            decode_data::<u32>(&info.output.expect("output")).ok(),
            Some(3)
        );
        assert_eq!(info.state_name, "Finish");
        assert_eq!(effects(&rig.world), vec!["c/0", "c/1", "c/2"]);
        let updates: Vec<_> = rig
            .committed_plans()
            .into_iter()
            .filter_map(|p| match p {
                ConfigPlan::UpdateProcedure(u) => Some(u.record.state_name),
                _ => None,
            })
            .collect();
        // Three counted steps and the final Done, each committed on its own.
        assert_eq!(updates, vec!["Count", "Count", "Finish", "Finish"]);
    });
}

#[test]
fn parent_resumes_after_children_finish_and_reads_their_outputs() {
    run(|rig| async move {
        let (consensus, executor) = rig.node(config(2)).await;
        let id = executor
            .submit(Box::new(ParentProcedure::new("p", 3, 2)), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Succeeded);
        assert_eq!(info.children.len(), 3);
        assert_eq!(rig.world.effects().get("p/sum"), Some(&6));
        consensus.state().read(|s| {
            for child in &info.children {
                let record = &s.procedures[child];
                assert_eq!(record.parent, Some(id));
                assert_eq!(record.status, ProcedureStatus::Succeeded);
            }
        });
    });
}

#[test]
fn children_and_the_parents_transition_commit_in_one_log_entry() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let id = executor
            .submit(Box::new(ParentProcedure::new("p", 2, 1)), None)
            .await
            .expect("submitted");
        executor.wait_finished(id).await.expect("finished");
        let spawning: Vec<_> = rig
            .committed_plans()
            .into_iter()
            .filter_map(|p| match p {
                ConfigPlan::UpdateProcedure(u) if !u.spawn.is_empty() => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(spawning.len(), 1, "children spawned exactly once");
        assert_eq!(spawning[0].record.status, ProcedureStatus::Suspended);
        assert_eq!(spawning[0].spawn.len(), 2);
    });
}

#[test]
fn retryable_error_backs_off_visibly_then_succeeds() {
    run(|rig| async move {
        rig.world.fail_transiently("flaky", 3);
        let (_c, executor) = rig.node(config(1)).await;
        let id = executor
            .submit(Box::new(CounterProcedure::new("flaky", 2)), None)
            .await
            .expect("submitted");
        rig.drive(|| executor.get(id).is_some_and(|i| i.attempts >= 1))
            .await;
        let info = executor.get(id).expect("recorded");
        assert_eq!(info.status, ProcedureView::Waiting);
        assert!(info.last_error.expect("error recorded").contains("flaked"));
        assert!(info.waiting_for.expect("reason").contains("retry"));
        rig.drive(|| status_of(&executor, id) == ProcedureView::Succeeded)
            .await;
        let info = executor.get(id).expect("recorded");
        assert_eq!(info.attempts, 0);
        assert_eq!(info.last_error, None);
        assert_eq!(effects(&rig.world), vec!["flaky/0", "flaky/1"]);
    });
}

#[test]
fn backoff_grows_exponentially_with_jitter_up_to_the_cap() {
    let policy = BackoffPolicy {
        initial: Duration::from_millis(100),
        max: Duration::from_millis(1_000),
        max_attempts: Some(5),
    };
    let rng = SeededRng::new(3);
    for (attempt, base) in [
        (1, 100),
        (2, 200),
        (3, 400),
        (4, 800),
        (5, 1_000),
        (30, 1_000),
    ] {
        for _ in 0..20 {
            let d = policy.delay(attempt, &rng).as_millis() as u64;
            assert!(
                d >= base / 2 && d <= base,
                "attempt {attempt}: {d} outside [{}, {base}]",
                base / 2
            );
        }
    }
    let spread: BTreeSet<u128> = (0..20).map(|_| policy.delay(3, &rng).as_millis()).collect();
    assert!(spread.len() > 1, "jitter varies the delay");
    assert!(policy.may_retry(4));
    assert!(!policy.may_retry(5));
}

#[test]
fn non_retryable_error_rolls_back_when_supported() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let p = CounterProcedure::new("r", 4).failing_at(2).with_rollback();
        let id = executor.submit(Box::new(p), None).await.expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::RolledBack);
        assert!(info.last_error.expect("cause kept").contains("failed at 2"));
        assert!(
            effects(&rig.world).is_empty(),
            "rollback undid every effect"
        );
    });
}

#[test]
fn non_retryable_error_without_rollback_fails_with_the_error_recorded() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let p = CounterProcedure::new("f", 4).failing_at(2);
        let id = executor.submit(Box::new(p), None).await.expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Failed);
        assert!(info.last_error.expect("error").contains("failed at 2"));
        assert_eq!(effects(&rig.world), vec!["f/0", "f/1", "f/2"]);
    });
}

#[test]
fn exhausted_retries_count_as_a_permanent_failure() {
    run(|rig| async move {
        rig.world.fail_transiently("x", 100);
        let mut cfg = config(1);
        cfg.backoff.max_attempts = Some(3);
        let (_c, executor) = rig.node(cfg).await;
        let id = executor
            .submit(Box::new(CounterProcedure::new("x", 1)), None)
            .await
            .expect("submitted");
        rig.drive(|| status_of(&executor, id) == ProcedureView::Failed)
            .await;
        assert!(
            executor
                .get(id)
                .and_then(|i| i.last_error)
                .expect("error")
                .contains("flaked")
        );
    });
}

#[test]
fn procedures_on_one_key_serialize_while_disjoint_keys_run_concurrently() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(4)).await;
        let x = GateProcedure::exclusive("x");
        let y = GateProcedure::exclusive("y");
        let a = executor
            .submit(
                Box::new(GateProcedure::new("a", "ga", vec![x.clone()])),
                None,
            )
            .await
            .expect("a");
        let b = executor
            .submit(Box::new(GateProcedure::new("b", "gb", vec![x])), None)
            .await
            .expect("b");
        let c = executor
            .submit(Box::new(GateProcedure::new("c", "gc", vec![y])), None)
            .await
            .expect("c");
        let world = rig.world.clone();
        rig.drive(|| world.events().len() >= 2).await;
        settle().await;
        let events = rig.world.events();
        assert!(events.contains(&"start:a".to_string()));
        assert!(
            events.contains(&"start:c".to_string()),
            "disjoint key runs concurrently"
        );
        assert!(!events.contains(&"start:b".to_string()), "same key waits");
        let waiting = executor.get(b).expect("b recorded");
        assert_eq!(waiting.status, ProcedureView::Waiting);
        assert!(
            waiting
                .waiting_for
                .expect("reason")
                .contains(&a.to_string())
        );
        rig.world.open_gate("gb");
        settle().await;
        assert!(!rig.world.events().contains(&"start:b".to_string()));
        rig.world.open_gate("ga");
        rig.world.open_gate("gc");
        for id in [a, b, c] {
            assert_eq!(
                executor.wait_finished(id).await.expect("done").status,
                ProcedureView::Succeeded
            );
        }
        let events = rig.world.events();
        let pos = |e: &str| events.iter().position(|x| x == e).expect("event");
        assert!(
            pos("end:a") < pos("start:b"),
            "b ran only after a released x"
        );
    });
}

#[test]
fn lock_table_grants_fifo_and_lets_children_inherit() {
    let key = |r: &str, mode| crate::state::LockKey {
        resource: LockResource::Named(r.into()),
        mode,
    };
    let none = BTreeSet::new;
    let mut t = LockTable::new();
    assert!(t.enqueue(ProcedureId(1), vec![key("db", LockMode::Shared)], none()));
    assert!(t.enqueue(ProcedureId(2), vec![key("db", LockMode::Shared)], none()));
    assert!(!t.enqueue(ProcedureId(3), vec![key("db", LockMode::Exclusive)], none()));
    // A later shared request must not overtake the waiting exclusive one.
    assert!(!t.enqueue(ProcedureId(4), vec![key("db", LockMode::Shared)], none()));
    assert_eq!(t.release(ProcedureId(1)), vec![]);
    assert_eq!(t.release(ProcedureId(2)), vec![ProcedureId(3)]);
    // A child of 3 inherits its exclusive hold even though 4 waits on the resource.
    let child = [ProcedureId(3)].into_iter().collect();
    assert!(t.enqueue(
        ProcedureId(5),
        vec![
            key("db", LockMode::Shared),
            key("node", LockMode::Exclusive)
        ],
        child
    ));
    assert_eq!(t.blocker(ProcedureId(4)).map(|b| b.0), Some(ProcedureId(3)));
    assert_eq!(t.release(ProcedureId(5)), vec![]);
    assert_eq!(t.release(ProcedureId(3)), vec![ProcedureId(4)]);
}

#[test]
fn one_worker_with_a_thousand_waiting_procedures_still_finishes_a_runnable_one() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let mut sleepers = Vec::new();
        for i in 0..1_000 {
            let p = CounterProcedure::new(&format!("sleeper{i}"), 1).with_wait(3_600_000);
            sleepers.push(executor.submit(Box::new(p), None).await.expect("submitted"));
        }
        let id = executor
            .submit(Box::new(CounterProcedure::new("runnable", 5)), None)
            .await
            .expect("submitted");
        // The clock never moves: only a runnable procedure can finish.
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Succeeded);
        assert_eq!(rig.clock.now_ms(), 0);
        let waiting = sleepers
            .iter()
            .filter(|s| status_of(&executor, **s) == ProcedureView::Waiting)
            .count();
        assert_eq!(waiting, 1_000);
    });
}

#[test]
fn awaiting_step_holds_no_worker_and_commits_nothing_until_woken() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let awaiting = executor
            .submit(Box::new(AwaitGateProcedure::new("a", "ga")), None)
            .await
            .expect("submitted");
        let world = rig.world.clone();
        rig.drive(|| status_of(&executor, awaiting) == ProcedureView::Waiting)
            .await;
        assert_eq!(
            executor
                .get(awaiting)
                .expect("recorded")
                .waiting_for
                .as_deref(),
            Some("gate ga")
        );
        let log_len = rig.log.last_index();
        // The only worker is free: a runnable procedure finishes meanwhile.
        let id = executor
            .submit(Box::new(CounterProcedure::new("runnable", 3)), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Succeeded);
        assert_eq!(status_of(&executor, awaiting), ProcedureView::Waiting);
        let committed_meanwhile = rig.log.last_index() - log_len;
        // The counter's submit and its 4 transitions; nothing from the awaiting procedure.
        assert_eq!(committed_meanwhile, 5);
        rig.world.open_gate("ga");
        rig.drive(|| status_of(&executor, awaiting) == ProcedureView::Succeeded)
            .await;
        assert_eq!(world.effects().get("a/done"), Some(&1));
    });
}

#[test]
fn an_await_keeps_the_live_instance_only_while_its_data_is_the_record() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        // One at a time: an await gate wakes on any event, its own check included.
        for (name, scribbles) in [("kept", false), ("dropped", true)] {
            let mut procedure = AwaitGateProcedure::new(name, name);
            procedure.data.scribbles = scribbles;
            let id = executor
                .submit(Box::new(procedure), None)
                .await
                .expect("submitted");
            rig.drive(|| status_of(&executor, id) == ProcedureView::Waiting)
                .await;
            // Two wake-ups with its gate still closed: each run awaits again.
            for other in ["x", "y"] {
                let before = rig.world.events().len();
                rig.world.open_gate(&format!("{name}-{other}"));
                rig.drive(|| {
                    rig.world.events().len() > before
                        && status_of(&executor, id) == ProcedureView::Waiting
                })
                .await;
            }
            rig.world.open_gate(name);
            rig.drive(|| status_of(&executor, id) == ProcedureView::Succeeded)
                .await;
        }
        let effects = rig.world.effects();
        // Unchanged data: one live instance throughout, which counted all three awaits.
        assert_eq!(effects.get("kept/awaits"), Some(&3), "{effects:?}");
        // Changed data (never committed): each such instance was dropped and the next run
        // decoded the record — its name unscribbled, its count started again.
        assert_eq!(effects.get("dropped/done"), Some(&1), "{effects:?}");
        assert!(effects.keys().all(|key| !key.contains('~')), "{effects:?}");
        assert_eq!(effects.get("dropped/awaits"), Some(&0), "{effects:?}");
    });
}

#[test]
fn waiting_procedure_reports_what_it_waits_for() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let id = executor
            .submit(
                Box::new(CounterProcedure::new("w", 1).with_wait(5_000)),
                None,
            )
            .await
            .expect("submitted");
        rig.drive(|| status_of(&executor, id) == ProcedureView::Waiting)
            .await;
        let info = executor.get(id).expect("recorded");
        assert_eq!(info.waiting_for.as_deref(), Some("timer before step 0"));
        assert_eq!(info.state_name, "Count");
        rig.drive(|| status_of(&executor, id) == ProcedureView::Succeeded)
            .await;
        assert!(rig.clock.now_ms() >= 5_000);
    });
}

#[test]
fn stopping_the_executor_mid_step_never_commits_success() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(1)).await;
        let id = executor
            .submit(Box::new(GateProcedure::new("g", "gate", vec![])), None)
            .await
            .expect("submitted");
        let world = rig.world.clone();
        rig.drive(|| world.events().contains(&"start:g".to_string()))
            .await;
        let log_len = rig.log.last_index();
        executor.shutdown().await;
        rig.world.open_gate("gate");
        settle().await;
        assert_eq!(
            rig.log.last_index(),
            log_len,
            "nothing committed after the stop"
        );
        let info = executor.get(id).expect("recorded");
        assert_eq!(info.status, ProcedureView::Running);
        assert!(
            !rig.world.events().contains(&"end:g".to_string()),
            "the step was dropped"
        );
        // The next leader re-runs the step.
        let (_c2, next) = rig.node(config(1)).await;
        assert_eq!(
            next.wait_finished(id).await.expect("done").status,
            ProcedureView::Succeeded
        );
    });
}

#[test]
fn deposed_leader_commits_nothing_and_the_new_leader_finishes_the_step() {
    run(|rig| async move {
        let (old_consensus, old) = rig.node(config(1)).await;
        let id = old
            .submit(
                Box::new(CounterProcedure::new("d", 3).with_wait(1_000)),
                None,
            )
            .await
            .expect("submitted");
        rig.drive(|| status_of(&old, id) == ProcedureView::Waiting)
            .await;
        // Another ConfigNode takes over the same log.
        let (_c, new) = rig.node(config(1)).await;
        assert!(
            old_consensus
                .state()
                .read(|s| s.procedures.contains_key(&id))
        );
        rig.drive(|| status_of(&new, id) == ProcedureView::Succeeded)
            .await;
        settle().await;
        assert!(!old.is_running(), "the deposed executor stopped");
        let finishes = rig
            .committed_plans()
            .into_iter()
            .filter(|p| {
                matches!(p, ConfigPlan::UpdateProcedure(u)
                if u.record.id == id && u.record.status == ProcedureStatus::Succeeded)
            })
            .count();
        assert_eq!(finishes, 1);
        assert_eq!(effects(&rig.world), vec!["d/0", "d/1", "d/2"]);
    });
}

#[test]
fn wait_finished_reports_lost_leadership_instead_of_hanging() {
    run(|rig| async move {
        let (consensus, executor) = rig.node(config(1)).await;
        let id = executor
            .submit(Box::new(GateProcedure::new("g", "never", vec![])), None)
            .await
            .expect("submitted");
        let waiter = executor.wait_finished(id);
        let stepper = async {
            settle().await;
            consensus.step_down();
            futures_lite::future::pending::<()>().await;
            unreachable!()
        };
        let result = futures_lite::future::or(waiter, stepper).await;
        assert_eq!(result, Err(ProcedureError::NotLeader));
    });
}

fn unknown_procedure() -> ConfigPlan {
    ConfigPlan::SubmitProcedure(plan::SubmitProcedure {
        procedure: NewProcedure {
            type_code: 4242,
            type_name: "FromTheFuture".into(),
            state_code: 1,
            state_name: "Start".into(),
            data: vec![1, 2, 3],
            lock_keys: vec![],
            submitted_at_ms: 0,
            submitted_unix_ms: 0,
        },
        request_key: None,
    })
}

#[test]
fn unknown_type_code_survives_reload_and_retention_and_is_reported_unreadable() {
    run(|rig| async move {
        let (consensus, executor) = rig.node(config(1)).await;
        let epoch = consensus.leadership().get().epoch;
        let unknown = match consensus.propose(epoch, unknown_procedure()).await {
            Ok(Ok(Applied::ProcedureSubmitted { id, .. })) => id,
            other => panic!("unexpected {other:?}"),
        };
        let done = executor
            .submit(Box::new(CounterProcedure::new("c", 1)), None)
            .await
            .expect("submitted");
        executor.wait_finished(done).await.expect("finished");
        executor.shutdown().await;
        // Reload on a fresh node that retains nothing: the unknown record is kept, reported,
        // never run.
        let mut cfg = config(1);
        cfg.retention.max_finished = 0;
        let (consensus, executor) = rig.node(cfg).await;
        executor.prune_now().await.expect("leader");
        settle().await;
        let info = executor.get(unknown).expect("kept");
        assert_eq!(info.status, ProcedureView::Unreadable);
        assert!(info.waiting_for.expect("reason").contains("4242"));
        assert!(
            executor.get(done).is_none(),
            "finished procedure pruned by retention"
        );
        consensus.state().read(|s| {
            assert_eq!(s.procedures[&unknown].status, ProcedureStatus::Runnable);
            assert_eq!(s.procedures[&unknown].version, 0, "never run");
        });
        assert!(executor.list().iter().any(|i| i.id == unknown));
    });
}

#[test]
fn retried_submit_with_the_same_request_key_returns_the_same_id() {
    run(|rig| async move {
        let (consensus, executor) = rig.node(config(1)).await;
        let key = Some("client-42".to_string());
        let first = executor
            .submit(Box::new(CounterProcedure::new("k", 1)), key.clone())
            .await
            .expect("submitted");
        let second = executor
            .submit(Box::new(CounterProcedure::new("k", 1)), key)
            .await
            .expect("submitted");
        assert_eq!(first, second);
        assert_eq!(consensus.state().read(|s| s.procedures.len()), 1);
        assert_eq!(
            executor.get(first).and_then(|i| i.request_key).as_deref(),
            Some("client-42")
        );
    });
}

#[test]
fn submit_is_refused_without_leadership_or_for_an_unregistered_type() {
    run(|rig| async move {
        let (consensus, executor) = rig.node(config(1)).await;
        let mut registry = ProcedureRegistry::new();
        registry.register::<GateProcedure>().expect("register");
        let narrow = ProcedureExecutor::new(
            consensus.clone(),
            Arc::new(registry),
            rig.runtime.clone(),
            rig.world.clone(),
            config(1),
        );
        narrow.start();
        narrow.wait_running().await;
        let refused = narrow
            .submit(Box::new(CounterProcedure::new("u", 1)), None)
            .await;
        assert_eq!(refused, Err(ProcedureError::UnknownType(9001)));
        narrow.shutdown().await;
        consensus.step_down();
        settle().await;
        let refused = executor
            .submit(Box::new(CounterProcedure::new("n", 1)), None)
            .await;
        assert!(matches!(refused, Err(e) if e.is_stop()));
        assert_eq!(consensus.state().read(|s| s.procedures.len()), 0);
    });
}

#[test]
fn restarted_executor_restores_locks_in_id_order() {
    run(|rig| async move {
        let (_c, executor) = rig.node(config(2)).await;
        let x = GateProcedure::exclusive("x");
        let a = executor
            .submit(
                Box::new(GateProcedure::new("a", "ga", vec![x.clone()])),
                None,
            )
            .await
            .expect("a");
        let b = executor
            .submit(Box::new(GateProcedure::new("b", "gb", vec![x])), None)
            .await
            .expect("b");
        let world = rig.world.clone();
        rig.drive(|| world.events().contains(&"start:a".to_string()))
            .await;
        executor.shutdown().await;
        rig.world.open_gate("gb");
        let (_c2, next) = rig.node(config(2)).await;
        settle().await;
        let starts_b = rig
            .world
            .events()
            .iter()
            .filter(|e| *e == "start:b")
            .count();
        assert_eq!(starts_b, 0, "b still waits for a after recovery");
        assert_eq!(status_of(&next, b), ProcedureView::Waiting);
        rig.world.open_gate("ga");
        assert_eq!(
            next.wait_finished(b).await.expect("b").status,
            ProcedureView::Succeeded
        );
        assert_eq!(status_of(&next, a), ProcedureView::Succeeded);
    });
}

#[test]
fn finished_procedures_beyond_the_retention_count_are_pruned_oldest_first() {
    run(|rig| async move {
        let mut cfg = config(1);
        cfg.retention.max_finished = 2;
        let (consensus, executor) = rig.node(cfg).await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let id = executor
                .submit(Box::new(ParentProcedure::new(&format!("p{i}"), 1, 1)), None)
                .await
                .expect("submitted");
            executor.wait_finished(id).await.expect("finished");
            ids.push(id);
            settle().await;
        }
        settle().await;
        let kept: Vec<ProcedureId> = consensus.state().read(|s| {
            s.procedures
                .values()
                .filter(|r| r.parent.is_none())
                .map(|r| r.id)
                .collect()
        });
        assert_eq!(kept, ids[3..].to_vec());
        // Children go with their root.
        assert_eq!(consensus.state().read(|s| s.procedures.len()), 4);
    });
}

#[test]
fn finished_procedures_older_than_the_retention_age_are_pruned() {
    run(|rig| async move {
        let mut cfg = config(1);
        cfg.retention.max_age = Duration::from_secs(60);
        cfg.retention.check_every = Some(Duration::from_secs(10));
        let (_c, executor) = rig.node(cfg).await;
        let id = executor
            .submit(Box::new(CounterProcedure::new("old", 1)), None)
            .await
            .expect("submitted");
        executor.wait_finished(id).await.expect("finished");
        rig.clock.advance(Duration::from_secs(30));
        settle().await;
        assert!(executor.get(id).is_some(), "still within the age bound");
        rig.drive(|| executor.get(id).is_none()).await;
        assert!(rig.clock.now_ms() >= 60_000);
    });
}

#[test]
fn stale_transition_is_refused_by_version() {
    let mut state = ClusterState::default();
    let submit = |name: &str| {
        ConfigPlan::SubmitProcedure(plan::SubmitProcedure {
            procedure: transitions_new(name),
            request_key: None,
        })
    };
    state.apply(&submit("a")).expect("submitted");
    let record = state.procedures[&ProcedureId(1)].clone();
    let update = |expect| {
        ConfigPlan::UpdateProcedure(plan::UpdateProcedure {
            record: record.clone(),
            spawn: vec![transitions_new("child")],
            expect_version: Some(expect),
        })
    };
    assert!(state.apply(&update(0)).is_ok());
    assert_eq!(
        state.apply(&update(0)),
        Err(Rejection::ProcedureVersionMismatch {
            id: ProcedureId(1),
            expected: 0,
            current: 1
        })
    );
    assert_eq!(state.procedures.len(), 2, "the child was spawned once");
}

fn transitions_new(name: &str) -> NewProcedure {
    let p = CounterProcedure::new(name, 1);
    NewProcedure {
        type_code: p.type_code(),
        type_name: p.type_name().into(),
        state_code: p.state().code,
        state_name: p.state().name.into(),
        data: p.encode().expect("encodes"),
        lock_keys: p.lock_keys(),
        submitted_at_ms: 0,
        submitted_unix_ms: 0,
    }
}

// ---- crash harnesses over every example procedure ----

type Observed = (
    Vec<(u32, String, ProcedureStatus, Option<Vec<u8>>)>,
    Vec<(String, u64)>,
);

fn observe(state: &ClusterState, world: &ExampleWorld) -> Observed {
    let records = state
        .procedures
        .values()
        .map(|r| {
            (
                r.type_code,
                r.state_name.clone(),
                r.status,
                r.output.as_ref().map(|o| o.to_vec()),
            )
        })
        .collect();
    (records, world.effects().into_iter().collect())
}

fn harness(
    spawner: Arc<dyn Spawner>,
    make: impl Fn() -> Box<dyn Procedure> + Send + Sync + 'static,
) -> CrashHarness<ExampleWorld> {
    CrashHarness::new(
        spawner,
        Arc::new(example_registry().expect("registers")),
        ExampleWorld::new,
        move |_| make(),
    )
}

type MakeExample = Arc<dyn Fn() -> Box<dyn Procedure> + Send + Sync>;

fn examples() -> Vec<(&'static str, MakeExample)> {
    vec![
        (
            "counter",
            Arc::new(|| Box::new(CounterProcedure::new("c", 3)) as Box<dyn Procedure>),
        ),
        (
            "waiting counter with rollback",
            Arc::new(|| Box::new(CounterProcedure::new("w", 2).with_wait(500).with_rollback())),
        ),
        (
            "parent",
            Arc::new(|| Box::new(ParentProcedure::new("p", 2, 2))),
        ),
        (
            "parent with a failing child",
            Arc::new(|| Box::new(ParentProcedure::new("q", 2, 1).with_failing_child(1))),
        ),
        (
            "gate",
            Arc::new(|| {
                Box::new(GateProcedure::new(
                    "g",
                    "open",
                    vec![GateProcedure::exclusive("x")],
                ))
            }),
        ),
    ]
}

fn open_world() -> ExampleWorld {
    let world = ExampleWorld::new();
    world.open_gate("open");
    world
}

#[test]
fn every_example_survives_a_restart_at_every_step() {
    run(|rig| async move {
        for (name, make) in examples() {
            let h = CrashHarness::new(
                rig.spawner.clone(),
                rig.registry.clone(),
                open_world,
                move |_| make(),
            );
            let report = h
                .run_with_restart_at_every_step(observe)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(report.reference_persists >= 2, "{name}: {report:?}");
            assert!(
                report.runs as u64 > 2 * report.reference_persists,
                "{name}: {report:?}"
            );
        }
    });
}

#[test]
fn every_example_survives_a_leader_change_at_every_step() {
    run(|rig| async move {
        for (name, make) in examples() {
            let h = CrashHarness::new(
                rig.spawner.clone(),
                rig.registry.clone(),
                open_world,
                move |_| make(),
            );
            let report = h
                .run_with_leader_change_at_every_step(observe)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(report.reference_persists >= 2, "{name}: {report:?}");
            assert_eq!(report.runs as u64, 2 * report.reference_persists, "{name}");
        }
    });
}

#[test]
fn every_example_rolls_back_cleanly_when_aborted_at_any_step_even_if_interrupted() {
    run(|rig| async move {
        let no_effects_unless_failed = |o: &RunOutcome<ExampleWorld>| {
            let root = &o.state.procedures[&o.root];
            match root.status {
                ProcedureStatus::RolledBack if !o.env.effects().is_empty() => {
                    Err(format!("rolled back but left {:?}", o.env.effects()))
                }
                ProcedureStatus::RolledBack | ProcedureStatus::Failed => Ok(()),
                other => Err(format!("aborted root ended {other}")),
            }
        };
        for (name, make) in examples() {
            let h = CrashHarness::new(
                rig.spawner.clone(),
                rig.registry.clone(),
                open_world,
                move |_| make(),
            );
            let report = h
                .run_with_rollback_at_every_step(observe, no_effects_unless_failed)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(report.reference_steps >= 1, "{name}: {report:?}");
            assert_eq!(report.runs as u64, 2 * report.reference_steps, "{name}");
        }
    });
}

#[test]
fn harness_detects_a_procedure_that_is_not_idempotent() {
    // A counter whose effect is not idempotent (appends instead of sets) must be caught.
    run(|rig| async move {
        let h = harness(rig.spawner.clone(), || {
            Box::new(CounterProcedure::new("c", 2))
        });
        let counting = |state: &ClusterState, world: &ExampleWorld| {
            // Observing the log length makes every replayed commit visible.
            (
                state.next_procedure_id,
                world.events().len(),
                observe(state, world),
            )
        };
        h.run_with_restart_at_every_step(counting)
            .await
            .expect("counter is idempotent");
        let h = CrashHarness::new(
            rig.spawner.clone(),
            rig.registry.clone(),
            open_world,
            |_| Box::new(GateProcedure::new("g", "open", vec![])) as Box<dyn Procedure>,
        );
        // The gate's step records an event every time it runs: a re-run after a crash shows.
        let events = |_: &ClusterState, world: &ExampleWorld| world.events().len();
        let err = h
            .run_with_restart_at_every_step(events)
            .await
            .expect_err("re-run steps are visible to the observer");
        assert!(err.message.contains("differs"), "{err}");
    });
}

/// A consensus that applies the first proposal matching `lose` but reports it failed, as a
/// commit under Raft may land after its proposer saw a timeout.
struct LosesOneReply {
    inner: Arc<LocalConsensus>,
    lose: Box<dyn Fn(&ConfigPlan) -> bool + Send + Sync>,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Consensus for LosesOneReply {
    async fn propose(
        &self,
        epoch: crate::model::Epoch,
        plan: ConfigPlan,
    ) -> Result<crate::state::ApplyResult, crate::consensus::ConsensusError> {
        let lose = (self.lose)(&plan) && !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst);
        let result = self.inner.propose(epoch, plan).await;
        if lose && result.is_ok() {
            return Err(crate::consensus::ConsensusError::OutcomeUnknown(
                "applied; reply lost".into(),
            ));
        }
        result
    }
    fn state(&self) -> Arc<crate::consensus::StateCell> {
        self.inner.state()
    }
    fn leadership(&self) -> crate::consensus::LeadershipWatch {
        self.inner.leadership()
    }
    async fn claim_epoch_above(
        &self,
        seen: crate::model::Epoch,
    ) -> Result<crate::model::Epoch, crate::consensus::ConsensusError> {
        self.inner.claim_epoch_above(seen).await
    }
    async fn failed(&self) -> crate::consensus::ConsensusError {
        self.inner.failed().await
    }
}

impl Rig {
    /// Like [`Rig::node`], over a consensus that loses the reply of the first proposal
    /// matching `lose` (after applying it).
    async fn node_losing_one_reply(
        &self,
        lose: impl Fn(&ConfigPlan) -> bool + Send + Sync + 'static,
    ) -> (Arc<LocalConsensus>, Arc<ProcedureExecutor>) {
        let local = Arc::new(LocalConsensus::new(
            Arc::new(self.log.clone()),
            Arc::new(self.snapshots.clone()),
        ));
        local.campaign().await.expect("campaign");
        let consensus = Arc::new(LosesOneReply {
            inner: local.clone(),
            lose: Box::new(lose),
            lost: std::sync::atomic::AtomicBool::new(false),
        });
        let executor = ProcedureExecutor::new(
            consensus,
            self.registry.clone(),
            self.runtime.clone(),
            self.world.clone(),
            config(1),
        );
        executor.start();
        executor.wait_running().await;
        (local, executor)
    }
}

fn transition_to(status: ProcedureStatus) -> impl Fn(&ConfigPlan) -> bool + Send + Sync {
    move |plan| matches!(plan, ConfigPlan::UpdateProcedure(u) if u.record.status == status)
}

#[test]
fn a_done_commit_of_unknown_outcome_neither_revives_the_record_nor_leaks_its_locks() {
    run(|rig| async move {
        let (consensus, executor) = rig
            .node_losing_one_reply(transition_to(ProcedureStatus::Succeeded))
            .await;
        let first = executor
            .submit(Box::new(CounterProcedure::new("a", 2)), None)
            .await
            .expect("submitted");
        // Same lock: runs only once the first has released it.
        let second = executor
            .submit(Box::new(CounterProcedure::new("a", 1)), None)
            .await
            .expect("submitted");
        rig.drive(|| {
            consensus.state().read(|s| {
                [first, second]
                    .iter()
                    .all(|id| s.procedures[id].status.is_finished())
            })
        })
        .await;
        consensus.state().read(|s| {
            let record = &s.procedures[&first];
            assert_eq!(record.status, ProcedureStatus::Succeeded, "{record:?}");
            assert_eq!(s.procedures[&second].status, ProcedureStatus::Succeeded);
        });
        // Nothing was committed for the first after it finished.
        let after_done = rig
            .committed_plans()
            .into_iter()
            .filter_map(|p| match p {
                ConfigPlan::UpdateProcedure(u) if u.record.id == first => Some(u.record.status),
                _ => None,
            })
            .skip_while(|status| *status != ProcedureStatus::Succeeded)
            .count();
        assert_eq!(after_done, 1, "only the Done transition itself");
        executor.shutdown().await;
    });
}

#[test]
fn a_spawn_commit_of_unknown_outcome_still_waits_for_the_children() {
    run(|rig| async move {
        let (consensus, executor) = rig
            .node_losing_one_reply(transition_to(ProcedureStatus::Suspended))
            .await;
        let parent = executor
            .submit(Box::new(ParentProcedure::new("p", 3, 2)), None)
            .await
            .expect("submitted");
        rig.drive(|| {
            consensus
                .state()
                .read(|s| s.procedures[&parent].status.is_finished())
        })
        .await;
        consensus.state().read(|s| {
            let record = &s.procedures[&parent];
            assert_eq!(record.status, ProcedureStatus::Succeeded, "{record:?}");
            assert_eq!(record.children.len(), 3, "children spawned once");
        });
        assert_eq!(
            rig.world.effects().get("p/sum"),
            Some(&6),
            "every child's output summed"
        );
        executor.shutdown().await;
    });
}

#[test]
fn a_finished_record_is_immutable() {
    let mut state = ClusterState::default();
    let submit = ConfigPlan::SubmitProcedure(plan::SubmitProcedure {
        procedure: transitions_new("a"),
        request_key: None,
    });
    state.apply(&submit).expect("submitted");
    let mut done = state.procedures[&ProcedureId(1)].clone();
    done.status = ProcedureStatus::Succeeded;
    let finish = ConfigPlan::UpdateProcedure(plan::UpdateProcedure {
        record: done.clone(),
        spawn: Vec::new(),
        expect_version: Some(0),
    });
    state.apply(&finish).expect("finished");
    let before = state.clone();
    let mut revived = done;
    revived.status = ProcedureStatus::Runnable;
    for expect_version in [None, Some(1)] {
        let revive = ConfigPlan::UpdateProcedure(plan::UpdateProcedure {
            record: revived.clone(),
            spawn: vec![transitions_new("late-child")],
            expect_version,
        });
        assert_eq!(
            state.apply(&revive),
            Err(Rejection::ProcedureFinished(ProcedureId(1)))
        );
    }
    assert_eq!(state, before, "nothing changed");
}

fn register_plan(known_id: Option<u32>) -> ConfigPlan {
    ConfigPlan::RegisterDataNode(plan::RegisterDataNode {
        known_id: known_id.map(crate::model::DataNodeId),
        address: "127.0.0.1:9999".into(),
    })
}

#[test]
fn a_staged_plan_commits_in_the_same_entry_as_the_steps_transition() {
    run(|rig| async move {
        let (c, executor) = rig.node(config(2)).await;
        let procedure = StagingProcedure::new(StagingMode::StageAndFinish, &register_plan(None));
        let id = executor
            .submit(Box::new(procedure), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Succeeded, "{info:?}");
        assert_eq!(
            c.state().read(|s| s.data_nodes.len()),
            1,
            "the effect applied"
        );
        let plans = rig.committed_plans();
        let together: Vec<_> = plans
            .iter()
            .filter_map(|p| match p {
                ConfigPlan::TransitionWithEffect(t) => Some(t),
                _ => None,
            })
            .collect();
        assert_eq!(together.len(), 1, "{plans:?}");
        assert_eq!(*together[0].effect, register_plan(None));
        assert_eq!(together[0].update.record.status, ProcedureStatus::Succeeded);
        assert!(
            !plans
                .iter()
                .any(|p| matches!(p, ConfigPlan::RegisterDataNode(_))),
            "the effect is not committed on its own: {plans:?}"
        );
    });
}

#[test]
fn a_refused_staged_plan_fails_the_step_and_applies_nothing() {
    run(|rig| async move {
        let (c, executor) = rig.node(config(2)).await;
        // Re-registering a DataNode that was never registered is refused.
        let procedure = StagingProcedure::new(StagingMode::StageRefused, &register_plan(Some(42)));
        let id = executor
            .submit(Box::new(procedure), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Failed, "{info:?}");
        let error = info.last_error.unwrap_or_default();
        assert!(error.contains("dn-42") || error.contains("42"), "{error}");
        assert!(c.state().read(|s| s.data_nodes.is_empty()));
    });
}

#[test]
fn a_step_that_stages_and_then_awaits_fails_instead_of_losing_the_plan() {
    run(|rig| async move {
        let (c, executor) = rig.node(config(2)).await;
        let procedure = StagingProcedure::new(StagingMode::StageAndAwait, &register_plan(None));
        let id = executor
            .submit(Box::new(procedure), None)
            .await
            .expect("submitted");
        let info = executor.wait_finished(id).await.expect("finished");
        assert_eq!(info.status, ProcedureView::Failed, "{info:?}");
        assert!(
            info.last_error.unwrap_or_default().contains("awaited"),
            "the failure says why"
        );
        assert!(c.state().read(|s| s.data_nodes.is_empty()));
    });
}
