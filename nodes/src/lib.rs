//! The pieces of the `shoal` binary that are worth testing on their own.

pub mod storage;
