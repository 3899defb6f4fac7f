//! The `shoal` binary: parses the command line and hands off to `shoal_nodes::run`.

use clap::Parser;

// A release `shoal` never carries the simulator's re-introduced bugs (feature
// `sim-mutations` of shoal-core, which feature unification could switch on in a workspace
// build with `--all-features`).
#[cfg(not(debug_assertions))]
const _: () = assert!(
    !shoal_core::mutations::ENABLED,
    "shoal-core's sim-mutations feature must never be enabled in a release build of shoal"
);

fn main() {
    let cli = shoal_nodes::cli::Cli::parse();
    if let Err(e) = shoal_nodes::run::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
