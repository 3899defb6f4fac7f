//! `shoal-sim`: run seeds, replay one with its trace, shrink a failing one.
//!
//! ```text
//! cargo run --release -p shoal-sim -- --seeds 0..10000
//! cargo run --release -p shoal-sim -- --seed 42 --trace
//! cargo run --release -p shoal-sim -- --seed 42 --shrink
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use shoal_core::mutations::Mutation;
use shoal_sim::observe::Invariant;
use shoal_sim::run::{Outcome, RunOptions, run};
use shoal_sim::scenario::{Config, Scenario};
use shoal_sim::shrink::{Cut, shrink};

#[derive(Debug, Parser)]
#[command(
    name = "shoal-sim",
    about = "Deterministic simulation of whole Shoal clusters"
)]
struct Args {
    /// Seeds to run, as `A..B` (B excluded).
    #[arg(long, default_value = "0..100")]
    seeds: String,
    /// Run only this seed (overrides --seeds).
    #[arg(long)]
    seed: Option<u64>,
    /// Print the seed's event trace.
    #[arg(long)]
    trace: bool,
    /// Cut the seed's workload and fault schedule down to a minimal failing one.
    #[arg(long)]
    shrink: bool,
    /// Replay a shrunk cut (as printed by --shrink) of --seed.
    #[arg(long)]
    cut: Option<String>,
    /// Events per scenario.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Re-introduce a known bug (needs feature `sim-mutations`): orphan, ack-early,
    /// publish-teardown, fail-as-success.
    #[arg(long)]
    mutate: Option<String>,
    /// Stop at the first failing seed.
    #[arg(long)]
    fail_fast: bool,
    /// Print core's log lines (to stderr) while replaying one seed.
    #[arg(long)]
    logs: bool,
    /// Print every seed's trace hash (to compare two builds seed by seed).
    #[arg(long)]
    hashes: bool,
    /// Re-check every safety invariant against everything after each change (slow; the
    /// reference for the incremental checks).
    #[arg(long)]
    full_checks: bool,
}

