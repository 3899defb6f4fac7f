//! Raft mode of the simulator from the command line (see `shoal_sim::raft_mode`):
//! `cargo run --release -p shoal-sim --bin sim-raft -- --seeds 0..200` runs seeds and prints
//! a summary and every violation; `--seed N --trace` replays one seed with its trace;
//! `--mutate NAME` (feature `sim-mutations`) re-introduces a known bug in every run.

use std::process::ExitCode;
use std::time::Instant;

use shoal_core::mutations::{self, Mutation};
use shoal_sim::raft_mode::run_raft;

fn parse_range(text: &str) -> Option<std::ops::Range<u64>> {
    let (a, b) = text.split_once("..")?;
    Some(a.parse().ok()?..b.parse().ok()?)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let trace = args.iter().any(|a| a == "--trace");
    let seeds = match (value("--seeds"), value("--seed")) {
        (Some(range), _) => match parse_range(&range) {
            Some(range) => range,
            None => {
                eprintln!("error: --seeds takes A..B, got {range:?}");
                return ExitCode::FAILURE;
            }
        },
        (None, Some(seed)) => match seed.parse::<u64>() {
            Ok(seed) => seed..seed + 1,
            Err(_) => {
                eprintln!("error: --seed takes a number, got {seed:?}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => 0..20,
    };
    let mutation = match value("--mutate") {
        None => None,
        Some(name) => match Mutation::ALL.iter().find(|(n, _)| *n == name) {
            Some(_) if !mutations::ENABLED => {
                eprintln!("error: --mutate needs `--features sim-mutations`");
                return ExitCode::FAILURE;
            }
            Some((_, m)) => Some(*m),
            None => {
                eprintln!("error: unknown mutation {name:?}");
                return ExitCode::FAILURE;
            }
        },
    };
    let start = Instant::now();
    let (mut runs, mut failed) = (0u64, 0u64);
    for seed in seeds {
        // The switch is per thread, and a run is all on this one.
        mutations::set(mutation);
        let outcome = run_raft(seed);
        mutations::set(None);
        runs += 1;
        if trace {
            println!("{}", outcome.trace.join("\n"));
        }
        println!(
            "seed {seed}: {} ms virtual, {} polls, faults {:?}, hash {:016x}{}",
            outcome.end_ms,
            outcome.polls,
            outcome.faults,
            outcome.trace_hash,
            if outcome.violations.is_empty() {
                String::new()
            } else {
                format!(", VIOLATIONS {:?}", outcome.violations)
            }
        );
        if !outcome.violations.is_empty() {
            failed += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{runs} seeds in {secs:.1} s ({:.1} seeds/s), {failed} with violations",
        runs as f64 / secs
    );
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
