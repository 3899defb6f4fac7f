//! Epoch fencing: the DataNode keeps the highest leader epoch it has seen, durably, and
//! refuses requests from lower epochs so a deposed leader cannot start work.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::Epoch;

/// What a request's epoch means relative to the highest seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpochCheck {
    /// Lower than the highest seen: refuse with StaleLeader.
    Stale {
        /// The highest epoch seen.
        seen: Epoch,
    },
    /// Equal to the highest seen: proceed.
    Current,
    /// Higher: journal it before acting on the request.
    Newer,
}

/// The highest epoch seen. Raised only after the raise is journaled.
#[derive(Debug, Default)]
pub(crate) struct EpochFence {
    highest: AtomicU64,
}

impl EpochFence {
    /// A fence starting at `epoch` (restored from the journal).
    pub(crate) fn new(epoch: Epoch) -> Self {
        Self {
            highest: AtomicU64::new(epoch.0),
        }
    }

    /// The highest epoch seen.
    pub(crate) fn highest(&self) -> Epoch {
        Epoch(self.highest.load(Ordering::SeqCst))
    }

    /// Classifies `epoch`.
    pub(crate) fn check(&self, epoch: Epoch) -> EpochCheck {
        let seen = self.highest();
        match epoch.cmp(&seen) {
            std::cmp::Ordering::Less => EpochCheck::Stale { seen },
            std::cmp::Ordering::Equal => EpochCheck::Current,
            std::cmp::Ordering::Greater => EpochCheck::Newer,
        }
    }

    /// Raises the highest epoch to `epoch` (never lowers it). Call only once the raise is
    /// durable.
    pub(crate) fn raise(&self, epoch: Epoch) {
        self.highest.fetch_max(epoch.0, Ordering::SeqCst);
    }
}