// The simulator allocates and frees small objects at a high rate (every message, every
// record, every task); glibc's allocator took a fifth of its instructions. Nothing depends on
// addresses, so runs stay the same (`--hashes` shows it).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn parse_seeds(spec: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = spec
        .split_once("..")
        .ok_or_else(|| format!("--seeds takes A..B, got {spec:?}"))?;
    let a: u64 = a
        .trim()
        .parse()
        .map_err(|e| format!("--seeds start: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("--seeds end: {e}"))?;
    Ok(a..b)
}

fn parse_mutation(name: Option<&str>) -> Result<Option<Mutation>, String> {
    let Some(name) = name else { return Ok(None) };
    let mutation = Mutation::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, m)| *m)
        .ok_or_else(|| format!("unknown mutation {name:?}"))?;
    if !cfg!(feature = "sim-mutations") {
        return Err("--mutate needs `--features sim-mutations`".into());
    }
    Ok(Some(mutation))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn real_main(args: &Args) -> Result<ExitCode, String> {
    let mutation = parse_mutation(args.mutate.as_deref())?;
    let config = Config {
        events: args.events,
        ..Config::default()
    };
    let options = RunOptions {
        trace: args.trace,
        mutation,
        full_checks: args.full_checks,
    };
    if let Some(seed) = args.seed {
        if args.logs {
            let _ = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_target(false)
                .without_time()
                .try_init();
        }
        let mut scenario = Scenario::generate(seed, &config);
        if let Some(cut) = &args.cut {
            scenario = Cut::parse(cut)?.apply(&scenario);
        }
        if args.shrink {
            return Ok(shrink_seed(&scenario, &options));
        }
        let outcome = run(&scenario, &options);
        if args.trace {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        print_one(&outcome);
        return Ok(if outcome.failed() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let seeds = parse_seeds(&args.seeds)?;
    Ok(run_many(seeds, &config, &options, args))
}

fn print_one(outcome: &Outcome) {
    println!(
        "seed {}: {} events, {} log entries, {} polls, {} ms virtual, {}",
        outcome.seed,
        outcome.events,
        outcome.entries,
        outcome.polls,
        outcome.end_ms,
        match outcome.converged_ms {
            Some(ms) => format!("converged at {ms} ms"),
            None => "did not converge".into(),
        }
    );
    for violation in &outcome.violations {
        println!("  VIOLATION {violation}");
    }
    println!("trace hash {:016x}", outcome.trace_hash);
}

fn shrink_seed(scenario: &Scenario, options: &RunOptions) -> ExitCode {
    let first = run(scenario, options);
    if !first.failed() {
        println!("seed {} passes; nothing to shrink", scenario.seed);
        return ExitCode::SUCCESS;
    }
    let target: BTreeSet<Invariant> = first.broken();
    println!(
        "seed {} breaks {:?}; shrinking {} events...",
        scenario.seed,
        target.iter().map(|i| i.name()).collect::<Vec<_>>(),
        scenario.events.len()
    );
    let (cut, outcome) = shrink(scenario, options, &target);
    let small = cut.apply(scenario);
    println!(
        "minimal: {} of {} events; replay with --seed {} --cut {} --trace",
        small.events.len(),
        scenario.events.len(),
        scenario.seed,
        cut
    );
    for event in &small.events {
        println!("  {:>6} ms  {:?}", event.at_ms, event.op);
    }
    print_one(&outcome);
    ExitCode::FAILURE
}

fn run_many(
    seeds: std::ops::Range<u64>,
    config: &Config,
    options: &RunOptions,
    args: &Args,
) -> ExitCode {
    let total = seeds.end.saturating_sub(seeds.start);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {per_sec}  {msg}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut failing: Vec<Outcome> = Vec::new();
    let mut events = 0u64;
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut interrupted: BTreeMap<String, u64> = BTreeMap::new();
    let mut unconverged = 0u64;
    let mut ran = 0u64;
    // Seeds that converged, and the seconds they took (a stuck seed runs to its bound).
    let mut converged = (0u64, 0f64);
    for seed in seeds {
        let scenario = Scenario::generate(seed, config);
        let one = Instant::now();
        let outcome = run(&scenario, options);
        if outcome.converged_ms.is_some() {
            converged.0 += 1;
            converged.1 += one.elapsed().as_secs_f64();
        }
        ran += 1;
        if args.hashes {
            bar.suspend(|| println!("{seed} {:016x}", outcome.trace_hash));
        }
        events += outcome.events as u64;
        for (k, v) in &outcome.faults {
            *faults.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &outcome.interrupted {
            *interrupted.entry(k.clone()).or_default() += v;
        }
        if outcome.converged_ms.is_none() {
            unconverged += 1;
        }
        bar.inc(1);
        if outcome.failed() {
            bar.println(format!(
                "seed {seed}: {}",
                outcome
                    .violations
                    .first()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ));
            failing.push(outcome);
            bar.set_message(format!("{} failing", failing.len()));
            if args.fail_fast {
                break;
            }
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{ran} seeds in {secs:.1} s: {:.0} seeds/s, {events} events, {} failing, {unconverged} not converged",
        ran as f64 / secs,
        failing.len()
    );
    if converged.0 > 0 {
        println!(
            "  {} converged seeds: {:.0} seeds/s",
            converged.0,
            converged.0 as f64 / converged.1.max(1e-9)
        );
    }
    println!("faults injected:");
    for (kind, count) in &faults {
        println!("  {count:>10}  {kind}");
    }
    println!("procedure states interrupted by a crash or leader change (coverage):");
    for (state, count) in &interrupted {
        println!("  {count:>10}  {state}");
    }
    let mut by_invariant: BTreeMap<&'static str, Vec<u64>> = BTreeMap::new();
    for outcome in &failing {
        for invariant in outcome.broken() {
            by_invariant
                .entry(invariant.name())
                .or_default()
                .push(outcome.seed);
        }
    }
    if failing.is_empty() {
        println!("no violation");
        return ExitCode::SUCCESS;
    }
    println!("violations:");
    for outcome in &failing {
        for violation in &outcome.violations {
            println!("  seed {}: {violation}", outcome.seed);
        }
    }
    for (name, seeds) in &by_invariant {
        println!(
            "{name}: {} seeds, first {:?}",
            seeds.len(),
            &seeds[..seeds.len().min(10)]
        );
    }
    ExitCode::FAILURE
}
