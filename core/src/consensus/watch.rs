//! A small watch cell for leadership, runtime-agnostic (event-listener based).

use std::sync::{Arc, Mutex};

use event_listener::Event;

use crate::model::Epoch;

/// This node's leadership as last observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// Whether this node leads.
    pub is_leader: bool,
    /// The epoch it leads in (or last led in).
    pub epoch: Epoch,
}

#[derive(Debug)]
struct Inner {
    current: Mutex<(u64, Leadership)>,
    changed: Event,
}

/// Observes [`Leadership`] changes. Clones observe the same cell.
#[derive(Debug, Clone)]
pub struct LeadershipWatch {
    inner: Arc<Inner>,
}

impl Default for LeadershipWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl LeadershipWatch {
    /// A cell saying "not leader, epoch 0".
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                current: Mutex::new((
                    0,
                    Leadership {
                        is_leader: false,
                        epoch: Epoch(0),
                    },
                )),
                changed: Event::new(),
            }),
        }
    }

    /// The current value.
    pub fn get(&self) -> Leadership {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
    }

    /// Publishes a new value and wakes every waiter.
    pub fn set(&self, value: Leadership) {
        {
            let mut current = self.inner.current.lock().unwrap_or_else(|p| p.into_inner());
            if current.1 == value {
                return;
            }
            current.0 += 1;
            current.1 = value;
        }
        self.inner.changed.notify(usize::MAX);
    }

    /// Resolves with the first value that differs from `seen`.
    pub async fn changed_from(&self, seen: Leadership) -> Leadership {
        loop {
            let now = self.get();
            if now != seen {
                return now;
            }
            let listener = self.inner.changed.listen();
            let now = self.get();
            if now != seen {
                return now;
            }
            listener.await;
        }
    }

    /// Resolves once this node leads; returns the epoch.
    pub async fn wait_leader(&self) -> Epoch {
        loop {
            let now = self.get();
            if now.is_leader {
                return now.epoch;
            }
            self.changed_from(now).await;
        }
    }

    /// Resolves once this node no longer leads at `epoch`.
    pub async fn wait_lost(&self, epoch: Epoch) {
        loop {
            let now = self.get();
            if !now.is_leader || now.epoch != epoch {
                return;
            }
            self.changed_from(now).await;
        }
    }
}
