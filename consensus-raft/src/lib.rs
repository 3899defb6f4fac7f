//! shoal-consensus-raft: a replicated ConfigNode group on openraft, behind core's
//! `Consensus` trait.
//!
//! - [`rt`]: openraft's async runtime on smol (no tokio anywhere).
//! - [`types`]: the Raft type configuration and Shoal's own log-entry encoding.
//! - [`log_store`], [`meta`]: the Raft log and vote on core's `LogStore` and a small meta
//!   record (storage-fs on disk, in-memory twins in tests).
//! - [`state_machine`]: applies committed plans to core's `ClusterState`; snapshots.
//! - [`network`], [`inproc`]: the transport seam and the in-process transport for tests.
//! - [`RaftConsensus`]: the `Consensus` implementation, bootstrap and membership.

pub mod config;
pub mod consensus;
pub mod error;
pub mod failure;
pub mod inproc;
pub mod log_store;
pub mod meta;
pub mod network;
mod publisher;
pub mod rt;
pub mod state_machine;
pub mod types;

pub use config::{RaftConfig, RaftStores};
pub use consensus::RaftConsensus;
pub use error::{LeaderHint, RaftConsensusError};
pub use inproc::InprocRaftNetwork;
pub use network::{RaftServer, RaftTransport, TransportError};
pub use rt::SmolRuntime;
pub use types::{NodeId, ShoalRaft};
