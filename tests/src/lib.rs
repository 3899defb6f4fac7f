//! Shoal's cross-crate integration tests (under `tests/tests/`) and their fixtures.
