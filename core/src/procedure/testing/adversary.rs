//! [`FlakyConsensus`]: commits whose outcome the proposer does not learn.
//!
//! Under a replicated log a proposal can time out and still commit later, or be committed
//! and applied while its reply is lost. Code above the consensus seam must treat every
//! failed commit as "maybe applied". This wrapper makes that happen on a schedule, in both
//! shapes: applied but reported failed, and not applied and reported timed out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use crate::consensus::{Consensus, ConsensusError, LeadershipWatch, StateCell};
use crate::model::Epoch;
use crate::plan::ConfigPlan;
use crate::state::ApplyResult;

/// Which proposals get an unknown outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnknownOutcomes {
    /// Every `every`-th proposal of a run (counted across all its nodes) is affected;
    /// 0 affects none. Affected proposals alternate: the first is applied and reported
    /// failed, the next is reported timed out without being applied, and so on.
    pub every: u64,
}

/// A [`Consensus`] wrapper that reports failures for commits per [`UnknownOutcomes`], and
/// counts every proposal (the harness measures progress with it).
pub struct FlakyConsensus {
    inner: Arc<dyn Consensus>,
    faults: UnknownOutcomes,
    proposals: Arc<AtomicU64>,
}

impl std::fmt::Debug for FlakyConsensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyConsensus")
            .field("faults", &self.faults)
            .field("proposals", &self.proposals.load(Ordering::SeqCst))
            .finish()
    }
}

impl FlakyConsensus {
    /// Wraps `inner`; `proposals` is shared by every wrapper of one run, so the schedule
    /// counts proposals across leaders.
    pub fn new(
        inner: Arc<dyn Consensus>,
        faults: UnknownOutcomes,
        proposals: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner,
            faults,
            proposals,
        }
    }
}

#[async_trait]
impl Consensus for FlakyConsensus {
    async fn propose(&self, epoch: Epoch, plan: ConfigPlan) -> Result<ApplyResult, ConsensusError> {
        let n = self.proposals.fetch_add(1, Ordering::SeqCst) + 1;
        let every = self.faults.every;
        if every == 0 || n % every != 0 {
            return self.inner.propose(epoch, plan).await;
        }
        if (n / every) % 2 == 1 {
            // Applied; the proposer never hears so.
            let _applied = self.inner.propose(epoch, plan).await?;
            Err(ConsensusError::OutcomeUnknown(format!(
                "proposal {n} was applied but its reply was lost"
            )))
        } else {
            Err(ConsensusError::OutcomeUnknown(format!(
                "proposal {n} timed out before it was appended"
            )))
        }
    }

    fn state(&self) -> Arc<StateCell> {
        self.inner.state()
    }

    fn leadership(&self) -> LeadershipWatch {
        self.inner.leadership()
    }

    async fn claim_epoch_above(&self, seen: Epoch) -> Result<Epoch, ConsensusError> {
        self.inner.claim_epoch_above(seen).await
    }

    async fn failed(&self) -> ConsensusError {
        self.inner.failed().await
    }
}
