//! The network's seeded faults: a [`MessagePolicy`] for the in-process transport that draws
//! every message's fate from the run's network RNG.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use shoal_transport_inproc::{MessageFate, MessagePolicy};

use crate::executor::SimRng;
use crate::observe::Observer;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-message fault rates (per million messages) and latencies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetFaults {
    /// A request is lost (the call never runs).
    pub lose_request: u32,
    /// A reply is lost after the call ran.
    pub lose_reply: u32,
    /// A request is delivered twice.
    pub duplicate: u32,
    /// Largest ordinary one-way latency (ms); messages overtake each other within it.
    pub max_latency_ms: u64,
    /// A message is much slower than usual (up to `spike_ms`), often past the caller's
    /// timeout.
    pub spike: u32,
    /// The largest spike (ms).
    pub spike_ms: u64,
}

/// The seeded message policy.
pub struct NetPolicy {
    rng: Mutex<SimRng>,
    faults: Mutex<NetFaults>,
    observer: Observer,
}

impl NetPolicy {
    /// A policy drawing from `rng` at the rates of `faults`.
    pub fn new(rng: SimRng, faults: NetFaults, observer: Observer) -> Arc<Self> {
        Arc::new(Self {
            rng: Mutex::new(rng),
            faults: Mutex::new(faults),
            observer,
        })
    }

    /// Changes the rates (e.g. to none once the faults stop).
    pub fn set_faults(&self, faults: NetFaults) {
        *lock(&self.faults) = faults;
    }
}

impl MessagePolicy for NetPolicy {
    fn fate(&self, from: &str, to: &str, method: &'static str) -> MessageFate {
        let faults = lock(&self.faults).clone();
        let mut rng = lock(&self.rng);
        let latency = |rng: &mut SimRng| {
            let mut ms = rng.below(faults.max_latency_ms + 1);
            if rng.chance(faults.spike) {
                ms += rng.below(faults.spike_ms + 1);
            }
            Duration::from_millis(ms)
        };
        let fate = MessageFate {
            latency: latency(&mut rng),
            lose_request: rng.chance(faults.lose_request),
            lose_reply: rng.chance(faults.lose_reply),
            duplicate_after: rng
                .chance(faults.duplicate)
                .then(|| Duration::from_millis(rng.below(faults.max_latency_ms * 4 + 1))),
            reply_latency: latency(&mut rng),
        };
        drop(rng);
        self.observer.hash_u64(
            fate.latency.as_millis() as u64
                ^ (u64::from(fate.lose_request) << 40)
                ^ (u64::from(fate.lose_reply) << 41)
                ^ (u64::from(fate.duplicate_after.is_some()) << 42),
        );
        if fate.lose_request {
            self.observer.count_fault("net: request lost");
        } else if fate.lose_reply {
            self.observer.count_fault("net: reply lost");
        }
        if fate.duplicate_after.is_some() {
            self.observer.count_fault("net: duplicated");
        }
        if self.observer.tracing() && fate != MessageFate::default() {
            self.observer.trace(|| {
                format!(
                    "net {from} -> {to} {method}: latency {:?}{}{}{}",
                    fate.latency,
                    if fate.lose_request {
                        ", request lost"
                    } else {
                        ""
                    },
                    if fate.lose_reply { ", reply lost" } else { "" },
                    if fate.duplicate_after.is_some() {
                        ", duplicated"
                    } else {
                        ""
                    }
                )
            });
        }
        fate
    }
}
