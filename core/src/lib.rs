//! Shoal's core: the region-lifecycle logic of a sharded storage cluster, free of any
//! transport, storage backend or async runtime.
//!
//! Start with [`model`] (ids and values), [`plan`] and [`state`] (every metadata change and
//! its deterministic application), [`consensus`] (how changes are committed), then the
//! storage and runtime seams in [`storage`] and [`runtime`], and the wire traits in [`api`].

pub mod api;
mod cbor;
pub mod codes;
pub mod confignode;
pub mod consensus;
pub mod datanode;
pub mod metrics;
pub mod model;
pub mod mutations;
pub mod placement;
pub mod plan;
pub mod procedure;
pub mod procedures;
pub mod runtime;
pub mod snapshot;
pub mod state;
pub mod storage;
pub mod util;

#[cfg(test)]
mod test_support;
