//! Deterministic replica placement: spread replicas over the least-loaded running DataNodes.

use std::collections::BTreeMap;

use crate::model::{DataNodeId, ReplicationFactor};
use crate::state::{ClusterState, DataNodeStatus};

/// Why replicas could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Fewer running DataNodes than the replication factor.
    #[error("need {needed} running DataNodes, have {running}")]
    NotEnoughDataNodes {
        /// Replicas per group.
        needed: usize,
        /// Running DataNodes.
        running: usize,
    },
}

/// Chooses DataNodes for new region groups, one per entry of `factors` (its replica count).
///
/// Load is the number of replicas a node already holds (published groups plus earlier groups
/// of this call). Each group takes the least-loaded running nodes, ties broken by id, so the
/// same state always yields the same placement.
pub fn place_groups(
    state: &ClusterState,
    factors: &[ReplicationFactor],
) -> Result<Vec<Vec<DataNodeId>>, PlacementError> {
    let mut load: BTreeMap<DataNodeId, usize> = state
        .replica_counts()
        .into_iter()
        .filter(|(id, _)| {
            state
                .data_nodes
                .get(id)
                .is_some_and(|n| n.status == DataNodeStatus::Running)
        })
        .collect();
    let needed = factors.iter().map(|f| f.get() as usize).max().unwrap_or(0);
    if load.len() < needed {
        return Err(PlacementError::NotEnoughDataNodes {
            needed,
            running: load.len(),
        });
    }
    let mut placements = Vec::with_capacity(factors.len());
    for factor in factors {
        let needed = factor.get() as usize;
        let mut candidates: Vec<(usize, DataNodeId)> =
            load.iter().map(|(id, count)| (*count, *id)).collect();
        candidates.sort();
        let mut chosen: Vec<DataNodeId> = candidates
            .into_iter()
            .take(needed)
            .map(|(_, id)| id)
            .collect();
        chosen.sort();
        for id in &chosen {
            *load.entry(*id).or_default() += 1;
        }
        placements.push(chosen);
    }
    Ok(placements)
}

/// Chooses the DataNode that takes a new replica of `region` (a migration's target): the
/// least-loaded running DataNode outside the group's footprint and `exclude`, ties by id.
/// `None` when no DataNode qualifies.
pub fn place_replacement(
    state: &ClusterState,
    region: crate::model::RegionId,
    exclude: &[DataNodeId],
) -> Option<DataNodeId> {
    place_replacements(state, &[(region, exclude.to_vec())])
        .into_iter()
        .next()
        .flatten()
}

/// [`place_replacement`] for many groups at once: each choice counts toward the load of the
/// next, so a batch of migrations spreads over the running DataNodes.
pub fn place_replacements(
    state: &ClusterState,
    requests: &[(crate::model::RegionId, Vec<DataNodeId>)],
) -> Vec<Option<DataNodeId>> {
    let mut load: BTreeMap<DataNodeId, usize> = state
        .replica_counts()
        .into_iter()
        .filter(|(id, _)| {
            state
                .data_nodes
                .get(id)
                .is_some_and(|n| n.status == DataNodeStatus::Running)
        })
        .collect();
    requests
        .iter()
        .map(|(region, exclude)| {
            let taken = state.footprint(*region);
            let chosen = load
                .iter()
                .filter(|(id, _)| !taken.contains(id) && !exclude.contains(id))
                .map(|(id, count)| (*count, *id))
                .min()
                .map(|(_, id)| id);
            if let Some(id) = chosen {
                *load.entry(id).or_default() += 1;
            }
            chosen
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{ConfigPlan, RegisterDataNode, UpdateDataNodeStatus};

    fn cluster(nodes: u16) -> ClusterState {
        let mut state = ClusterState::default();
        for port in 0..nodes {
            state
                .apply(&ConfigPlan::RegisterDataNode(RegisterDataNode {
                    known_id: None,
                    address: format!("127.0.0.1:{}", 7000 + port),
                }))
                .unwrap();
        }
        state
    }

    #[test]
    fn replicas_spread_evenly_and_deterministically() {
        let state = cluster(5);
        let rf = ReplicationFactor::new(3).unwrap();
        let placement = place_groups(&state, &[rf; 10]).unwrap();
        assert_eq!(placement, place_groups(&state, &[rf; 10]).unwrap());
        let mut per_node = BTreeMap::new();
        for group in &placement {
            assert_eq!(group.len(), 3);
            let mut distinct = group.clone();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                3,
                "a group never has two replicas on one node"
            );
            for node in group {
                *per_node.entry(*node).or_insert(0) += 1;
            }
        }
        // 30 replicas over 5 nodes.
        assert!(per_node.values().all(|count| *count == 6), "{per_node:?}");
    }

    #[test]
    fn nodes_that_are_not_running_get_nothing() {
        let mut state = cluster(4);
        state
            .apply(&ConfigPlan::UpdateDataNodeStatus(UpdateDataNodeStatus {
                only_from: None,
                id: DataNodeId(1),
                status: DataNodeStatus::Unknown,
            }))
            .unwrap();
        let placement = place_groups(&state, &[ReplicationFactor::new(3).unwrap(); 4]).unwrap();
        assert!(placement.iter().flatten().all(|n| *n != DataNodeId(1)));
        let err = place_groups(&state, &[ReplicationFactor::new(4).unwrap()]).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NotEnoughDataNodes {
                needed: 4,
                running: 3
            }
        );
    }
}
