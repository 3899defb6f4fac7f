//! The ConfigNode: metadata service, region cleaner and heartbeat monitor, all running on the
//! leader over the consensus seam.

pub mod cleaner;
pub mod clients;
pub mod heartbeat;
pub mod inflight;
mod service;

pub use service::{
    ConfigNode, ConfigNodeConfig, ConfigNodeError, DatabaseSummary, MAX_REGION_GROUPS,
};
