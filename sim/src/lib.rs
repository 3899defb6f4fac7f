//! Deterministic simulation of whole Shoal clusters (issue 11).
//!
//! A run is a pure function of (seed, config): ConfigNodes, DataNodes, the in-process
//! transport and in-memory stores run on one thread, in virtual time, and every choice —
//! which task runs next, each message's fate, each disk operation's failure, when nodes crash
//! and what the workload asks — comes from the seed. The checker watches the durable state
//! and every DataNode and reports the invariants of issue 11 that break.
//!
//! - [`executor`]: the seeded scheduler, the virtual clock and the RNG.
//! - [`disk`], [`net`]: simulated disks and the network's message policy.
//! - [`world`]: the cluster, crashes and restarts, the admin client.
//! - [`scenario`]: the workload and fault schedule drawn from a seed.
//! - [`observe`], [`invariants`]: what is known and what must hold.
//! - [`run`]: one run; [`shrink`]: cut a failing scenario down.
//! - [`raft_mode`]: runs with a replicated ConfigNode group (openraft) instead of one log.

pub mod disk;
pub mod executor;
pub mod invariants;
pub mod net;
pub mod observe;
pub mod raft_mode;
pub mod run;
pub mod scenario;
pub mod shrink;
pub mod world;
