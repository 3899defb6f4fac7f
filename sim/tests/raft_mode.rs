//! Raft mode: seeded runs of clusters with a 3-member ConfigNode group (openraft on the
//! simulator's scheduler and virtual clock) under leader kills, partitions and DataNode
//! crashes; every run settles with its invariants holding, and a run is a function of its
//! seed. Bigger budgets: `cargo run --release -p shoal-sim --bin sim-raft -- --seeds 0..1000`.

use shoal_sim::raft_mode::{RaftOutcome, run_raft};

fn assert_clean(outcome: &RaftOutcome) {
    assert!(
        outcome.violations.is_empty(),
        "seed {}: {:?}\nreplay: cargo run --release -p shoal-sim --bin sim-raft -- --seed {} --trace\n{}",
        outcome.seed,
        outcome.violations,
        outcome.seed,
        outcome.trace.join("\n")
    );
}

/// The Raft-mode regression seeds (`sim/regressions-raft.txt`), then a few new ones from
/// `SHOAL_SIM_SEED_BASE` (CI takes it from the commit).
#[test]
fn raft_runs_settle_with_every_invariant_holding() {
    let regressions: Vec<u64> = include_str!("../regressions-raft.txt")
        .lines()
        .filter_map(|l| l.split('#').next())
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let base: u64 = std::env::var("SHOAL_SIM_SEED_BASE")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(1_000);
    for seed in regressions.into_iter().chain(base..base + 3) {
        let outcome = run_raft(seed);
        eprintln!(
            "seed {seed}: {} polls, {} ms, faults {:?}, hash {:016x}",
            outcome.polls, outcome.end_ms, outcome.faults, outcome.trace_hash
        );
        assert!(outcome.polls > 1_000, "seed {seed}: the world barely ran");
        assert!(
            outcome.trace.iter().any(|l| l.contains("settled")),
            "seed {seed}: never settled"
        );
        assert_clean(&outcome);
    }
}

#[test]
fn a_raft_run_is_a_function_of_its_seed() {
    let a = run_raft(11);
    let b = run_raft(11);
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.trace_hash, b.trace_hash, "same seed, same run");
    assert_eq!(a.polls, b.polls);
    let c = run_raft(12);
    assert_ne!(a.trace_hash, c.trace_hash, "another seed, another run");
}

#[test]
#[ignore = "prints one run's trace: cargo test -p shoal-sim --test raft_mode -- --ignored --nocapture"]
fn print_a_raft_trace() {
    let outcome = run_raft(0);
    eprintln!("{}", outcome.trace.join("\n"));
}
