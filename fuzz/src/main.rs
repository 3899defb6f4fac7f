//! The long fuzz run: every target (or `--target NAME`) for `--secs` each (default 60),
//! printing cases/s, the slowest input and the largest allocation one input caused.
//!
//! ```sh
//! cargo run --release -p shoal-fuzz -- --secs 600
//! cargo run --release -p shoal-fuzz -- --target capnp_request --secs 60 --seed 7
//! ```
//! Exits 1 if anything panicked, hung or allocated too much; inputs are saved under
//! `$SHOAL_FUZZ_FINDINGS` (default: the temp dir's `shoal-fuzz-findings`).

use std::time::Duration;

use shoal_fuzz::{Budget, CountingAlloc, Limits, run_target, targets};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

fn usage() -> ! {
    eprintln!(
        "usage: shoal-fuzz [--secs N] [--cases N] [--target NAME] [--seed N]\ntargets: {}",
        targets::NAMES.join(", ")
    );
    std::process::exit(2);
}

fn main() {
    let mut budget = Budget::Time(Duration::from_secs(60));
    let mut names: Vec<String> = targets::NAMES.iter().map(|s| s.to_string()).collect();
    let mut seed: u64 = 0x5eed;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--secs" => {
                budget = Budget::Time(Duration::from_secs(
                    value().parse().unwrap_or_else(|_| usage()),
                ))
            }
            "--cases" => budget = Budget::Cases(value().parse().unwrap_or_else(|_| usage())),
            "--target" => names = vec![value()],
            "--seed" => seed = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let mut failed = false;
    for name in &names {
        let Some(mut target) = targets::by_name(name) else {
            eprintln!("unknown target {name}");
            usage();
        };
        let report = run_target(&mut target, budget, seed, Limits::default(), Some(&ALLOC));
        println!("{report}");
        for finding in &report.findings {
            failed = true;
            println!("  {}: input {}", finding.what, finding.input.display());
        }
    }
    if failed {
        std::process::exit(1);
    }
}
