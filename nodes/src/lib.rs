//! The pieces of the `shoal` binary: node processes, the local cluster, the admin CLI.

pub mod admin;
pub mod cli;
pub mod clients;
pub mod defaults;
pub mod error;
pub mod follow;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod process;
pub mod raft;
pub mod replay;
pub mod run;
pub mod security;
pub mod service;
pub mod size;
pub mod status_page;
pub mod storage;
pub mod up;
