//! Shoal's cross-crate integration tests (under `tests/tests/`) and their fixtures.
//! [`raft_cluster`] and [`raft_harness`] run clusters with a replicated ConfigNode group.
//!
//! [`fixtures`] builds the committed snapshot fixtures; `cargo run -p shoal-tests --bin
//! gen-fixtures` rewrites them (on demand only — a released fixture must never change).

pub mod cluster;
pub mod fixtures;
pub mod harness_world;
pub mod raft_cluster;
pub mod raft_harness;
pub mod upgrade_fixture;
