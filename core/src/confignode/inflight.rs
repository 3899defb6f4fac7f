//! Region creates the leader's region cleaner has in flight, so a removal can wait them out.
//!
//! Ordering that makes this safe: the cleaner registers a region here *before* it re-checks
//! that the create task is still queued; a removal first commits the drop of the region's
//! queued creates and *then* waits here. Whichever way the two interleave, no create lands on
//! a DataNode after the removal has started deleting that region's replicas. Across a leader
//! change the epoch fences the old leader's creates instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::model::RegionId;

/// The set of regions with a create in flight (volatile; rebuilt empty on a new leader).
#[derive(Debug, Default)]
pub struct InflightCreates {
    regions: Mutex<BTreeMap<RegionId, usize>>,
    changed: Event,
}

/// Held while one create of a region is in flight.
#[derive(Debug)]
pub struct InflightGuard {
    owner: Arc<InflightCreates>,
    region: RegionId,
}

impl InflightCreates {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<RegionId, usize>> {
        self.regions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks one create of `region` in flight until the guard drops.
    pub fn enter(self: &Arc<Self>, region: RegionId) -> InflightGuard {
        *self.lock().entry(region).or_default() += 1;
        InflightGuard {
            owner: self.clone(),
            region,
        }
    }

    /// Whether a create of `region` is in flight.
    pub fn is_busy(&self, region: RegionId) -> bool {
        self.lock().contains_key(&region)
    }

    /// Resolves once no create of `region` is in flight.
    pub async fn wait_idle(&self, region: RegionId) {
        loop {
            if !self.is_busy(region) {
                return;
            }
            let listener = self.changed.listen();
            if !self.is_busy(region) {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        {
            let mut regions = self.owner.lock();
            if let Some(count) = regions.get_mut(&self.region) {
                *count -= 1;
                if *count == 0 {
                    regions.remove(&self.region);
                }
            }
        }
        self.owner.changed.notify(usize::MAX);
    }
}
