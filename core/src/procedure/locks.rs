//! [`LockTable`]: shared/exclusive lock keys, granted all at once, FIFO by procedure id.
//!
//! Grant rule (a pure function of the set of unfinished procedures, so recovery restores
//! exactly the grants held before a crash): a procedure holds its locks iff no unfinished
//! procedure with a smaller id conflicts with it. Two keys on one resource conflict unless both
//! are shared. A procedure never conflicts with its own ancestors, and a key an ancestor
//! already holds (same resource, at least as strong) is inherited: it is not checked at all,
//! so a child can never wait behind a procedure that itself waits for the child's parent.
//! Children should lock only what their ancestors hold, or resources nobody else waits for
//! in the other order.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::ProcedureId;
use crate::state::{LockKey, LockMode, LockResource};

#[derive(Debug)]
struct Request {
    keys: Vec<LockKey>,
    /// Keys not inherited from an ancestor: the ones that must be checked.
    own: Vec<LockKey>,
    ancestors: BTreeSet<ProcedureId>,
    granted: bool,
}

/// The executor's lock table. Not persisted: rebuilt from procedure records on recovery.
#[derive(Debug, Default)]
pub struct LockTable {
    requests: BTreeMap<ProcedureId, Request>,
    by_resource: BTreeMap<LockResource, BTreeMap<ProcedureId, LockMode>>,
}

fn conflicts(a: LockMode, b: LockMode) -> bool {
    a == LockMode::Exclusive || b == LockMode::Exclusive
}

impl LockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`'s request (keys normalized, ancestors nearest first or in any order).
    /// Requests must be added in increasing id order. Returns whether it is granted now.
    pub fn enqueue(
        &mut self,
        id: ProcedureId,
        keys: Vec<LockKey>,
        ancestors: BTreeSet<ProcedureId>,
    ) -> bool {
        let own = keys
            .iter()
            .filter(|key| {
                !ancestors.iter().any(|a| {
                    self.requests.get(a).is_some_and(|r| {
                        r.keys
                            .iter()
                            .any(|k| k.resource == key.resource && k.mode >= key.mode)
                    })
                })
            })
            .cloned()
            .collect();
        for key in &keys {
            self.by_resource
                .entry(key.resource.clone())
                .or_default()
                .insert(id, key.mode);
        }
        self.requests.insert(
            id,
            Request {
                keys,
                own,
                ancestors,
                granted: false,
            },
        );
        let granted = self.blocker(id).is_none();
        if let Some(request) = self.requests.get_mut(&id) {
            request.granted = granted;
        }
        granted
    }

    /// Whether `id` holds its locks.
    pub fn is_granted(&self, id: ProcedureId) -> bool {
        self.requests.get(&id).is_some_and(|r| r.granted)
    }

    /// The earliest procedure `id` waits for, and on which resource (`None` if it may hold).
    pub fn blocker(&self, id: ProcedureId) -> Option<(ProcedureId, LockResource)> {
        let request = self.requests.get(&id)?;
        for key in &request.own {
            let Some(holders) = self.by_resource.get(&key.resource) else {
                continue;
            };
            for (other, mode) in holders.range(..id) {
                if !request.ancestors.contains(other) && conflicts(*mode, key.mode) {
                    return Some((*other, key.resource.clone()));
                }
            }
        }
        None
    }

    /// Drops `id`'s request (it finished). Returns the procedures granted as a result, in id
    /// order.
    pub fn release(&mut self, id: ProcedureId) -> Vec<ProcedureId> {
        let Some(request) = self.requests.remove(&id) else {
            return Vec::new();
        };
        let mut candidates = BTreeSet::new();
        for key in &request.keys {
            if let Some(holders) = self.by_resource.get_mut(&key.resource) {
                holders.remove(&id);
                candidates.extend(holders.keys().copied());
                if holders.is_empty() {
                    self.by_resource.remove(&key.resource);
                }
            }
        }
        let mut granted = Vec::new();
        for candidate in candidates {
            if self.requests.get(&candidate).is_some_and(|r| !r.granted)
                && self.blocker(candidate).is_none()
            {
                if let Some(r) = self.requests.get_mut(&candidate) {
                    r.granted = true;
                }
                granted.push(candidate);
            }
        }
        granted
    }

    /// How many requests (granted or waiting) the table holds.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether the table holds no request.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}
