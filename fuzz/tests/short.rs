//! The short fuzz run CI does: every target for a fixed number of inputs (a second or two
//! each in a debug build), with a fixed seed so a failure reproduces. Zero panics, zero
//! hangs, bounded memory. The long run: `cargo run --release -p shoal-fuzz -- --secs 600`.

use shoal_fuzz::{Budget, CountingAlloc, Limits, run_target, targets};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc::new();

/// Inputs per target: the codecs are fast; files and the wire do real I/O.
fn cases(name: &str) -> u64 {
    match name {
        "capnp_request" | "capnp_frames" => 400,
        "journal_file" | "log_recovery" | "snapshot_file" => 400,
        "snapshot" | "raft_snapshot" => 1_500,
        _ => 4_000,
    }
}

#[test]
fn every_decoder_survives_a_short_fuzz_run() {
    let mut failures = Vec::new();
    for name in targets::NAMES {
        let mut target = targets::by_name(name).expect("target");
        assert!(!target.seeds.is_empty(), "{name} has no seeds");
        let report = run_target(
            &mut target,
            Budget::Cases(cases(name)),
            0x5eed,
            Limits::default(),
            Some(&ALLOC),
        );
        println!("{report}");
        for finding in &report.findings {
            failures.push(format!(
                "{name}: {} ({})",
                finding.what,
                finding.input.display()
            ));
        }
    }
    assert!(failures.is_empty(), "findings:\n{}", failures.join("\n"));
}

#[test]
fn mutations_stay_within_the_input_bound() {
    let mut rng = fastrand::Rng::with_seed(1);
    let seeds = vec![vec![1u8; 300_000], vec![2u8; 10]];
    for _ in 0..200 {
        assert!(shoal_fuzz::generate(&mut rng, &seeds).len() <= shoal_fuzz::MAX_INPUT);
    }
}
