//! The simulator's own tests: determinism, the regression seeds, a budget of new seeds, the
//! incremental checks against the exhaustive ones, and the proof that it finds what it must.
//!
//! CI runs this file twice: `cargo test --workspace` (with `SHOAL_SIM_SEED_BASE` taken from
//! the commit, so every commit explores new seeds), and the `mutation` tests again with
//! `--features sim-mutations`. Both stay well under 3 minutes in debug on 2 cores.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_sim::observe::Invariant;
use shoal_sim::run::{Outcome, RunOptions, run};
use shoal_sim::scenario::{Config, Scenario};

fn outcome(seed: u64, options: &RunOptions) -> Outcome {
    run(&Scenario::generate(seed, &Config::default()), options)
}

fn plain(seed: u64) -> Outcome {
    outcome(seed, &RunOptions::default())
}

/// How to replay a failing seed (with the mutation it ran under, if any).
fn replay(seed: u64, mutation: Option<&str>) -> String {
    match mutation {
        None => format!("cargo run --release -p shoal-sim -- --seed {seed} --trace (or --shrink)"),
        Some(name) => format!(
            "cargo run --release -p shoal-sim --features sim-mutations -- --seed {seed} --mutate {name} --trace"
        ),
    }
}

/// One line per violation of a failing run, and how to replay it.
fn report(outcome: &Outcome, mutation: Option<&str>) -> String {
    let mut lines: Vec<String> = outcome
        .violations
        .iter()
        .map(|v| format!("seed {}: {v}", outcome.seed))
        .collect();
    lines.push(format!("replay: {}", replay(outcome.seed, mutation)));
    lines.join("\n")
}

