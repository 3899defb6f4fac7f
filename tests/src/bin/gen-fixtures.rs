//! Rewrites the committed snapshot fixtures. Run on demand only:
//! `cargo run -p shoal-tests --bin gen-fixtures`. A fixture of a released format must never
//! change; add a new fixture for a new format version instead.

use std::process::ExitCode;

use shoal_core::snapshot;
use shoal_tests::fixtures;

fn main() -> ExitCode {
    let dir = fixtures::fixture_dir();
    let outputs = [
        (
            fixtures::SNAPSHOT_V1,
            snapshot::encode_v1(&fixtures::snapshot_v1()),
        ),
        (
            fixtures::SNAPSHOT_V2,
            snapshot::encode(&fixtures::snapshot_v2()),
        ),
    ];
    for (name, bytes) in outputs {
        let path = dir.join(name);
        let written = bytes.map_err(|e| e.to_string()).and_then(|b| {
            std::fs::write(&path, &b)
                .map(|()| b.len())
                .map_err(|e| e.to_string())
        });
        match written {
            Ok(len) => println!("wrote {} ({len} bytes)", path.display()),
            Err(e) => {
                eprintln!("gen-fixtures: {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
