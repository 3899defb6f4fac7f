//! The ConfigNode: metadata service, region cleaner and heartbeat monitor, all running on the
//! leader over the consensus seam.

pub mod cleaner;
pub mod clients;
pub mod fence;
pub mod heartbeat;
pub mod inflight;
pub mod orphans;
mod service;
#[cfg(test)]
mod tests;

pub use service::{
    ConfigNode, ConfigNodeConfig, ConfigNodeError, DatabaseSummary, MAX_REGION_GROUPS,
};

use std::future::Future;
use std::time::Duration;

use crate::consensus::LeadershipWatch;
use crate::model::Epoch;
use crate::runtime::Runtime;

/// Runs `round` every `interval` until this node no longer leads at `epoch` (a round in
/// progress is dropped when leadership is lost).
async fn every_while_leading<F, Fut>(
    watch: &LeadershipWatch,
    epoch: Epoch,
    runtime: &Runtime,
    interval: Duration,
    mut round: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        let tick = async {
            round().await;
            runtime.clock.sleep(interval).await;
            true
        };
        let lost = async {
            watch.wait_lost(epoch).await;
            false
        };
        if !futures_lite::future::or(tick, lost).await {
            return;
        }
    }
}
