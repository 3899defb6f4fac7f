//! In-process transport: hosts whole Shoal clusters inside one test process.
//!
//! Every call goes through an async-channel to the hosting node's serving loop and its reply
//! comes back through another, so calls are asynchronous and concurrent exactly as over a real
//! network. Each directed link (`from` → `to`) carries its own injectable faults: latency,
//! dropped requests (the call never runs), dropped replies (the call runs but the caller never
//! hears), a per-call timeout, and partitions. A hosted node can be stopped (its in-flight
//! calls are cancelled, new calls find it unreachable) and hosted again later, which is how
//! tests restart a node: the service object is rebuilt over the same durable stores.
//!
//! Time comes from the runtime seam's [`Clock`], so a test may drive it by hand.

mod network;

pub use network::{InprocClient, InprocNetwork, LinkFaults, LinkStats, MessageFate, MessagePolicy};
