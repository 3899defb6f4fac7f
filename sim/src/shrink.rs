//! Shrinking: cut a failing scenario's workload and fault schedule down to a minimal one
//! that still breaks the same invariant. A cut keeps a subset of the events and may switch
//! whole fault classes off; the run's other random choices still come from the same seed.

use std::collections::BTreeSet;
use std::fmt;

use crate::disk::DiskFaults;
use crate::net::NetFaults;
use crate::observe::Invariant;
use crate::run::{Outcome, RunOptions, run};
use crate::scenario::Scenario;

/// Most runs one shrink may spend.
pub const MAX_RUNS: usize = 400;

/// A cut of a scenario: which events stay, and which fault classes are off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    /// Indices (into the full scenario's events) that stay.
    pub events: BTreeSet<usize>,
    /// No per-message network faults.
    pub no_net: bool,
    /// No disk faults.
    pub no_disk: bool,
}

impl Cut {
    /// The cut that keeps everything of `scenario`.
    pub fn all(scenario: &Scenario) -> Cut {
        Cut {
            events: (0..scenario.events.len()).collect(),
            no_net: false,
            no_disk: false,
        }
    }

    /// `scenario` with this cut applied.
    pub fn apply(&self, scenario: &Scenario) -> Scenario {
        let mut small = scenario.clone();
        small.events = scenario
            .events
            .iter()
            .enumerate()
            .filter(|(i, _)| self.events.contains(i))
            .map(|(_, e)| e.clone())
            .collect();
        if self.no_net {
            small.net = NetFaults::default();
        }
        if self.no_disk {
            small.disk = DiskFaults::default();
        }
        small
    }

    /// Parses the form printed by `Display`: `events=1,5,9;off=net,disk`.
    pub fn parse(text: &str) -> Result<Cut, String> {
        let mut cut = Cut {
            events: BTreeSet::new(),
            no_net: false,
            no_disk: false,
        };
        for part in text.split(';').filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("cut part {part:?} is not key=value"))?;
            let items = value.split(',').filter(|v| !v.is_empty());
            match key {
                "events" => {
                    for item in items {
                        cut.events.insert(
                            item.parse()
                                .map_err(|e| format!("cut event {item:?}: {e}"))?,
                        );
                    }
                }
                "off" => {
                    for item in items {
                        match item {
                            "net" => cut.no_net = true,
                            "disk" => cut.no_disk = true,
                            other => return Err(format!("unknown fault class {other:?}")),
                        }
                    }
                }
                other => return Err(format!("unknown cut key {other:?}")),
            }
        }
        Ok(cut)
    }
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let events: Vec<String> = self.events.iter().map(ToString::to_string).collect();
        write!(f, "events={}", events.join(","))?;
        let mut off = Vec::new();
        if self.no_net {
            off.push("net");
        }
        if self.no_disk {
            off.push("disk");
        }
        if !off.is_empty() {
            write!(f, ";off={}", off.join(","))?;
        }
        Ok(())
    }
}

/// Shrinks `scenario` while it still breaks one of `target`; returns the smallest cut found
/// and its run.
pub fn shrink(
    scenario: &Scenario,
    options: &RunOptions,
    target: &BTreeSet<Invariant>,
) -> (Cut, Outcome) {
    let mut runs = 0usize;
    let mut best = Cut::all(scenario);
    let mut best_outcome = run(scenario, options);
    let fails = |cut: &Cut, runs: &mut usize| -> Option<Outcome> {
        *runs += 1;
        let outcome = run(&cut.apply(scenario), options);
        outcome
            .broken()
            .iter()
            .any(|i| target.contains(i))
            .then_some(outcome)
    };
    for class in 0..2 {
        let mut candidate = best.clone();
        if class == 0 {
            candidate.no_net = true;
        } else {
            candidate.no_disk = true;
        }
        if let Some(outcome) = fails(&candidate, &mut runs) {
            best = candidate;
            best_outcome = outcome;
        }
    }
    // Delta debugging over the events: remove chunks, then finer chunks.
    let mut chunks = 2usize;
    while runs < MAX_RUNS {
        let events: Vec<usize> = best.events.iter().copied().collect();
        if events.is_empty() {
            break;
        }
        let size = events.len().div_ceil(chunks);
        let mut removed_any = false;
        for chunk in events.chunks(size.max(1)) {
            if runs >= MAX_RUNS {
                break;
            }
            let mut candidate = best.clone();
            for e in chunk {
                candidate.events.remove(e);
            }
            if candidate.events.len() == best.events.len() {
                continue;
            }
            if let Some(outcome) = fails(&candidate, &mut runs) {
                best = candidate;
                best_outcome = outcome;
                removed_any = true;
            }
        }
        if removed_any {
            chunks = chunks.saturating_sub(1).max(2);
        } else if size <= 1 {
            break;
        } else {
            chunks = (chunks * 2).min(events.len());
        }
    }
    (best, best_outcome)
}
