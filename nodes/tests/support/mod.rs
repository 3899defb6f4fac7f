//! Helpers shared by the process-level tests.

pub mod task_log;
