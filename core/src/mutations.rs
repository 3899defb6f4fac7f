//! Known bugs that the simulator (`shoal-sim --mutate NAME`) must find again, switched on
//! per thread. Only with the `sim-mutations` feature, which no release build enables; without
//! it [`active`] is a constant `false` and every mutated branch compiles away.

/// Whether this build of shoal-core carries the mutations (feature `sim-mutations`). The
/// `shoal` binary refuses to build in release when it does (a workspace build with
/// `--all-features` would otherwise switch the feature on for it too).
pub const ENABLED: bool = cfg!(feature = "sim-mutations");

/// A bug that can be re-introduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mutation {
    /// Removals delete on the published replicas and the queued creates only, ignoring
    /// replicas only the footprint knows of (a create whose reply was lost) — the hole that
    /// DeleteDatabase dropping queued creates first used to open.
    Orphan,
    /// A removal acks a DataNode task before the deletion is durably recorded
    /// (`ReplicaDeleted`), so a crash in between resubmits an id the DataNode forgot.
    AckEarly,
    /// A re-run Publish takes a published group that the cleaner has completed since (its
    /// replicas differ from the ones this creation made) as refused, and tears it down.
    PublishTeardown,
    /// A DataNode reports a deletion whose store operation failed as Success.
    FailAsSuccess,
}

impl Mutation {
    /// Every mutation, by its CLI name.
    pub const ALL: [(&'static str, Mutation); 4] = [
        ("orphan", Mutation::Orphan),
        ("ack-early", Mutation::AckEarly),
        ("publish-teardown", Mutation::PublishTeardown),
        ("fail-as-success", Mutation::FailAsSuccess),
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map_or("?", |(name, _)| name)
    }
}

#[cfg(feature = "sim-mutations")]
mod switch {
    use std::cell::Cell;

    use super::Mutation;

    thread_local! {
        static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
    }

    /// Switches `mutation` on (or every mutation off) for this thread. The simulator runs a
    /// whole cluster on one thread, so parallel test threads do not see each other's switch.
    pub fn set(mutation: Option<Mutation>) {
        ACTIVE.with(|a| a.set(mutation));
    }

    /// Whether `mutation` is on for this thread.
    pub fn active(mutation: Mutation) -> bool {
        ACTIVE.with(|a| a.get() == Some(mutation))
    }
}

#[cfg(not(feature = "sim-mutations"))]
mod switch {
    use super::Mutation;

    /// Without `sim-mutations` nothing can be switched on.
    pub fn set(_mutation: Option<Mutation>) {}

    /// Always false without `sim-mutations`.
    #[inline(always)]
    pub const fn active(_mutation: Mutation) -> bool {
        false
    }
}

pub use switch::{active, set};
