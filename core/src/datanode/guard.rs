//! The per-region guard: at most one maintain operation per region at a time, in FIFO order.
//!
//! A caller takes a [`RegionTicket`] synchronously (so its place in the queue is fixed at the
//! moment it is taken, e.g. before a submit answers Accepted) and later awaits its turn. The
//! ticket holds the region until dropped; dropping a ticket that never got its turn simply
//! leaves the queue.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::Event;

use crate::model::RegionId;

#[derive(Default)]
struct RegionQueue {
    next: u64,
    /// Tickets not yet dropped; the smallest holds the region.
    outstanding: BTreeSet<u64>,
    changed: Arc<Event>,
}

/// The guards of every region with queued or running work.
#[derive(Clone, Default)]
pub(crate) struct RegionGuards {
    queues: Arc<Mutex<BTreeMap<RegionId, RegionQueue>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RegionGuards {
    /// Joins `region`'s queue now; the ticket's turn comes after every earlier ticket.
    pub(crate) fn ticket(&self, region: RegionId) -> RegionTicket {
        let mut queues = lock(&self.queues);
        let queue = queues.entry(region).or_default();
        let ticket = queue.next;
        queue.next += 1;
        queue.outstanding.insert(ticket);
        RegionTicket {
            guards: self.clone(),
            region,
            ticket,
        }
    }

    /// Joins the queue and waits for the turn.
    pub(crate) async fn lock(&self, region: RegionId) -> RegionTicket {
        let ticket = self.ticket(region);
        ticket.turn().await;
        ticket
    }

    /// Regions with queued or running work (tests and diagnostics).
    #[cfg(test)]
    pub(crate) fn busy_regions(&self) -> Vec<RegionId> {
        lock(&self.queues).keys().copied().collect()
    }

    /// `Some(event)` to wait on while `ticket` is not at the head, `None` once it is.
    fn wait_event(&self, region: RegionId, ticket: u64) -> Option<Arc<Event>> {
        let queues = lock(&self.queues);
        let queue = queues.get(&region)?;
        if queue.outstanding.first() == Some(&ticket) {
            None
        } else {
            Some(queue.changed.clone())
        }
    }
}

/// A place in one region's queue; holds the region from its turn until dropped.
pub(crate) struct RegionTicket {
    guards: RegionGuards,
    region: RegionId,
    ticket: u64,
}

impl RegionTicket {
    /// Resolves once every earlier ticket for the region has been dropped.
    pub(crate) async fn turn(&self) {
        loop {
            let Some(event) = self.guards.wait_event(self.region, self.ticket) else {
                return;
            };
            let listener = event.listen();
            // Re-check after registering: a drop in between must not be missed.
            if self.guards.wait_event(self.region, self.ticket).is_none() {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for RegionTicket {
    fn drop(&mut self) {
        let mut queues = lock(&self.guards.queues);
        if let Some(queue) = queues.get_mut(&self.region) {
            queue.outstanding.remove(&self.ticket);
            queue.changed.notify(usize::MAX);
            if queue.outstanding.is_empty() {
                queues.remove(&self.region);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::model::RegionKind;

    fn ready(ticket: &RegionTicket) -> bool {
        let mut turn = std::pin::pin!(ticket.turn());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        turn.as_mut().poll(&mut cx).is_ready()
    }

    #[test]
    fn tickets_get_their_turn_in_order_and_a_dropped_waiter_leaves_the_queue() {
        let guards = RegionGuards::default();
        let region = RegionId::new(RegionKind::Data, 1);
        let other = RegionId::new(RegionKind::Data, 2);
        let first = guards.ticket(region);
        let second = guards.ticket(region);
        let third = guards.ticket(region);
        let elsewhere = guards.ticket(other);
        assert!(ready(&first));
        assert!(!ready(&second));
        assert!(ready(&elsewhere));
        drop(second);
        assert!(!ready(&third));
        drop(first);
        assert!(ready(&third));
        drop(third);
        drop(elsewhere);
        assert!(guards.busy_regions().is_empty());
    }
}