/// Runs `seeds` on every core (each run is a pure function of its seed, whatever thread runs
/// it) and returns the failing outcomes, by seed.
fn run_parallel(
    seeds: std::ops::Range<u64>,
    options: &RunOptions,
    stop_at_first: bool,
) -> Vec<Outcome> {
    let next = AtomicU64::new(seeds.start);
    let failing = Mutex::new(BTreeMap::new());
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        return;
                    }
                    let outcome = outcome(seed, options);
                    if outcome.failed() {
                        failing
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(seed, outcome);
                        if stop_at_first {
                            next.store(seeds.end, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    failing
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_values()
        .collect()
}

#[test]
fn a_seed_replays_to_the_same_trace_hash() {
    let traced = RunOptions {
        trace: true,
        ..Default::default()
    };
    let first = plain(3);
    let again = plain(3);
    let with_trace = outcome(3, &traced);
    assert_eq!(first.trace_hash, again.trace_hash);
    assert_eq!(
        first.trace_hash, with_trace.trace_hash,
        "keeping a readable trace changes nothing"
    );
    assert!(!with_trace.trace.is_empty());
    assert_ne!(first.trace_hash, plain(4).trace_hash);
}

fn regression_seeds() -> Vec<u64> {
    include_str!("../regressions.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().expect("a seed per line"))
        .collect()
}

#[test]
fn regression_seeds_stay_fixed() {
    let seeds = regression_seeds();
    assert!(!seeds.is_empty());
    for seed in seeds {
        let outcome = plain(seed);
        assert!(
            !outcome.failed(),
            "regression seed\n{}",
            report(&outcome, None)
        );
        assert!(
            outcome.converged_ms.is_some(),
            "regression seed {seed} converges; replay: {}",
            replay(seed, None)
        );
    }
}

/// A fault-free scenario of issue 14's operations on 5 DataNodes: a database at RF 2 with
/// data, a migration, a planted orphan, a DataNode lost for good and one removed. Everything
/// must converge cleanly: the orphan deleted by the reconciler, the lost node's groups
/// repaired, the removed node empty.
#[test]
fn migration_removal_loss_and_an_orphan_converge() {
    use shoal_sim::scenario::{Event, Op};
    let config = Config {
        events: 0,
        net_faults: false,
        disk_faults: false,
        process_faults: false,
        ..Config::default()
    };
    let mut scenario = Scenario::generate(7, &config);
    scenario.data_nodes = 5;
    scenario.delete_rates = vec![0; 5];
    scenario.legacy = false;
    scenario.tuning.orphan_grace_ms = 1_000;
    let ops = [
        (
            1_000,
            Op::CreateDatabase {
                db: 0,
                schema_groups: 1,
                data_groups: 2,
                rf: 2,
                keyed: true,
            },
        ),
        (
            5_000,
            Op::Load {
                db: 0,
                bytes: 40_000,
            },
        ),
        (
            6_000,
            Op::MigrateRegion {
                group: 1,
                replica: 0,
                to: None,
            },
        ),
        (
            7_000,
            Op::PlantOrphan {
                dn: 3,
                bytes: 4_096,
            },
        ),
        (20_000, Op::KillDataNode { dn: 0 }),
        (40_000, Op::RemoveDataNode { dn: 1 }),
    ];
    scenario.events = ops
        .into_iter()
        .map(|(at_ms, op)| Event { at_ms, op })
        .collect();
    let outcome = run(
        &scenario,
        &RunOptions {
            trace: true,
            ..Default::default()
        },
    );
    assert!(!outcome.failed(), "{}", report(&outcome, None));
    assert!(
        outcome.converged_ms.is_some(),
        "{}",
        outcome.trace.join("\n")
    );
    let traced = |needle: &str| outcome.trace.iter().any(|l| l.contains(needle));
    assert!(traced("client: migrate "), "no migration submitted");
    assert!(traced("planted orphan "), "no orphan planted");
    assert!(
        traced("RemoveOrphanRegion -> Succeeded"),
        "the orphan was not removed"
    );
    assert!(
        traced("remove DataNode dn-0 --force -> procedure"),
        "no forced removal"
    );
    assert!(
        traced("UnregisterDataNode { id: DataNodeId(0) }"),
        "dn-0 stays registered"
    );
    assert!(
        traced("UnregisterDataNode { id: DataNodeId(1) }"),
        "dn-1 stays registered"
    );
}

/// Issue 14's operations are part of the generated workload, and stay rare.
#[test]
fn the_workload_migrates_removes_loses_and_plants() {
    use shoal_sim::scenario::Op;
    let mut counts = [0usize; 4];
    let mut events = 0;
    for seed in 0..200 {
        for event in Scenario::generate(seed, &Config::default()).events {
            events += 1;
            match event.op {
                Op::MigrateRegion { .. } => counts[0] += 1,
                Op::RemoveDataNode { .. } => counts[1] += 1,
                Op::KillDataNode { .. } => counts[2] += 1,
                Op::PlantOrphan { .. } => counts[3] += 1,
                _ => {}
            }
        }
    }
    assert!(counts.iter().all(|c| *c > 0), "{counts:?}");
    assert!(
        counts.iter().sum::<usize>() * 10 < events,
        "{counts:?} of {events}"
    );
}

/// New seeds per run beyond the regressions (`SHOAL_SIM_SEEDS` overrides it): about 48 s of
/// CPU in debug, so about 25 s on 2 idle cores.
const BUDGET: u64 = 400;

/// Runs `BUDGET` seeds from `SHOAL_SIM_SEED_BASE` (default 1,000; CI derives it from the
/// commit, so each commit explores seeds no earlier one ran).
#[test]
fn a_budget_of_new_seeds_runs_clean() {
    let number = |name: &str| std::env::var(name).ok().and_then(|v| v.trim().parse().ok());
    let base: u64 = number("SHOAL_SIM_SEED_BASE").unwrap_or(1_000);
    let budget: u64 = number("SHOAL_SIM_SEEDS").unwrap_or(BUDGET);
    eprintln!("simulating seeds {base}..{}", base + budget);
    let failing = run_parallel(base..base + budget, &RunOptions::default(), false);
    let reports: Vec<String> = failing.iter().map(|o| report(o, None)).collect();
    assert!(
        failing.is_empty(),
        "{} of seeds {base}..{} broke an invariant:\n{}",
        failing.len(),
        base + budget,
        reports.join("\n")
    );
}

/// Per invariant, when it first broke.
fn first_breaks(outcome: &Outcome) -> BTreeMap<Invariant, u64> {
    let mut first = BTreeMap::new();
    for v in &outcome.violations {
        first.entry(v.invariant).or_insert(v.at_ms);
    }
    first
}

/// The incremental safety checks find every invariant the exhaustive ones find, at the same
/// instant, and nothing else; the run itself is the same (the checks only read).
fn checks_agree(seed: u64, mutation: Option<shoal_core::mutations::Mutation>) {
    let incremental = outcome(
        seed,
        &RunOptions {
            mutation,
            ..Default::default()
        },
    );
    let full = outcome(
        seed,
        &RunOptions {
            mutation,
            full_checks: true,
            ..Default::default()
        },
    );
    assert_eq!(incremental.trace_hash, full.trace_hash, "seed {seed}");
    assert_eq!(
        first_breaks(&incremental),
        first_breaks(&full),
        "seed {seed} under {mutation:?}: incremental {:?}, full {:?}",
        incremental.violations,
        full.violations
    );
}

#[test]
fn incremental_checks_agree_with_full_checks() {
    for seed in 0..4 {
        checks_agree(seed, None);
    }
}

/// Each mutation, the seeds it searches at most, and the invariants it must break.
#[cfg(feature = "sim-mutations")]
fn mutations() -> Vec<(
    &'static str,
    shoal_core::mutations::Mutation,
    u64,
    Vec<Invariant>,
)> {
    use shoal_core::mutations::Mutation;
    vec![
        // The removal ignores the footprint; the state machine refuses to drop a group
        // whose footprint remains, so the removal never ends (a livelock).
        ("orphan", Mutation::Orphan, 50, vec![Invariant::Liveness]),
        // The DataNode forgets the acked result; the resubmitted id is refused (acked ids
        // are remembered), so the removal fails and the database stays.
        (
            "ack-early",
            Mutation::AckEarly,
            300,
            vec![Invariant::Once, Invariant::Liveness],
        ),
        (
            "publish-teardown",
            Mutation::PublishTeardown,
            2_000,
            vec![Invariant::NoTeardownOfPublished],
        ),
        (
            "fail-as-success",
            Mutation::FailAsSuccess,
            50,
            vec![Invariant::HonestOutcomes],
        ),
    ]
}

#[cfg(feature = "sim-mutations")]
#[test]
fn every_mutation_is_found() {
    for (name, mutation, budget, expected) in mutations() {
        let options = RunOptions {
            mutation: Some(mutation),
            ..Default::default()
        };
        // Seeds in order, so the first one found is the same however many cores run.
        let found = (0..budget).find_map(|seed| {
            let outcome = outcome(seed, &options);
            outcome.failed().then_some(outcome)
        });
        let Some(found) = found else {
            panic!("mutation {name} was not found in {budget} seeds");
        };
        eprintln!(
            "mutation {name}: found at seed {} ({} seeds run): {:?}",
            found.seed,
            found.seed + 1,
            found.broken()
        );
        assert!(
            found.broken().iter().any(|i| expected.contains(i)),
            "mutation {name} broke {:?}, expected one of {expected:?}\n{}",
            found.broken(),
            report(&found, Some(name))
        );
    }
}

#[cfg(feature = "sim-mutations")]
#[test]
fn incremental_checks_agree_with_full_checks_under_mutations() {
    for (_, mutation, _, _) in mutations() {
        for seed in 0..3 {
            checks_agree(seed, Some(mutation));
        }
    }
}
