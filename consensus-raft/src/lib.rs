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
//! - [`group`]: the group's status and membership changes as admins call them.
//! - [`seed`]: a new group seeded with a single-node ConfigNode's state (the upgrade).

pub mod config;
pub mod consensus;
pub mod error;
pub mod failure;
pub mod group;
pub mod inproc;
pub mod log_store;
pub mod meta;
pub mod network;
mod node;
mod publisher;
pub mod rt;
pub mod seed;
pub mod state_machine;
pub mod types;

pub use config::{RaftConfig, RaftStores};
pub use consensus::RaftConsensus;
pub use error::{LeaderHint, RaftConsensusError};
pub use group::{ConfigNodeGroupApi, GroupMember, GroupStatus, group_api_error};
pub use inproc::InprocRaftNetwork;
pub use network::{RaftServer, RaftTransport, TransportError};
pub use rt::SmolRuntime;
pub use seed::seed_group;
pub use types::{NodeId, ShoalRaft};
