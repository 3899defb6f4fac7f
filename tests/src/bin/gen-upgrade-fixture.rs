//! Writes the single-node data directory fixture if it does not exist yet (see
//! `shoal_tests::upgrade_fixture`). Run on demand only:
//! `cargo run -p shoal-tests --bin gen-upgrade-fixture`. A released fixture never changes.

use std::process::ExitCode;

use shoal_tests::upgrade_fixture::{fixture_path, generate};

fn main() -> ExitCode {
    let dir = fixture_path();
    if dir.exists() {
        println!("kept {} (released fixtures never change)", dir.display());
        return ExitCode::SUCCESS;
    }
    match smol::block_on(generate(&dir)) {
        Ok(()) => {
            println!("wrote {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-upgrade-fixture: {e}");
            ExitCode::FAILURE
        }
    }
}
