//! Writes the committed fixtures that do not exist yet. Run on demand only:
//! `cargo run -p shoal-tests --bin gen-fixtures`. A fixture of a released format must never
//! change, so an existing file is left alone (`--force` rewrites every file, for a format
//! that was never released); add a new fixture for a new format version instead.

use std::process::ExitCode;

use shoal_core::snapshot;
use shoal_tests::fixtures;

fn main() -> ExitCode {
    let dir = fixtures::fixture_dir();
    let force = std::env::args().any(|a| a == "--force");
    let outputs = [
        (
            fixtures::SNAPSHOT_V1,
            snapshot::encode_v1(&fixtures::snapshot_v1()).map_err(|e| e.to_string()),
        ),
        (
            fixtures::SNAPSHOT_V2,
            snapshot::encode_v2(&fixtures::snapshot_v2()).map_err(|e| e.to_string()),
        ),
        (
            fixtures::SNAPSHOT_V3,
            snapshot::encode(&fixtures::snapshot_v3()).map_err(|e| e.to_string()),
        ),
        (
            fixtures::LEGACY_LOG,
            fixtures::encode_log(&fixtures::legacy_log()),
        ),
    ];
    for (name, bytes) in outputs {
        let path = dir.join(name);
        if path.exists() && !force {
            println!("kept {} (released fixtures never change)", path.display());
            continue;
        }
        let written = bytes.and_then(|b| {
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
