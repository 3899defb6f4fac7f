//! Shoal's cross-crate integration tests (under `tests/tests/`) and their fixtures.
//!
//! [`fixtures`] builds the committed snapshot fixtures; `cargo run -p shoal-tests --bin
//! gen-fixtures` rewrites them (on demand only — a released fixture must never change).

pub mod cluster;
pub mod fixtures;
pub mod harness_world;
